"""The DexYCB 21-joint hand skeleton (see docs/data.md "Joint order").

0 wrist; 1-4 thumb (mcp, pip, dip, tip); 5-8 index; 9-12 middle; 13-16 ring; 17-20 little.
"""

from __future__ import annotations

NUM_JOINTS = 21

JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)  # fmt: skip

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "little")

# Parent of each joint (-1 for the wrist root).
PARENTS: tuple[int, ...] = (
    -1,
    0, 1, 2, 3,
    0, 5, 6, 7,
    0, 9, 10, 11,
    0, 13, 14, 15,
    0, 17, 18, 19,
)  # fmt: skip

# (parent, child) pairs: the 20 bones.
BONES: tuple[tuple[int, int], ...] = tuple((p, c) for c, p in enumerate(PARENTS) if p >= 0)

# Joint indices per finger, base to tip.
FINGER_JOINTS: dict[str, tuple[int, int, int, int]] = {
    name: tuple(range(1 + 4 * i, 5 + 4 * i))
    for i, name in enumerate(FINGERS)  # type: ignore[misc]
}

TIP_JOINTS: tuple[int, ...] = (4, 8, 12, 16, 20)
MCP_JOINTS: tuple[int, ...] = (1, 5, 9, 13, 17)
# The 16 articulated joints (wrist + 3 per finger), i.e. all joints that are not tips.
NON_TIP_JOINTS: tuple[int, ...] = tuple(j for j in range(NUM_JOINTS) if j not in TIP_JOINTS)

# manopth's 16 MANO joints + 5 tips -> DexYCB order (index into the 21 manopth outputs).
MANOPTH_TO_DEXYCB: tuple[int, ...] = (
    0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20,
)  # fmt: skip
# MANO vertex ids of the fingertips (thumb, index, middle, ring, little), right hand.
MANO_TIP_VERTICES_RIGHT: tuple[int, ...] = (745, 317, 444, 556, 673)
MANO_TIP_VERTICES_LEFT: tuple[int, ...] = (745, 317, 445, 556, 673)

# Nominal bone lengths (m) in `BONES` order (MANO mean-hand scale, DexYCB joints); a plausible
# hand's bones lie within [BONE_RANGE[0], BONE_RANGE[1]] x nominal, the spread of adult hands.
NOMINAL_BONE_LENGTH_M: tuple[float, ...] = (
    0.035, 0.032, 0.028, 0.030,  # thumb: wrist-cmc, cmc-mcp, mcp-ip, ip-tip
    0.088, 0.033, 0.022, 0.022,  # index: wrist-mcp, mcp-pip, pip-dip, dip-tip
    0.090, 0.032, 0.023, 0.024,  # middle
    0.083, 0.029, 0.023, 0.023,  # ring
    0.078, 0.022, 0.018, 0.020,  # little
)  # fmt: skip
BONE_RANGE: tuple[float, float] = (0.6, 1.5)

# Largest bend (deg) between a joint's incoming and outgoing bone, per articulated joint
# (anatomical flexion range plus a 10 deg margin). Unsigned: it bounds flexion and hyperextension.
BEND_LIMIT_DEG: dict[int, float] = {
    1: 80.0,
    2: 80.0,
    3: 100.0,  # thumb cmc, mcp, ip
    **{j: 100.0 for j in (5, 9, 13, 17)},  # finger mcp
    **{j: 120.0 for j in (6, 10, 14, 18)},  # pip
    **{j: 100.0 for j in (7, 11, 15, 19)},  # dip
}
