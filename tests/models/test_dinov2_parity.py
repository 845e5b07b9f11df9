"""Official-format parity: AMT's backbone, after loading an official (Meta-format) DINOv2
checkpoint, gives the tokens of Meta's own DINOv2 forward, at the native 518 px and at 224 px
(where the 37x37 position grid is resized the way Meta resizes it).

The reference below is written here from Meta's published architecture
(facebookresearch/dinov2, dinov2/models/vision_transformer.py and layers/): patch embedding,
CLS token, position embeddings interpolated bicubically with a scale factor of
(grid + 0.1) / sqrt(N0) and no antialias, pre-norm blocks with LayerScale, final LayerNorm.
It shares no code with amt.models.backbone.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Model

from amt.models import build_model
from amt.models.backbone import dinov2_config, meta_position_embeddings

DIM, DEPTH, HEADS, PATCH, NATIVE = 64, 4, 4, 14, 518  # a small ViT/14 with Meta's 518-px position grid


def _meta_state_dict(swiglu: bool) -> dict[str, torch.Tensor]:
    """A random checkpoint with Meta's key names and shapes (dinov2_vit*14_pretrain.pth layout)."""
    g = torch.Generator().manual_seed(3)

    def r(*shape: int, scale: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return mean + scale * torch.randn(*shape, generator=g)

    grid = NATIVE // PATCH
    sd = {
        "cls_token": r(1, 1, DIM), "mask_token": r(1, DIM), "pos_embed": r(1, 1 + grid * grid, DIM),
        "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH, scale=0.05), "patch_embed.proj.bias": r(DIM),
        "norm.weight": r(DIM, mean=1.0), "norm.bias": r(DIM),
    }  # fmt: skip
    hidden = 4 * DIM
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = r(DIM, mean=1.0), r(DIM)
        sd[f"{p}attn.qkv.weight"], sd[f"{p}attn.qkv.bias"] = r(3 * DIM, DIM), r(3 * DIM)
        sd[f"{p}attn.proj.weight"], sd[f"{p}attn.proj.bias"] = r(DIM, DIM), r(DIM)
        sd[f"{p}ls1.gamma"], sd[f"{p}ls2.gamma"] = r(DIM, scale=0.5), r(DIM, scale=0.5)
        if swiglu:  # SwiGLUFFNFused: hidden = 2/3 of the MLP width, rounded up to a multiple of 8
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            sd[f"{p}mlp.w12.weight"], sd[f"{p}mlp.w12.bias"] = r(2 * h, DIM), r(2 * h)
            sd[f"{p}mlp.w3.weight"], sd[f"{p}mlp.w3.bias"] = r(DIM, h), r(DIM)
        else:
            sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = r(hidden, DIM), r(hidden)
            sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = r(DIM, hidden), r(DIM)
    return sd


def _meta_interpolate_pos_encoding(pos_embed: torch.Tensor, h0: int, w0: int) -> torch.Tensor:
    """DinoVisionTransformer.interpolate_pos_encoding (interpolate_offset=0.1, antialias off)."""
    n = pos_embed.shape[1] - 1
    if n == h0 * w0 and h0 == w0:
        return pos_embed
    m = int(math.sqrt(n))
    patch_pos = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos, scale_factor=(float(h0 + 0.1) / m, float(w0 + 0.1) / m), mode="bicubic", antialias=False
    )
    assert patch_pos.shape[-2:] == (h0, w0)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
    return torch.cat([pos_embed[:, :1].float(), patch_pos], dim=1)


