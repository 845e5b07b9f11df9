"""DINOv2 backbone: weight loading (HF folder, Meta checkpoint), taps, freezing, checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Dinov2Model

from amt.models import build_model, make_config
from amt.models.backbone import DinoBackbone, dinov2_config


@pytest.fixture(scope="module")
def source() -> Dinov2Model:
    """A tiny DINOv2 with non-default values everywhere (layer scales, norms, tokens)."""
    torch.manual_seed(7)
    model = Dinov2Model(dinov2_config(make_config("tiny"))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _meta_state_dict(model: Dinov2Model) -> dict[str, torch.Tensor]:
    """The same weights under the official facebookresearch/dinov2 key names."""
    sd = model.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"], "mask_token": sd["embeddings.mask_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"],
    }  # fmt: skip
    for i in range(model.config.num_hidden_layers):
        hf, meta = f"encoder.layer.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{meta}attn.qkv.{leaf}"] = torch.cat([sd[f"{hf}attention.{n}_proj.{leaf}"] for n in "qkv"])
            out[f"{meta}attn.proj.{leaf}"] = sd[f"{hf}attention.o_proj.{leaf}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{meta}{name}.{leaf}"] = sd[f"{hf}{name}.{leaf}"]
        out[f"{meta}ls1.gamma"] = sd[f"{hf}layer_scale1.lambda1"]
        out[f"{meta}ls2.gamma"] = sd[f"{hf}layer_scale2.lambda1"]
    return out


@pytest.fixture(scope="module", params=["hf_folder", "meta_pth"])
def checkpoint(request: pytest.FixtureRequest, source: Dinov2Model, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "hf_folder":
        source.save_pretrained(folder)
        return str(folder)
    path = folder / "dinov2_vits14_pretrain.pth"
    torch.save(_meta_state_dict(source), path)
    return str(path)


def test_loaded_weights_reproduce_the_source_and_survive_head_init(source: Dinov2Model, checkpoint: str) -> None:
    model = build_model("tiny", backbone_weights=checkpoint).eval()
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = source(pixel_values=image).last_hidden_state
        got = model.backbone(image)
    torch.testing.assert_close(got["cls"], expected[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["patches"], expected[:, 1:], rtol=1e-5, atol=1e-5)
    own = model.backbone.model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(own[key], value), f"backbone weight {key} changed during model construction"


def test_checkpoint_with_wrong_shapes_is_rejected(checkpoint: str) -> None:
    with pytest.raises((KeyError, ValueError, RuntimeError), match="layer|shape|key|size"):
        build_model("tiny", backbone_weights=checkpoint, backbone_hidden=32)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dinov2_vitl14_pretrain.pth"):
        build_model("tiny", backbone_weights=str(tmp_path / "dinov2_vitl14_pretrain.pth"))


def test_taps_default_to_quarter_points() -> None:
    assert make_config("vitl14").taps == [6, 12, 18, 24]
    assert make_config("vitg14").taps == [10, 20, 30, 40]
    assert make_config("vitb14").taps == [3, 6, 9, 12]
    assert make_config("tiny").taps == [1, 2, 3, 4]


def test_taps_are_the_normed_block_outputs(source: Dinov2Model) -> None:
    backbone = DinoBackbone(make_config("tiny"))
    backbone.model.load_state_dict(source.state_dict())
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        hidden = source(pixel_values=image, output_hidden_states=True).hidden_states  # embeddings + 4 blocks
        out = backbone.eval()(image, return_attention=True)
    assert len(out["taps"]) == 4 and out["grid"] == (16, 16)
    for tap, block in zip(out["taps"], [1, 2, 3, 4], strict=True):
        torch.testing.assert_close(tap, source.layernorm(hidden[block])[:, 1:], rtol=1e-5, atol=1e-5)
    attn = out["attentions"][0]
    assert attn.shape == (1, 4, 257, 257)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 4, 257))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = DinoBackbone(make_config("tiny", freeze_blocks=1)).train()
    plain.freeze()
    ckpt = DinoBackbone(make_config("tiny", freeze_blocks=1, gradient_checkpointing=True)).train()
    ckpt.freeze()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 224, 224)
    for model in (plain, ckpt):
        out = model(image)
        (out["patches"].square().mean() + sum(t.mean() for t in out["taps"])).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
        else:
            assert a.grad is None and b.grad is None, name


def test_sigma_reparam_of_trainable_blocks_keeps_the_function(source: Dinov2Model) -> None:
    from amt.models.sigma_reparam import SigmaReparamLinear

    plain = DinoBackbone(make_config("tiny")).eval()
    plain.model.load_state_dict(source.state_dict())
    wrapped = DinoBackbone(make_config("tiny")).eval()
    wrapped.model.load_state_dict(source.state_dict())
    wrapped.freeze()
    assert wrapped.apply_sigma_reparam() == 2 * 6  # blocks 2 and 3: q, k, v, o, fc1, fc2
    layers = wrapped.model.encoder.layer
    assert isinstance(layers[3].attention.q_proj, SigmaReparamLinear)
    assert not isinstance(layers[1].attention.q_proj, SigmaReparamLinear)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(image)["patches"], plain(image)["patches"], rtol=1e-4, atol=1e-5)
