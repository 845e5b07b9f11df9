"""Object head: camera-lifted translations and export-safe rotations."""

from __future__ import annotations

import pytest
import roma
import torch

from amt.geometry.camera import project
from amt.geometry.rotations import matrix_to_quat_wxyz
from amt.models import make_config
from amt.models.objects import ObjectHead, QueryDecoder


def test_quaternion_conversion_agrees_with_roma_including_half_turns() -> None:
    half_turns = roma.rotvec_to_rotmat(
        torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64), dim=-1) * torch.pi
    )
    R = torch.cat([roma.random_rotmat(500, dtype=torch.float64), half_turns])
    q = matrix_to_quat_wxyz(R)
    ref = roma.rotmat_to_unitquat(R)[..., [3, 0, 1, 2]]
    ref = torch.where(ref[..., :1] < 0, -ref, ref)
    # q and -q are the same rotation; at w = 0 the sign is a free choice
    assert torch.minimum((q - ref).abs().amax(-1), (q + ref).abs().amax(-1)).max() < 1e-9
    torch.testing.assert_close(roma.unitquat_to_rotmat(q[..., [1, 2, 3, 0]]), R)


def test_translation_projects_to_the_predicted_crop_pixel() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny")
    head = ObjectHead(cfg)
    tokens = torch.randn(2, cfg.num_queries, cfg.hidden_dim)
    K = torch.tensor([[[600.0, 0, 100], [0, 620.0, 120], [0, 0, 1]], [[900.0, 0, 112], [0, 900.0, 112], [0, 0, 1]]])
    out = head(tokens, K)
    raw = head.out(tokens)
    c = cfg.num_classes + 1
    uv = cfg.image_size / 2 * (1 + raw[..., c : c + 2])
    torch.testing.assert_close(project(out["obj_t"], K), uv, rtol=1e-4, atol=1e-3)
    # depth scales with the focal length: the same tokens seen through a longer lens are further away
    near, far = head(tokens[:1], K[:1])["obj_t"][0, :, 2], head(tokens[:1], K[1:])["obj_t"][0, :, 2]
    torch.testing.assert_close(far / near, torch.full_like(near, 900.0 / 600.0))
    assert out["obj_logits"].shape == (2, cfg.num_queries, cfg.num_classes + 1)
    torch.testing.assert_close(out["obj_quat"].norm(dim=-1), torch.ones(2, cfg.num_queries))


def test_heatmap_centre_follows_the_feature_the_query_matches() -> None:
    """object_centre="heatmap": a feature map that matches the query at one cell only puts the
    centre on that cell (the regressed offset zeroed); the depth reads that cell's feature."""
    torch.manual_seed(0)
    cfg = make_config("tiny", object_centre="heatmap", num_queries=1)
    head = ObjectHead(cfg)
    grid = int(cfg.grid_size * cfg.pyramid_scales[0])
    stride = cfg.patch_size / cfg.pyramid_scales[0]
    c = cfg.num_classes + 1
    with torch.no_grad():
        head.out[-1].weight[c : c + 2].zero_()
        head.out[-1].bias[c : c + 2].zero_()
    tokens = torch.randn(1, 1, cfg.hidden_dim)
    query = head.heatmaps.query(tokens)[0, 0].detach()  # (D,)
    row, col = 5, 9
    fmap = torch.zeros(1, cfg.hidden_dim, grid, grid)
    fmap[0, :, row, col] = 50 * query / query.norm()  # one cell matches the query, the others are 0
    K = torch.tensor([[[300.0, 0, 40], [0, 300.0, 60], [0, 0, 1]]])
    out = head(tokens, K, None, fmap)
    want = torch.tensor([[[col * stride + (stride - 1) / 2, row * stride + (stride - 1) / 2]]])
    torch.testing.assert_close(project(out["obj_t"], K), want, rtol=0, atol=0.05)
    log_depth = head.out(tokens)[0, 0, c + 2] + head.heatmaps.depth(fmap[0, :, row, col])[0]
    torch.testing.assert_close(out["obj_t"][0, 0, 2], 300.0 * cfg.depth_per_focal * log_depth.exp(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("queries", ["learned", "selected"])
def test_decoder_queries_differ_and_attention_is_normalised(queries: str) -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny", object_queries=queries)
    dec = QueryDecoder(cfg)
    memory = torch.randn(1, 50, cfg.hidden_dim)
    uv = torch.rand(50, 2) * cfg.image_size
    out = dec(memory, torch.zeros(1, 50, cfg.hidden_dim), torch.randn(1, cfg.hidden_dim), uv, True)
    hand, objects, probs = out["hand"], out["objects"], out["cross"]
    assert hand.shape == (1, cfg.hidden_dim) and objects.shape == (1, cfg.num_queries, cfg.hidden_dim)
    assert probs.shape == (1, cfg.num_heads, 1 + cfg.num_queries, 50)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, cfg.num_heads, 1 + cfg.num_queries))
    assert (objects[0, 1:] - objects[0, :1]).abs().amax(-1).min() > 0


def test_selected_queries_sit_on_the_highest_scoring_tokens() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny", object_queries="selected")
    dec = QueryDecoder(cfg)
    memory = torch.randn(2, 60, cfg.hidden_dim)
    uv = torch.rand(60, 2) * cfg.image_size
    out = dec(memory, torch.zeros(1, 60, cfg.hidden_dim), torch.randn(2, cfg.hidden_dim), uv)
    logits = out["proposal_logits"]
    assert logits.shape == (2, 60, cfg.num_classes)
    # independent: sort every token by its best class logit and keep the first Q
    best = logits.max(-1).values.argsort(dim=1, descending=True)[:, : cfg.num_queries]
    torch.testing.assert_close(out["reference_uv"], uv[best])
    # the object head starts at the anchors (offsets are small at initialisation)
    head = ObjectHead(cfg)
    K = torch.tensor([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]]).expand(2, 3, 3)
    centre = project(head(out["objects"], K, out["reference_uv"])["obj_t"], K)
    assert (centre - out["reference_uv"]).abs().max() < cfg.image_size / 8


def test_learned_queries_ignore_the_token_positions() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny", object_queries="learned")
    dec = QueryDecoder(cfg)
    memory = torch.randn(1, 40, cfg.hidden_dim)
    args = (memory, torch.zeros(1, 40, cfg.hidden_dim), torch.randn(1, cfg.hidden_dim))
    a, b = dec(*args, torch.rand(40, 2) * 224), dec(*args, torch.rand(40, 2) * 224)
    torch.testing.assert_close(a["objects"], b["objects"])
    assert a["reference_uv"] is None and a["proposal_logits"] is None
