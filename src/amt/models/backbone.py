"""DINOv2 ViT backbone (Hugging Face `Dinov2Model`, SDPA attention) with weight loading,
freezing, tap-block outputs and switchable gradient checkpointing.

Weights come from a hub id, a local HF folder (`config.json` + safetensors) or an official Meta
checkpoint (`dinov2_vit*14_pretrain.pth`), converted here by key mapping; `check_backbone_weights`
says before any work whether they can be had. Embeddings (patch projection, CLS, position, mask
token) and the first `freeze_blocks` blocks are frozen. Position embeddings are resized to the
input's patch grid exactly as Meta's DINOv2 does (`meta_position_embeddings`), so loaded weights
give the official model's tokens at any input size, not only at the checkpoint's native 518 px.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Dinov2Config, Dinov2Model

from amt.errors import ConfigError
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


class BackboneWeightsError(FileNotFoundError):
    """The backbone weights named by `model.backbone_weights` cannot be had; the message says
    how to supply them (the CLI prints it as one line)."""


# the three ways to supply pretrained weights, appended to every BackboneWeightsError
WEIGHTS_HELP = (
    "supply DINOv2 weights in one of three ways: (1) a hub id such as facebook/dinov2-large, with network "
    "access or with its files already in the Hugging Face cache and HF_HUB_OFFLINE=1; (2) a local Meta "
    "checkpoint, model.backbone_weights=/path/dinov2_vitl14_pretrain.pth; (3) a local Hugging Face folder "
    "(config.json + model.safetensors), model.backbone_weights=/path/dinov2-large. "
    "To train from random initialisation instead, set model.backbone_weights=none"
)
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _weights_error(source: str, reason: str) -> BackboneWeightsError:
    return BackboneWeightsError(f"model.backbone_weights={source}: {reason}; {WEIGHTS_HELP}")


def _looks_like_path(source: str) -> bool:
    """A local path, not a hub id ("owner/name")."""
    return source.endswith((".pth", ".pt")) or "/" not in source or source.startswith((".", "/", "~"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within `timeout_s` (huggingface_hub
    itself retries for ~25 s before giving up). Behind a proxy the hub is assumed reachable."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_backbone_weights(source: str | None) -> None:
    """Raise `BackboneWeightsError` unless the weights `source` names can be loaded (None or
    "none": random initialisation, nothing to check). Cheap: a file or folder check, an HF-cache
    look-up, or a 3-second connection probe; nothing is downloaded."""
    if source is None or source.lower() == "none":
        return
    path = Path(source).expanduser()
    if path.is_file():
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _weights_error(source, f"{path} is not a Hugging Face model folder (config.json missing)")
        return
    if _looks_like_path(source):
        raise _weights_error(source, f"{path} does not exist")
    if isinstance(huggingface_hub.try_to_load_from_cache(source, "config.json"), str):
        return  # in the HF cache (from_pretrained also finds the weights there)
    if _hub_offline():
        raise _weights_error(source, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _weights_error(
            source, f"not in the Hugging Face cache and {huggingface_hub.constants.ENDPOINT} is unreachable"
        )


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
            raise _weights_error(source, f"{path} is not a Hugging Face model folder (config.json missing)")
        return _from_pretrained(source, str(path), local_files_only=True)
    # a hub id: fail in seconds with the three ways to supply weights, not after huggingface_hub's
    # ~25 s of retries; files already cached load without asking the network when it is out of reach
    check_backbone_weights(source)
    return _from_pretrained(source, source, local_files_only=_hub_offline() or not _hub_reachable())


def _from_pretrained(source: str, name: str, local_files_only: bool) -> dict[str, torch.Tensor]:
    try:
        return Dinov2Model.from_pretrained(name, local_files_only=local_files_only).state_dict()
    except OSError as exc:  # why: offline, unknown repo or missing files all surface as OSError subclasses
        raise _weights_error(source, f"cannot load it ({type(exc).__name__}: {exc})") from exc


def meta_position_embeddings(pos_embed: torch.Tensor, h: int, w: int, offset: float = 0.1) -> torch.Tensor:
    """Position embeddings (1, 1+N0, D) of a square N0-patch grid resized to an h x w patch grid ->
    (1, 1+h*w, D), exactly as Meta's DINOv2 `interpolate_pos_encoding`: bicubic without antialias,
    with a scale factor of (h + 0.1) / sqrt(N0) (not the output size, so the sampling grid differs
    from HF's size-based resize: 16.1/37 at 224 px for a 518-px checkpoint), computed in float32.
    The CLS position is kept; an unchanged square grid is returned as is."""
    # plain ints: under tracing (export) sizes may be tensors, and the grid is fixed per export anyway
    n0, h, w = int(pos_embed.shape[1]) - 1, int(h), int(w)
    if n0 == h * w and h == w:
        return pos_embed
    m = math.isqrt(n0)
    if m * m != n0:
        raise ValueError(f"position embeddings of {n0} patches are not a square grid")
    grid = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic", antialias=False)
    if tuple(grid.shape[-2:]) != (h, w):
        raise ValueError(f"resizing the {m}x{m} position grid gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([pos_embed[:, :1].float(), grid], dim=1).to(pos_embed.dtype)


class DinoBackbone(nn.Module):
    """DINOv2 encoder returning the final tokens and the tap-block outputs.

    forward(image (B,3,H,W)) -> dict with
      "cls": (B, Db) final normed CLS token; "patches": (B, N, Db) final normed patch tokens;
      "taps": list of (B, N, Db) patch tokens after each tap block (normed by the final norm);
      "grid": (h, w) patch grid; "attentions" (on request): list of (B, heads, 1+N, 1+N) attention
      probabilities of the tap blocks; "stem" (`stem_skip`): (B, C, H / s, W / s) the conv stem's
      feature map at the finest pyramid level's stride s.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Dinov2Model(dinov2_config(cfg))
        if cfg.backbone_stem == "conv":
            patches = self.model.embeddings.patch_embeddings
            patches.projection = ConvStem(
                patches.num_channels, cfg.backbone_hidden, cfg.patch_size, cfg.backbone_stem_width,
                cfg.backbone_stem_convs,
            )  # fmt: skip
        self.stem_stride: int | None = None  # `stem_skip`: the stride and channels of the stem map
        self.stem_channels: int | None = None
        if cfg.stem_skip:
            stride = cfg.finest_stride
            stem = self.model.embeddings.patch_embeddings.projection
            if stride not in stem.stage_ends:
                raise ConfigError(
                    f"model config: stem_skip needs the finest pyramid level's stride ({stride:g} px) to be one "
                    f"of the conv stem's ({sorted(stem.stage_ends)})"
                )
            self.stem_stride = int(stride)
            self.stem_channels = stem.stage_ends[self.stem_stride][1]
        self.taps = cfg.taps
        if not all(1 <= t <= cfg.backbone_layers for t in self.taps):
            raise ConfigError(f"model config: tap_blocks {self.taps} must lie in 1..{cfg.backbone_layers}")
        if not 0 <= cfg.freeze_blocks <= cfg.backbone_layers:
            raise ConfigError(f"model config: freeze_blocks={cfg.freeze_blocks} must lie in 0..{cfg.backbone_layers}")
        self.freeze_blocks = cfg.freeze_blocks
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def load_pretrained(self, source: str) -> None:
        """Load backbone weights strictly (every key must match, shapes included)."""
        if self.cfg.backbone_stem != "patch":
            raise ConfigError(
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
                raise ConfigError(
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

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens entering the first block: [CLS, patches] + position embeddings resized the way
        Meta's DINOv2 does (HF's own resize samples a slightly different grid). (B,3,H,W) ->
        ((B,1+N,Db), the conv stem's map at `stem_stride` or None)."""
        emb = self.model.embeddings
        stem_map = None
        if self.stem_stride is None:
            patches = emb.patch_embeddings(image)  # (B, N, Db)
        else:  # Hugging Face's patch embedding is projection(image).flatten(2).transpose(1, 2)
            out, stem_map = emb.patch_embeddings.projection.features(image, self.stem_stride)
            patches = out.flatten(2).transpose(1, 2)
        tokens = torch.cat([emb.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        h, w = image.shape[-2] // self.cfg.patch_size, image.shape[-1] // self.cfg.patch_size
        return emb.dropout(tokens + meta_position_embeddings(emb.position_embeddings, h, w)), stem_map

    def forward(self, image: torch.Tensor, return_attention: bool = False) -> dict:
        h, w = image.shape[-2] // self.cfg.patch_size, image.shape[-1] // self.cfg.patch_size
        grad = torch.is_grad_enabled()
        # Frozen parts run without autograd unless someone asks for gradients w.r.t. the image.
        frozen_grad = grad and image.requires_grad
        with torch.set_grad_enabled(frozen_grad or (grad and self.model.embeddings.cls_token.requires_grad)):
            hidden, stem_map = self.embed(image)
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
        if stem_map is not None:
            out["stem"] = stem_map
        return out
