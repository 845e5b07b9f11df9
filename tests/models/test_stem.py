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


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_conv_stem_model_exports_with_parity(tmp_path, fmt: str) -> None:
    """The demo's checkpoints use the conv stem (channels-last inside): both runtimes must match."""
    from amt.inference.export import export

    model = _conv_model(freeze_blocks=0).eval()
    result = export(model, tmp_path / f"m.{fmt}", fmt, dynamic_batch=True, size=64)
    assert result.worst < 1e-4
