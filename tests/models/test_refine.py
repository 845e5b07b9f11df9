"""Pixel-aligned refinement: sampling geometry and the update step."""

from __future__ import annotations

import torch

from amt.geometry.camera import project
from amt.models import make_config
from amt.models.pyramid import FeaturePyramid
from amt.models.refine import RefineStep, object_points, pixel_to_grid, sample_levels


def _coordinate_maps(strides: list[float], image_size: int = 224) -> list[torch.Tensor]:
    """Feature maps whose two channels hold the image-pixel (u, v) of each cell centre (pixel
    centres at integers, so cell j's centre is at (j + 0.5) * stride - 0.5)."""
    maps = []
    for stride in strides:
        n = round(image_size / stride)
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * stride - 0.5
        v, u = torch.meshgrid(centres, centres, indexing="ij")
        maps.append(torch.stack([u, v])[None])
    return maps


def test_sampling_at_projected_points_returns_their_pixels() -> None:
    strides = FeaturePyramid(make_config("tiny")).strides
    assert strides == [3.5, 7.0, 14.0, 28.0]
    maps = _coordinate_maps(strides)
    K = torch.tensor([[[650.0, 0.0, 110.0], [0.0, 640.0, 115.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    points = torch.stack(
        [torch.rand(20, generator=g, dtype=torch.float64) * 0.16 - 0.08,
         torch.rand(20, generator=g, dtype=torch.float64) * 0.16 - 0.08,
         0.6 + 0.3 * torch.rand(20, generator=g, dtype=torch.float64)], dim=-1,
    )[None]  # fmt: skip
    uv = project(points, K)
    # bilinear sampling of a linear ramp is exact away from the border half-cell of the coarsest map
    assert ((uv > 14) & (uv < 210)).all()
    sampled = sample_levels(maps, strides, uv)  # (1, 20, 8)
    for level in range(len(strides)):
        torch.testing.assert_close(sampled[..., 2 * level : 2 * level + 2], uv)


def test_pixel_to_grid_maps_cell_centres_to_their_normalised_coordinates() -> None:
    # first and last cell centres of the 16x16 grid: pixels 0..13 and 210..223, centres 6.5 and 216.5
    uv = torch.tensor([[6.5, 6.5], [216.5, 6.5]])
    grid = pixel_to_grid(uv, 14.0, (16, 16))
    torch.testing.assert_close(grid, torch.tensor([[-15 / 16, -15 / 16], [15 / 16, -15 / 16]]))
    # the image's outer edges (half a pixel beyond the first and last pixel centres) are the grid's
    edges = pixel_to_grid(torch.tensor([[-0.5, 223.5]]), 14.0, (16, 16))
    torch.testing.assert_close(edges, torch.tensor([[-1.0, 1.0]]))


def test_object_points_are_centre_and_axis_ends() -> None:
    t = torch.tensor([[[0.1, 0.0, 0.8]]])
    R = torch.eye(3)[None, None]
    pts = object_points(t, R, 0.05)
    assert pts.shape == (1, 1, 7, 3)
    torch.testing.assert_close(pts[0, 0, 0], t[0, 0])
    torch.testing.assert_close(pts[0, 0, 1], t[0, 0] + torch.tensor([0.05, 0.0, 0.0]))


def test_step_updates_stay_close_and_keep_rotations_valid() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny")
    step = RefineStep(cfg, 4)
    D, Q = cfg.hidden_dim, cfg.num_queries
    levels = [torch.randn(2, D, s, s) for s in (64, 32, 16, 8)]
    K = torch.tensor([[700.0, 0, 112], [0, 700.0, 112], [0, 0, 1]]).expand(2, 3, 3)
    joints = torch.randn(2, 21, 3) * 0.05 + torch.tensor([0.0, 0.0, 0.7])
    t = torch.randn(2, Q, 3) * 0.05 + torch.tensor([0.0, 0.0, 0.7])
    R = torch.eye(3).expand(2, Q, 3, 3)
    j2, t2, R2, tok2 = step(joints, t, R, torch.randn(2, Q, D), torch.randn(2, D), levels, [3.5, 7, 14, 28], K)
    assert (j2 - joints).norm(dim=-1).max() < 0.05 and (t2 - t).norm(dim=-1).max() < 0.2
    torch.testing.assert_close(R2.transpose(-1, -2) @ R2, torch.eye(3).expand(2, Q, 3, 3), atol=1e-5, rtol=1e-5)
    assert tok2.shape == (2, Q, D)
