"""Convolutional stem (`backbone_stem="conv"`): shapes, training, export-relevant behaviour."""

from __future__ import annotations

import pytest
import torch

from amt.models import build_model, make_config
from amt.models.stem import ConvStem


@pytest.mark.parametrize("size", [112, 224])
def test_conv_stem_replaces_a_patch_embedding_shape_for_shape(size: int) -> None:
    stem = ConvStem(3, 48, 16, width=8).eval()
    assert stem(torch.randn(2, 3, size, size)).shape == (2, 48, size // 16, size // 16)
    assert stem.weight.dtype == torch.float32  # read by Hugging Face's patch embedding


def test_conv_stem_features_are_its_forward_and_a_stage_map() -> None:
    stem = ConvStem(3, 48, 16, width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    out, fine = stem.features(x, 4)
    torch.testing.assert_close(out, stem(x))
    assert fine.shape == (2, stem.stage_ends[4][1], 16, 16)


def test_stem_skip_reaches_the_heatmaps_and_needs_a_conv_stem_at_their_stride() -> None:
    model = _conv_model(freeze_blocks=0, stem_skip=True, hand_keypoints="heatmap")
    torch.nn.init.normal_(model.stem_in.weight)  # zero-initialised: make the skip visible
    batch = {"image": torch.randn(1, 3, 64, 64), "K": torch.tensor([[[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]])}
    feats = model.backbone(batch["image"])
    assert feats["stem"].shape[-2:] == (16, 16)  # the finest level: 4x the 4 x 4 patch grid
    levels = model.pyramid(feats["taps"], feats["grid"])
    with torch.no_grad():
        with_skip = model.keypoint_features(levels, feats["stem"])
        assert not torch.allclose(with_skip, model.keypoint_features(levels, torch.zeros_like(feats["stem"])))
    with pytest.raises(ValueError, match="stem_skip needs backbone_stem='conv'"):
        make_config("tiny", stem_skip=True)
    with pytest.raises(ValueError, match="conv stem's"):
        _conv_model(stem_skip=True, pyramid_scales=[32.0, 2.0, 1.0, 0.5])  # a 0.5-px level


def test_conv_stem_rejects_a_patch_size_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="power-of-two patch_size, got 14"):
        ConvStem(3, 48, 14)
    with pytest.raises(ValueError, match="backbone_stem"):
        make_config("tiny", backbone_stem="resnet")


def _conv_model(**overrides):
    torch.manual_seed(0)
    return build_model("tiny", image_size=64, patch_size=16, backbone_stem="conv", backbone_stem_width=8, **overrides)


def test_conv_stem_model_trains_its_stem_and_every_block() -> None:
    model = _conv_model(freeze_blocks=0)
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "K": torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]).expand(2, 3, 3),
    }
    out = model(batch)
    assert out["joints_3d"].shape == (2, 21, 3)
    out["joints_3d"].sum().backward()
    emb = model.backbone.model.embeddings
    assert not emb.mask_token.requires_grad
    for name, p in emb.patch_embeddings.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert emb.position_embeddings.grad is not None
    assert all(p.grad is not None for p in model.backbone.model.encoder.layer[0].parameters())


def test_conv_stem_with_frozen_blocks_freezes_the_embeddings_too() -> None:
    model = _conv_model(freeze_blocks=1)
    assert not any(p.requires_grad for p in model.backbone.model.embeddings.parameters())


def test_pretrained_dinov2_weights_need_the_patch_stem(tmp_path) -> None:
    model = _conv_model(freeze_blocks=0)
    with pytest.raises(ValueError, match="backbone_stem='patch'"):
        model.backbone.load_pretrained(str(tmp_path / "dinov2_vits14_pretrain.pth"))


def test_conv_stem_model_round_trips_through_save_pretrained(tmp_path) -> None:
    from amt.models.amt import AMT

    model = _conv_model(freeze_blocks=0).eval()
    with torch.no_grad():  # non-default BatchNorm statistics must survive the round trip
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    batch = {"image": torch.randn(1, 3, 64, 64), "K": torch.tensor([[[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]])}
    loaded = AMT.from_pretrained(model.save_pretrained(tmp_path / "ckpt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["joints_3d"], model(batch)["joints_3d"])


def test_tiny_conv_config_group_selects_the_conv_stem() -> None:
    from amt.training.config import load_run_config

    run = load_run_config("tiny", ["model=tiny_conv", "model.image_size=112", "data.root=/nowhere"])
    assert run.model.backbone_stem == "conv" and run.model.patch_size == 8 and run.model.freeze_blocks == 0


DEMO_HEADS = dict(hand_keypoints="heatmap", object_centre="heatmap", crop_camera_input=True, stem_skip=True)


@pytest.mark.parametrize("heads", [{}, DEMO_HEADS], ids=["plain", "demo-heads"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_conv_stem_model_exports_with_parity(tmp_path, fmt: str, heads: dict) -> None:
    """The demo's checkpoints use the conv stem (channels-last inside) and the tiny_conv heads:
    both runtimes must match."""
    from amt.inference.export import export

    model = _conv_model(freeze_blocks=0, **heads).eval()
    if heads.get("stem_skip"):
        torch.nn.init.normal_(model.stem_in.weight, std=0.1)  # zero-initialised: export a live skip
    result = export(model, tmp_path / f"m.{fmt}", fmt, dynamic_batch=True, size=64)
    assert result.worst < 1e-4
