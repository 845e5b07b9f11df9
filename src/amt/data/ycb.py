"""The YCB object classes used by DexYCB (ids 1..21; docs/data.md "Objects", docs/metrics.md)."""

from __future__ import annotations

YCB_CLASSES: dict[int, str] = {
    1: "002_master_chef_can", 2: "003_cracker_box", 3: "004_sugar_box",
    4: "005_tomato_soup_can", 5: "006_mustard_bottle", 6: "007_tuna_fish_can",
    7: "008_pudding_box", 8: "009_gelatin_box", 9: "010_potted_meat_can",
    10: "011_banana", 11: "019_pitcher_base", 12: "021_bleach_cleanser",
    13: "024_bowl", 14: "025_mug", 15: "035_power_drill", 16: "036_wood_block",
    17: "037_scissors", 18: "040_large_marker", 19: "051_large_clamp",
    20: "052_extra_large_clamp", 21: "061_foam_brick",
}  # fmt: skip
NUM_CLASSES = 21
CLASS_ID_BY_NAME: dict[str, int] = {v: k for k, v in YCB_CLASSES.items()}
# Objects DexYCB grasps, in class-id order (id 19 is unused); sequence i grasps GRASPED_IDS[i // 5].
DEXYCB_USED_IDS: tuple[int, ...] = tuple(i for i in YCB_CLASSES if i != 19)
# PoseCNN's symmetric set: ADD-S is used for these in ADD(-S).
SYMMETRIC_IDS: frozenset[int] = frozenset({13, 16, 19, 20, 21})
# BOP "ambiguous view" list for YCB-V / DexYCB.
BOP_SYMMETRIC_IDS: frozenset[int] = frozenset({1, 13, 14, 16, 18, 19, 20, 21})
SEG_HAND = 255
SEG_BACKGROUND = 0

# DexYCB -> BOP YCB-V model-frame offsets o (mm): t_bop = t - R o.
BOP_OFFSETS_MM: dict[int, tuple[float, float, float]] = {
    1: (1.3360, -0.5000, 3.5105), 2: (0.5575, 1.7005, 4.8050), 3: (-0.9520, 1.4670, 4.3645),
    4: (-0.0240, -1.5270, 8.4035), 5: (1.2995, 2.4870, -11.8290), 6: (-0.1565, 0.1150, 4.2625),
    7: (1.1645, -4.2015, 3.1190), 8: (1.4460, -0.5915, 3.6085), 9: (2.4195, 0.3075, 8.0715),
    10: (-18.6730, 12.1915, -1.4635), 11: (5.3370, 5.8855, 25.6115),
    12: (4.9290, -2.4800, -13.2920), 13: (-0.2270, 0.7950, -2.9675),
    14: (-8.4675, -0.6995, -1.6145), 15: (9.0710, 20.9360, -2.1190),
    16: (1.4265, -2.5305, 17.1890), 17: (7.0535, -28.1320, 0.0420),
    18: (0.0460, -2.1040, 0.3500), 19: (10.5180, -1.9640, -0.4745),
    20: (-0.3950, -10.4130, 0.1620), 21: (-0.0805, 0.0805, -8.2435),
}  # fmt: skip
