"""DINOv2 ViT backbone (Hugging Face `Dinov2Model`, SDPA attention) with weight loading,
freezing, tap-block outputs and switchable gradient checkpointing.

Weights come from a hub id, a local HF folder (`config.json` + safetensors) or an official Meta
checkpoint (`dinov2_vit*14_pretrain.pth`), converted here by key mapping. Embeddings (patch
projection, CLS, position, mask token) and the first `freeze_blocks` blocks are frozen.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Dinov2Config, Dinov2Model

from amt.models.config import ModelConfig
from amt.models.sigma_reparam import apply_sigma_reparam
from amt.models.stem import ConvStem

log = logging.getLogger(__name__)


def dinov2_config(cfg: ModelConfig) -> Dinov2Config:
    """The HF config of the backbone described by `cfg` (SDPA attention)."""
    return Dinov2Config(
        hidden_size=cfg.backbone_hidden,
        num_hidden_layers=cfg.backbone_layers,
        num_attention_heads=cfg.backbone_heads,
        mlp_ratio=cfg.backbone_mlp_ratio,
        use_swiglu_ffn=cfg.backbone_swiglu,
        layerscale_value=cfg.backbone_layerscale,
        image_size=cfg.backbone_image_size,
        patch_size=cfg.patch_size,
        attn_implementation="sdpa",
    )


_META_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_META_BLOCK_PARTS = {
    "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.w3": "mlp.down_proj",
}  # fmt: skip
_META_TOP = {
    "cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings", "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}  # fmt: skip


def convert_meta_state_dict(meta: dict[str, torch.Tensor], source: str = "<meta>") -> dict[str, torch.Tensor]:
    """Map an official DINOv2 state dict (Meta key names) to HF `Dinov2Model` names.

    `blocks.N.attn.qkv` is split into q/k/v projections, SwiGLU `mlp.w12` into gate/up.
    A key that cannot be mapped is an error naming it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in meta.items():
        if key in _META_TOP:
            out[_META_TOP[key]] = value
            continue
        m = _META_BLOCK.match(key)
        if m is None:
            raise KeyError(f"{source}: unexpected DINOv2 checkpoint key {key!r}")
        prefix, rest = f"encoder.layer.{m.group(1)}.", m.group(2)
        stem, _, leaf = rest.rpartition(".")
        if stem == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.{name}.{leaf}"] = part.clone()
        elif stem == "mlp.w12":
            for name, part in zip(("gate_proj", "up_proj"), value.chunk(2, dim=0), strict=True):
                out[f"{prefix}mlp.{name}.{leaf}"] = part.clone()
        elif rest in _META_BLOCK_PARTS:  # ls1.gamma etc. (no leaf split)
            out[prefix + _META_BLOCK_PARTS[rest]] = value
        elif stem in _META_BLOCK_PARTS:
            out[f"{prefix}{_META_BLOCK_PARTS[stem]}.{leaf}"] = value
        else:
            raise KeyError(f"{source}: unexpected DINOv2 checkpoint key {key!r}")
    return out


