"""Hand surface points derived from the 21-joint skeleton (used when no MANO model is given).

The points are the joints plus evenly spaced samples along each of the 20 bones. They
stand in for MANO's 778 vertices in contact labels and the multi-coordinate hand encoder.
"""

from __future__ import annotations

import torch

from amt.geometry.hand_skeleton import BONES

DEFAULT_SAMPLES_PER_BONE = 4


def skeleton_surface_points(joints: torch.Tensor, per_bone: int = DEFAULT_SAMPLES_PER_BONE) -> torch.Tensor:
    """joints: (..., 21, 3) -> (..., 21 + 20 * per_bone, 3), same units.

    Bone samples sit at fractions k / (per_bone + 1), k = 1..per_bone, from parent to child.
    The order is fixed (joints first, then bones in `BONES` order), so a point's index is a
    stable identity usable as a feature.
    """
    parent = joints[..., [p for p, _ in BONES], :]  # (..., 20, 3)
    child = joints[..., [c for _, c in BONES], :]
    frac = torch.arange(1, per_bone + 1, dtype=joints.dtype, device=joints.device) / (per_bone + 1)
    samples = parent.unsqueeze(-2) + frac[:, None] * (child - parent).unsqueeze(-2)  # (..., 20, k, 3)
    return torch.cat([joints, samples.flatten(-3, -2)], dim=-2)


def num_skeleton_points(per_bone: int = DEFAULT_SAMPLES_PER_BONE) -> int:
    return 21 + 20 * per_bone
