"""Physical tables of the YCB objects that the losses use: core radii and pose symmetries.

Class ids are the YCB ids of `amt.data.ycb` (1..21); rotations act in each object's model frame.
"""

from __future__ import annotations

import math

import torch

from amt.data.ycb import NUM_CLASSES
from amt.geometry.rotations import rotation_about_z

# Radius (m) of the largest sphere about the object origin treated as certainly solid: half the
# smallest side of each YCB mesh's axis-aligned bounding box (tests/training/test_losses.py
# recomputes it from ../shared/data/ycb_models).
OBJECT_CORE_RADIUS_M: dict[int, float] = {
    1: 0.0512, 2: 0.0359, 3: 0.0247, 4: 0.0339, 5: 0.0333, 6: 0.0168, 7: 0.0194,
    8: 0.0150, 9: 0.0301, 10: 0.0184, 11: 0.0724, 12: 0.0338, 13: 0.0275, 14: 0.0407,
    15: 0.0286, 16: 0.0450, 17: 0.0078, 18: 0.0094, 19: 0.0196, 20: 0.0182, 21: 0.0256,
}  # fmt: skip

# Discrete symmetries of the YCB objects in their model frames, as rotations about the object's
# centre (checked against the meshes in tests/training/test_losses.py): 4-fold about z plus the
# flips for the square wood block, the three 180 deg flips for the foam brick, the flip about
# the long axis for the clamps (y for 19, x for 20). The bowl (13) is continuous about z
# (`CONTINUOUS_SYMMETRY_AXIS`). Every other class has the identity only.
_X180, _Y180 = torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
_Z_TURNS = rotation_about_z(torch.arange(4) * (math.pi / 2))  # 0, 90, 180, 270 deg
SYMMETRY_ROTATIONS: dict[int, torch.Tensor] = {
    16: torch.cat([_Z_TURNS, _X180 @ _Z_TURNS]),
    19: torch.stack([torch.eye(3), _Y180]),
    20: torch.stack([torch.eye(3), _X180]),
    21: torch.stack([torch.eye(3), _X180, _Y180, _Z_TURNS[2]]),
}
CONTINUOUS_SYMMETRY_AXIS: dict[int, int] = {13: 2}  # class id -> model axis (0 x, 1 y, 2 z)


def symmetry_table() -> torch.Tensor:
    """(NUM_CLASSES + 1, S, 3, 3): each class id's symmetry rotations, padded with the identity."""
    size = max(len(r) for r in SYMMETRY_ROTATIONS.values())
    table = torch.eye(3).expand(NUM_CLASSES + 1, size, 3, 3).clone()
    for class_id, rotations in SYMMETRY_ROTATIONS.items():
        table[class_id, : len(rotations)] = rotations
    return table


def core_radius_table() -> torch.Tensor:
    """(NUM_CLASSES + 1,) `OBJECT_CORE_RADIUS_M` indexed by YCB id (index 0, no object: 0 m)."""
    return torch.tensor([0.0] + [OBJECT_CORE_RADIUS_M[i] for i in range(1, NUM_CLASSES + 1)])