def _meta_forward(sd: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """Meta's DINOv2 forward_features: (B,3,H,W) -> final normed tokens (B, 1+N, D)."""
    x = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    b, d, h0, w0 = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + _meta_interpolate_pos_encoding(sd["pos_embed"], h0, w0)
    n = x.shape[1]
    for i in range(DEPTH):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (d,), sd[f"{p}norm1.weight"], sd[f"{p}norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[f"{p}attn.qkv.weight"], sd[f"{p}attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), sd[f"{p}attn.proj.weight"], sd[f"{p}attn.proj.bias"])
        x = x + sd[f"{p}ls1.gamma"] * y
        y = F.layer_norm(x, (d,), sd[f"{p}norm2.weight"], sd[f"{p}norm2.bias"], eps=1e-6)
        if f"{p}mlp.w12.weight" in sd:
            x1, x2 = F.linear(y, sd[f"{p}mlp.w12.weight"], sd[f"{p}mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(x1) * x2, sd[f"{p}mlp.w3.weight"], sd[f"{p}mlp.w3.bias"])
        else:
            y = F.gelu(F.linear(y, sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"]))
            y = F.linear(y, sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"])
        x = x + sd[f"{p}ls2.gamma"] * y
    return F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "swiglu"])
def official(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, bool]:
    sd = _meta_state_dict(swiglu=request.param)
    path = tmp_path_factory.mktemp("meta") / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    return sd, str(path), request.param


def _amt_backbone(path: str, swiglu: bool) -> torch.nn.Module:
    model = build_model(
        "vits14", backbone_weights=path, backbone_hidden=DIM, backbone_layers=DEPTH, backbone_heads=HEADS,
        backbone_swiglu=swiglu, hidden_dim=DIM, num_heads=HEADS, freeze_blocks=2, decoder_layers=1,
    )  # fmt: skip
    return model.backbone.eval()


@pytest.mark.parametrize("size", [224, 518])
def test_official_checkpoint_gives_metas_tokens(official: tuple[dict, str, bool], size: int) -> None:
    sd, path, swiglu = official
    backbone = _amt_backbone(path, swiglu)
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        expected = _meta_forward(sd, image)
        got = backbone(image)
    assert got["grid"] == (size // PATCH, size // PATCH)
    torch.testing.assert_close(got["cls"], expected[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["patches"], expected[:, 1:], rtol=1e-4, atol=1e-4)


def test_hf_resize_differs_at_224_so_the_parity_test_has_teeth(official: tuple[dict, str, bool]) -> None:
    """HF's own size-based resize gives other tokens at 224 px (the bug this parity fixes)."""
    sd, path, swiglu = official
    backbone = _amt_backbone(path, swiglu)
    hf = Dinov2Model(dinov2_config(backbone.cfg)).eval()
    hf.load_state_dict(backbone.model.state_dict())
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (hf(pixel_values=image).last_hidden_state[:, 1:] - _meta_forward(sd, image)[:, 1:]).abs().max()
    assert gap > 1e-2


def _keys_bicubic_matrix(n_in: int, n_out: int, scale: float, a: float = -0.75) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bicubic resampling (Keys kernel, a=-0.75, half-pixel centres,
    borders replicated) whose sampling positions follow `scale` rather than n_out / n_in."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0

    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for k in range(-1, 3):
            w[i, min(max(base + k, 0), n_in - 1)] += kernel(src - (base + k))
    return w


@pytest.mark.parametrize("grid", [16, 37, 20])
def test_position_resize_is_metas_scale_factor_bicubic(grid: int) -> None:
    """meta_position_embeddings against a hand-written bicubic with Meta's (grid + 0.1) / 37 scale."""
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(grid))
    got = meta_position_embeddings(pos, grid, grid)
    w = _keys_bicubic_matrix(37, grid, (grid + 0.1) / 37) if grid != 37 else torch.eye(37, dtype=torch.float64)
    patches = pos[0, 1:].double().reshape(37, 37, 8)
    expected = torch.einsum("ip,jq,pqc->ijc", w, w, patches).reshape(1, grid * grid, 8)
    assert got.shape == (1, 1 + grid * grid, 8)
    torch.testing.assert_close(got[:, 0], pos[:, 0])
    torch.testing.assert_close(got[:, 1:].double(), expected, rtol=1e-5, atol=1e-5)


def test_saved_model_keeps_the_native_position_grid(official: tuple[dict, str, bool], tmp_path: Path) -> None:
    """The checkpoint's 518-px grid is stored unchanged (resized per forward), so AMT checkpoints keep
    loading and the same weights serve any crop size."""
    sd, path, swiglu = official
    backbone = _amt_backbone(path, swiglu)
    torch.testing.assert_close(backbone.model.embeddings.position_embeddings, sd["pos_embed"])
