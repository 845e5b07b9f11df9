"""Object head: camera-lifted translations and export-safe rotations."""

from __future__ import annotations

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


def test_decoder_queries_differ_and_attention_is_normalised() -> None:
    torch.manual_seed(0)
    cfg = make_config("tiny")
    dec = QueryDecoder(cfg)
    memory = torch.randn(1, 50, cfg.hidden_dim)
    hand, objects, probs = dec(memory, torch.zeros(1, 50, cfg.hidden_dim), torch.randn(1, cfg.hidden_dim), True)
    assert hand.shape == (1, cfg.hidden_dim) and objects.shape == (1, cfg.num_queries, cfg.hidden_dim)
    assert probs.shape == (1, cfg.num_heads, 1 + cfg.num_queries, 50)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, cfg.num_heads, 1 + cfg.num_queries))
    assert (objects[0, 1:] - objects[0, :1]).abs().amax(-1).min() > 0
