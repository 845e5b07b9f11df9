"""Multi-coordinate hand encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import roma
import torch

from amt.geometry.frames import local_frames
from amt.geometry.hand_surface import skeleton_surface_points
from amt.geometry.mano import ManoLayer, write_fake_mano_pickle
from amt.models import make_config
from amt.models.hand import (
    FEATURES_PER_POINT,
    HandEncoder,
    KeypointHeatmaps,
    mean_hand_offsets,
    multi_coordinate_features,
)


def _features(joints: torch.Tensor) -> torch.Tensor:
    return multi_coordinate_features(skeleton_surface_points(joints), *local_frames(joints))


def test_rigid_motion_leaves_multi_coordinate_features_unchanged() -> None:
    g = torch.Generator().manual_seed(0)
    joints = mean_hand_offsets().double() + 0.01 * torch.randn(4, 21, 3, generator=g, dtype=torch.float64)
    rot = roma.random_rotmat(4, dtype=torch.float64)
    moved = joints @ rot.transpose(-1, -2) + torch.randn(4, 1, 3, dtype=torch.float64)
    feats = _features(joints)
    assert feats.shape == (4, 101, FEATURES_PER_POINT) and FEATURES_PER_POINT == 67
    torch.testing.assert_close(_features(moved), feats)
    # ... but an articulation changes them
    bent = joints.clone()
    bent[:, 8] += 0.02
    assert not torch.allclose(_features(bent), feats)


def test_point_index_feature_is_the_last_column() -> None:
    feats = _features(mean_hand_offsets()[None])
    torch.testing.assert_close(feats[0, :, -1], torch.linspace(0, 1, 101))


def test_encoder_outputs_and_translation_through_the_camera() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny")
    enc = HandEncoder(cfg)
    D = cfg.hidden_dim
    K = torch.tensor([[[600.0, 0, 100], [0, 650.0, 120], [0, 0, 1]]]).expand(2, 3, 3)
    out = enc(torch.randn(2, D), torch.randn(2, D), K)
    assert out["joints_3d_coarse"].shape == (2, 21, 3) and out["joints_3d"].shape == (2, 21, 3)
    assert out["joint_conf"].shape == (2, 21) and out["mano_shape"].shape == (2, 10)
    assert out["hand_points"].shape == (2, 101, 3)
    # the coarse wrist is a pixel in the crop lifted with K: re-projecting it lands in the crop
    wrist = out["joints_3d_coarse"][:, 0]
    uv = (wrist @ K[0].T)[:, :2] / wrist[:, 2:]
    assert ((uv > 0) & (uv < cfg.image_size)).all()


def test_encoder_uses_mano_vertices_when_configured(tmp_path: Path) -> None:
    mano = ManoLayer.from_pickle(write_fake_mano_pickle(tmp_path / "MANO_RIGHT.pkl"))
    cfg = make_config("tiny")
    enc = HandEncoder(cfg, mano)
    K = torch.tensor([[[700.0, 0, 112], [0, 700.0, 112], [0, 0, 1]]])
    out = enc(torch.randn(1, cfg.hidden_dim), torch.randn(1, cfg.hidden_dim), K)
    assert out["hand_points"].shape == (1, 778, 3)
    # MANO buffers come from the user's file, never from a checkpoint
    assert not any(k.startswith("mano.") for k in enc.state_dict())


def test_heatmap_soft_argmax_reads_the_peak_cell_and_its_depth() -> None:
    heat = KeypointHeatmaps(dim=8, size=(6, 6), stride=16.0, image_size=96)
    with torch.no_grad():
        heat.prior.zero_()
    # a feature map whose logits peak at cell (row 2, col 4) for every joint, with depth 3 there
    fmap = torch.zeros(1, 8, 6, 6)
    last = heat.net[-1]
    with torch.no_grad():
        heat.net[0].weight.zero_()
        heat.net[0].bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        logits = torch.full((6, 6), -50.0)
        logits[2, 4] = 0.0
    uv, depth = heat.forward_logits(logits.expand(1, 21, 6, 6), torch.full((1, 21, 6, 6), 3.0))
    # cell (2, 4) of a stride-16 grid is centred at pixel (4 * 16 + 7.5, 2 * 16 + 7.5)
    torch.testing.assert_close(uv, torch.tensor([71.5, 39.5]).expand(1, 21, 2))
    torch.testing.assert_close(depth, torch.zeros(1, 21))  # relative to the root
    uv, _ = heat(fmap)  # zero prior, constant logits: the mean of the cell centres, the crop centre
    torch.testing.assert_close(uv, torch.full((1, 21, 2), 47.5))


def test_heatmap_encoder_starts_from_a_hand_inside_the_crop_and_moves_with_the_camera() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny", hand_keypoints="heatmap")
    enc = HandEncoder(cfg)
    D, side = cfg.hidden_dim, int(cfg.grid_size * cfg.pyramid_scales[0])
    K = torch.tensor([[[600.0, 0, 112], [0, 600.0, 112], [0, 0, 1]]]).expand(2, 3, 3)
    token, cls, fmap = torch.randn(2, D), torch.randn(2, D), torch.randn(2, D, side, side)
    out = enc(token, cls, K, fmap)
    joints = out["joints_3d_coarse"]
    uv = (joints @ K[0].T)[..., :2] / joints[..., 2:]
    assert ((uv > 0) & (uv < cfg.image_size)).all()
    bones = (joints[:, 1:] - joints[:, :1]).norm(dim=-1)
    assert (bones > 0.01).all()  # distinct joints (the 22 local frames are defined)
    # the same pixels under another principal point: the lifted joints shift, the pixels do not
    K2 = K.clone()
    K2[:, 0, 2] += 10
    moved = enc(token, cls, K2, fmap)["joints_3d_coarse"]
    torch.testing.assert_close((moved @ K2[0].T)[..., :2] / moved[..., 2:], uv, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="finest pyramid grid"):
        enc(token, cls, K)