def load_backbone_state_dict(source: str) -> dict[str, torch.Tensor]:
    """HF-named backbone weights from a Meta .pth/.pt file, a local HF folder, or a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        return convert_meta_state_dict(state, source=str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model folder (config.json missing)")
    elif source.endswith((".pth", ".pt")) or "/" not in source or source.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"backbone weights not found: {source} (expected a .pth file, an HF folder or a hub id)"
        )
    return Dinov2Model.from_pretrained(str(path) if path.is_dir() else source).state_dict()


class DinoBackbone(nn.Module):
    """DINOv2 encoder returning the final tokens and the tap-block outputs.

    forward(image (B,3,H,W)) -> dict with
      "cls": (B, Db) final normed CLS token; "patches": (B, N, Db) final normed patch tokens;
      "taps": list of (B, N, Db) patch tokens after each tap block (normed by the final norm);
      "grid": (h, w) patch grid; "attentions" (on request): list of (B, heads, 1+N, 1+N) attention
      probabilities of the tap blocks.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Dinov2Model(dinov2_config(cfg))
        if cfg.backbone_stem == "conv":
            patches = self.model.embeddings.patch_embeddings
            patches.projection = ConvStem(
                patches.num_channels, cfg.backbone_hidden, cfg.patch_size, cfg.backbone_stem_width
            )
        self.taps = cfg.taps
        if not all(1 <= t <= cfg.backbone_layers for t in self.taps):
            raise ValueError(f"model config: tap_blocks {self.taps} must lie in 1..{cfg.backbone_layers}")
        if not 0 <= cfg.freeze_blocks <= cfg.backbone_layers:
            raise ValueError(f"model config: freeze_blocks={cfg.freeze_blocks} must lie in 0..{cfg.backbone_layers}")
        self.freeze_blocks = cfg.freeze_blocks
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def load_pretrained(self, source: str) -> None:
        """Load backbone weights strictly (every key must match, shapes included)."""
        if self.cfg.backbone_stem != "patch":
            raise ValueError(
                f"{source}: DINOv2 weights need backbone_stem='patch' (the model has a "
                f"'{self.cfg.backbone_stem}' stem, which has no pretrained weights)"
            )
        state = load_backbone_state_dict(source)
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"{source}: backbone keys do not match; missing {missing[:8]}, unexpected {unexpected[:8]}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
        self.model.load_state_dict(state, strict=True)
        log.info("loaded backbone weights from %s", source)

    def freeze(self) -> None:
        """Freeze the first `freeze_blocks` blocks and the embeddings (the mask token is unused
        when fine-tuning). A convolutional stem has no pretrained weights: with it, the
        embeddings (stem, CLS and position embeddings) train unless `freeze_blocks` > 0."""
        trainable_embeddings = self.cfg.backbone_stem == "conv" and self.freeze_blocks == 0
        self.model.embeddings.requires_grad_(trainable_embeddings)
        self.model.embeddings.mask_token.requires_grad_(False)
        for block in self.model.encoder.layer[: self.freeze_blocks]:
            block.requires_grad_(False)

    def apply_sigma_reparam(self) -> int:
        """sigma-reparameterise the linear layers of the trainable blocks."""
        return sum(apply_sigma_reparam(block) for block in self.model.encoder.layer[self.freeze_blocks :])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @staticmethod
    def attention_probs(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of `block` for its input `hidden` (B, T, D) -> (B, heads, T, T)."""
        attn = block.attention
        x = block.norm1(hidden)
        q = attn.q_proj(x).unflatten(-1, (attn.num_attention_heads, attn.head_dim)).transpose(1, 2)
        k = attn.k_proj(x).unflatten(-1, (attn.num_attention_heads, attn.head_dim)).transpose(1, 2)
        return torch.softmax((q @ k.transpose(-1, -2)) * attn.scaling, dim=-1)

    def forward(self, image: torch.Tensor, return_attention: bool = False) -> dict:
        h, w = image.shape[-2] // self.cfg.patch_size, image.shape[-1] // self.cfg.patch_size
        grad = torch.is_grad_enabled()
        # Frozen parts run without autograd unless someone asks for gradients w.r.t. the image.
        frozen_grad = grad and image.requires_grad
        with torch.set_grad_enabled(frozen_grad or (grad and self.model.embeddings.cls_token.requires_grad)):
            hidden = self.model.embeddings(image)
        normed, attentions = [], []
        norm = self.model.layernorm
        for i, block in enumerate(self.model.encoder.layer):
            frozen = i < self.freeze_blocks
            if return_attention and (i + 1) in self.taps:
                attentions.append(self.attention_probs(block, hidden))
            with torch.set_grad_enabled(frozen_grad or (grad and not frozen)):
                if self.gradient_checkpointing and grad and not frozen and self.training:
                    hidden = checkpoint(block, hidden, use_reentrant=False)
                else:
                    hidden = block(hidden)
            if (i + 1) in self.taps:
                normed.append(norm(hidden))
        final = normed[-1] if self.taps[-1] == len(self.model.encoder.layer) else norm(hidden)
        out = {"cls": final[:, 0], "patches": final[:, 1:], "taps": [t[:, 1:] for t in normed], "grid": (h, w)}
        if return_attention:
            out["attentions"] = attentions
        return out
