"""Pixel-aligned refinement.

Each step projects the current 3D joints and object points (centre + the ends of the three
object axes, +-`refine_axis_length`) with the crop K into every pyramid level's own pixel
grid, bilinearly samples the features there, and predicts residual updates of the joints and
the object poses. Pixel convention (OpenCV, as `amt.data.transforms` and the crop K): pixel i's
centre is at u = i, so the image spans [-0.5, W - 0.5]. Cell j of a level with stride s (image
pixels per cell) covers image pixels j s .. j s + s - 1, its centre at u = j s + (s - 1) / 2; so
u sits at grid coordinate (u + 0.5) / s - 0.5 (cell centres at integers), normalised for
`grid_sample` (align_corners=False) over that level's width / height.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amt.geometry.camera import project, unproject
from amt.geometry.rotations import matrix_to_quat_wxyz, rot6d_to_matrix
from amt.models.config import ModelConfig
from amt.models.layers import MLP, init_head_weights

NUM_OBJECT_POINTS = 7  # centre, +-x, +-y, +-z
JOINT_STEP = 0.01  # metres per unit of the joint residual
DEPTH_STEP = 0.1  # log-depth per unit
ROTATION_STEP = 0.1  # 6D units per unit


def pixel_to_grid(uv: torch.Tensor, stride: float, size: tuple[int, int]) -> torch.Tensor:
    """uv: (..., 2) image pixels -> (..., 2) `grid_sample` coordinates (align_corners=False)
    of a feature map with `stride` image pixels per cell and `size` = (h, w) cells. Pixel
    centres at integer u (module docstring): the image edge u = -0.5 maps to -1."""
    h, w = size
    cell = (uv + 0.5) / stride - 0.5  # grid coordinates, cell centres at integers
    if h == w:  # a Python scalar: no host-to-device copy per call (CUDA-graph friendly)
        return (cell + 0.5) * (2.0 / w) - 1.0
    return (cell + 0.5) * uv.new_tensor([2.0 / w, 2.0 / h]) - 1.0


def sample_levels(levels: list[torch.Tensor], strides: list[float], uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample every level at image pixels uv (B, P, 2).

    levels: list of (B, C_l, h_l, w_l). Returns (B, P, sum C_l); zeros outside a map. Levels
    covering the same image extent share one grid (the usual case: every level spans the crop).
    """
    out, grids = [], {}
    for fmap, stride in zip(levels, strides, strict=True):
        size = (fmap.shape[-2], fmap.shape[-1])
        extent = (size[0] * stride, size[1] * stride)
        if extent not in grids:
            grids[extent] = pixel_to_grid(uv, stride, size).unsqueeze(2)  # (B, P, 1, 2)
        out.append(
            F.grid_sample(fmap, grids[extent], mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
        )
    return torch.cat(out, dim=1).transpose(1, 2)


def object_points(t: torch.Tensor, R: torch.Tensor, length: float) -> torch.Tensor:
    """t (B,Q,3), R (B,Q,3,3) -> (B,Q,7,3): centre and centre +- length * each axis."""
    eye = torch.eye(3, dtype=t.dtype, device=t.device) * length
    offsets = torch.cat([torch.zeros_like(eye[:1]), eye, -eye])  # (7, 3) model frame
    return t.unsqueeze(-2) + offsets @ R.transpose(-1, -2)


class RefineStep(nn.Module):
    """One refinement step; see the module docstring.

    forward(joints (B,21,3), obj_t (B,Q,3), obj_R (B,Q,3,3), obj_tokens (B,Q,D), hand (B,D),
    levels, strides, K) -> (joints, obj_t, obj_R, obj_tokens) updated."""

    def __init__(self, cfg: ModelConfig, num_levels: int) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.axis_length = cfg.refine_axis_length
        self.patch_size = cfg.patch_size
        self.sampled_in = nn.Linear(num_levels * D + 3, D)
        self.point_embed = nn.Parameter(torch.randn(21 + NUM_OBJECT_POINTS, D) * 0.02)
        self.hand_in = nn.Linear(D, D)
        self.point_mlp = MLP(D, D, D)
        self.joint_out = nn.Linear(D, 3)
        self.obj_mlp = MLP((NUM_OBJECT_POINTS + 1) * D, D, D)
        self.obj_out = nn.Linear(D, 9)
        init_head_weights(self)
        with torch.no_grad():
            self.joint_out.weight.mul_(0.1)
            self.obj_out.weight.mul_(0.1)
            self.obj_out.bias[3:].copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) / ROTATION_STEP)

    def forward(
        self,
        joints: torch.Tensor,
        obj_t: torch.Tensor,
        obj_R: torch.Tensor,
        obj_tokens: torch.Tensor,
        hand: torch.Tensor,
        levels: list[torch.Tensor],
        strides: list[float],
        K: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        B, Q, D = obj_tokens.shape
        opts = object_points(obj_t, obj_R, self.axis_length)  # (B, Q, 7, 3)
        points = torch.cat([joints, opts.flatten(1, 2)], dim=1)  # (B, 21 + 7Q, 3)
        uv = project(points, K)
        # geometry relative to each point's own anchor (hand root / object centre), 10 cm units
        rel = torch.cat([joints - joints[:, :1], (opts - obj_t.unsqueeze(-2)).flatten(1, 2)], dim=1) / 0.1
        # sampling locations carry no gradient (as Deformable DETR's reference points): d uv / d z
        # grows as 1 / z^2 and goes through bilinear sampling; cut with two other paths when the
        # demo's gradients exploded (docs/experiments.md). The points learn through the residuals.
        sampled = sample_levels(levels, strides, uv.detach())
        embed = torch.cat([self.point_embed[:21], self.point_embed[21:].repeat(Q, 1)])  # (21 + 7Q, D)
        x = self.sampled_in(torch.cat([sampled, rel], dim=-1)) + embed + self.hand_in(hand).unsqueeze(1)
        x = self.point_mlp(F.gelu(x))
        joints = joints + self.joint_out(x[:, :21]) * JOINT_STEP
        obj_in = torch.cat([x[:, 21:].reshape(B, Q, NUM_OBJECT_POINTS * D), obj_tokens], dim=-1)
        hidden = self.obj_mlp(obj_in)
        raw = self.obj_out(hidden)
        centre_uv = uv[:, 21:].unflatten(1, (Q, NUM_OBJECT_POINTS))[:, :, 0] + raw[..., :2] * self.patch_size
        depth = obj_t[..., 2] * torch.exp(raw[..., 2] * DEPTH_STEP)
        obj_t = unproject(centre_uv, depth, K)
        obj_R = obj_R @ rot6d_to_matrix(raw[..., 3:] * ROTATION_STEP)
        return joints, obj_t, obj_R, obj_tokens + hidden


class Refiner(nn.Module):
    """`refine_steps` RefineSteps; returns the final state and every step's predictions."""

    def __init__(self, cfg: ModelConfig, num_levels: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(RefineStep(cfg, num_levels) for _ in range(cfg.refine_steps))

    def forward(
        self,
        joints: torch.Tensor,
        obj_t: torch.Tensor,
        obj_R: torch.Tensor,
        obj_tokens: torch.Tensor,
        hand: torch.Tensor,
        levels: list[torch.Tensor],
        strides: list[float],
        K: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
        history = []
        for step in self.steps:
            joints, obj_t, obj_R, obj_tokens = step(joints, obj_t, obj_R, obj_tokens, hand, levels, strides, K)
            history.append(
                {"joints_3d": joints, "obj_t": obj_t, "obj_R": obj_R, "obj_quat": matrix_to_quat_wxyz(obj_R)}
            )
        return joints, obj_t, obj_R, obj_tokens, history
