"""Pinhole camera helpers (OpenCV convention: x right, y down, z forward; pixels, with the centre
of pixel (row i, column j) at (x = j, y = i), so an image of width W spans [-0.5, W - 0.5])."""

from __future__ import annotations

import torch


def project(points: torch.Tensor, K: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Project camera-frame points to pixels.

    points: (B, N, 3) metres; K: (B, 3, 3) pixels. Returns (B, N, 2) pixels.
    Depth is clamped at `eps` so points behind the camera do not produce inf.
    """
    uvw = points @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3].clamp_min(eps)


def unproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift pixels to camera-frame points.

    uv: (B, N, 2) pixels; depth: (B, N) metres (z); K: (B, 3, 3). Returns (B, N, 3) metres.
    """
    fx, fy = K[:, 0, 0].unsqueeze(-1), K[:, 1, 1].unsqueeze(-1)
    cx, cy = K[:, 0, 2].unsqueeze(-1), K[:, 1, 2].unsqueeze(-1)
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)


def crop_intrinsics(K: torch.Tensor, box_xywh: torch.Tensor, out_size: int) -> torch.Tensor:
    """Intrinsics of the crop of pixels x0 .. x0 + w - 1, y0 .. y0 + h - 1 resampled to
    `out_size` x `out_size` pixels with pixel-centre alignment (`align_corners=False`, as
    `amt.data.transforms.crop_and_resize`).

    K: (..., 3, 3) of the full image; box_xywh: (..., 4) crop box (x0, y0, w, h) in the full
    image's pixels (w == h for AMT's square crops). The crop's edges are the box's pixel edges,
    x0 - 0.5 and x0 + w - 0.5, so a full-image point x maps to crop pixel
    (x - x0 + 0.5) * out_size / w - 0.5 (the half-pixel terms vanish when out_size == w).
    """
    x0, y0, w, h = box_xywh.unbind(-1)
    sx, sy = out_size / w, out_size / h
    Kc = K.clone()
    Kc[..., 0, 0] = K[..., 0, 0] * sx
    Kc[..., 1, 1] = K[..., 1, 1] * sy
    Kc[..., 0, 1] = K[..., 0, 1] * sx
    Kc[..., 0, 2] = (K[..., 0, 2] - x0 + 0.5) * sx - 0.5
    Kc[..., 1, 2] = (K[..., 1, 2] - y0 + 0.5) * sy - 0.5
    return Kc
