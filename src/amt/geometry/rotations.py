"""Rotation conversions used across AMT (data, model, losses, metrics).

Convention: quaternions are unit (w, x, y, z); rotation matrices act on column
vectors (x_cam = R x_model + t). Thin wrappers over `roma`, which uses (x, y, z, w).
"""

from __future__ import annotations

import roma
import torch


def quat_wxyz_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternion (w, x, y, z) -> (..., 3, 3) rotation matrix."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return roma.unitquat_to_rotmat(q[..., [1, 2, 3, 0]])


def matrix_to_quat_wxyz(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrix -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Markley's method, as roma.rotmat_to_unitquat, written out because roma's Tensor.diagonal
    exports to ONNX as a mistyped If node (the model's outputs must export), and vectorised to
    keep kernel launches few: X = 4 q q^T = [[1 + tr, s^T], [s, R + R^T + (1 - tr) I]] with
    s = (r21 - r12, r02 - r20, r10 - r01); the row with the largest diagonal entry is normalised.
    """
    Rt = R.transpose(-1, -2)
    skew = (R - Rt).flatten(-2)
    s = torch.stack([skew[..., 7], skew[..., 2], skew[..., 3]], dim=-1)  # (..., 3)
    diag = R.flatten(-2)[..., 0::4]  # r00, r11, r22
    tr = diag.sum(dim=-1, keepdim=True)
    block = R + Rt + (1 - tr).unsqueeze(-1) * torch.eye(3, dtype=R.dtype, device=R.device)
    top = torch.cat([1 + tr, s], dim=-1).unsqueeze(-2)  # (..., 1, 4)
    X = torch.cat([top, torch.cat([s.unsqueeze(-1), block], dim=-1)], dim=-2)  # (..., 4, 4)
    scores = torch.cat([1 + tr, 1 + 2 * diag - tr], dim=-1)  # the diagonal of X
    best = scores.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(*scores.shape[:-1], 1, 4)
    q = torch.gather(X, -2, best).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) continuous 6D representation (Zhou et al. 2019) -> (..., 3, 3).

    The two 3-vectors are the first two columns before Gram-Schmidt.
    """
    a = x.reshape(*x.shape[:-1], 2, 3).transpose(-1, -2)  # (..., 3, 2): columns
    return roma.special_gramschmidt(a)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, concatenated."""
    return R[..., :, :2].transpose(-1, -2).reshape(*R.shape[:-2], 6)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (radians) -> (..., 3, 3)."""
    return roma.rotvec_to_rotmat(v)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) axis-angle (radians)."""
    return roma.rotmat_to_rotvec(R)


def geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) x2 -> (...,) angle of R1^T R2 in radians, in [0, pi]; differentiable."""
    return roma.rotmat_geodesic_distance(R1, R2)


def rotation_about_z(angle: torch.Tensor) -> torch.Tensor:
    """(...,) radians -> (..., 3, 3) rotation about the camera's optical (z) axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*angle.shape, 3, 3)
