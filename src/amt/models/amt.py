"""AMT assembly: backbone -> pyramid -> query decoder -> hand encoder / object head ->
pixel-aligned refinement -> contact head, plus save_pretrained / from_pretrained.

Output contract (docs/architecture.md): the keys of `OUTPUT_KEYS` plus `aux`; metres, camera
frame of the crop. `aux` holds `refine_steps` (list of dicts joints_3d / obj_t / obj_R / obj_quat, one per
refinement step; the final outputs are the last step's),
`joints_3d_coarse`, `hand_points` (B,P,3), `obj_R` (B,Q,3,3), `contact_logit` (B,Q), and with
`return_attention=True` `backbone_attentions` (list over tap blocks of (B,H,1+N,1+N)),
`object_cross_attention` (B,H,Q,T) of the last decoder layer and `memory_shapes` (the (h, w)
of each pyramid level in the decoder memory, in token order). With selected object queries
(`ModelConfig.object_queries`) also `proposal_logits` (B,T,C) per memory token and class,
`proposal_uv` (T,2) and `proposal_stride` (T,) the tokens' centres and cell sides in crop pixels,
and `query_reference_uv` (B,Q,2) each query's anchor. With heatmaps (`hand_keypoints` /
`object_centre` = "heatmap") `hand_heatmap_scores` (B,21,C) / `object_heatmap_scores` (B,Q,C),
the logits over the C cells of the finest grid whose softmax places the joints / centres, and
`heatmap_uv` (C,2) / `heatmap_stride` the cells' centres and side in crop pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from amt.errors import ConfigError
from amt.geometry.mano import ManoLayer
from amt.models.backbone import DinoBackbone
from amt.models.config import ModelConfig, make_config
from amt.models.contact import ContactHead
from amt.models.hand import HandEncoder
from amt.models.layers import BilinearResize, grid_centres, init_head_weights, sine_positions_2d
from amt.models.objects import ObjectHead, QueryDecoder
from amt.models.pyramid import FeaturePyramid
from amt.models.refine import Refiner
from amt.models.sigma_reparam import apply_sigma_reparam, no_sigma_init

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.safetensors"
OUTPUT_KEYS = ("joints_3d", "joints_3d_coarse", "joint_conf", "mano_shape", "obj_t", "obj_quat", "obj_logits",
               "contact_points", "contact_prob", "contact_force")  # fmt: skip


MAX_CONFIG_NUMBER = 8192  # bound on every number in a config.yaml (sizes, layer counts): no real model is near it


class ModelFileError(ValueError):
    """A model folder's config.yaml or model.safetensors cannot be loaded; the message names the file."""


class ModelFileMissing(ModelFileError, FileNotFoundError):
    """config.yaml or model.safetensors (or the folder) does not exist."""


class WeightsMismatch(ModelFileError, KeyError):
    """model.safetensors lacks weights the config's model has, or holds others."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def crop_camera_features(K: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, 3) where a crop sits in its camera's image, from its intrinsics K (B, 3, 3) pixels:
    the crop centre's viewing ray (x / z, y / z) and log(fx / image_size), the focal length per
    crop side (larger for a smaller box in the camera image, i.e. a farther or smaller hand)."""
    centre = (image_size - 1) / 2
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    return torch.stack([(centre - K[:, 0, 2]) / fx, (centre - K[:, 1, 2]) / fy, torch.log(fx / image_size)], dim=-1)


class AMT(nn.Module):
    """The Advanced Manipulation Transformer.

    forward(batch) reads batch["image"] (B,3,224,224) normalised RGB and batch["K"] (B,3,3) crop
    intrinsics (pixels) and returns the output dict of docs/architecture.md. Everything except
    `backbone` is the head; head initialisation never touches the backbone, so pretrained weights
    loaded by the backbone survive construction. load_backbone_weights: load
    `config.backbone_weights` (a ViT preset's default hub id included); False when the weights
    come from elsewhere (a checkpoint, a shapes-only build).
    """

    def __init__(self, config: ModelConfig, load_backbone_weights: bool = True) -> None:
        super().__init__()
        cfg = self.config = config
        if not all(0 <= i < len(cfg.pyramid_scales) for i in cfg.decoder_levels):
            raise ConfigError(
                f"model config: decoder_levels {cfg.decoder_levels} must index pyramid_scales {cfg.pyramid_scales}"
            )
        self.backbone = DinoBackbone(cfg)
        if load_backbone_weights and cfg.pretrained_weights:
            self.backbone.load_pretrained(cfg.pretrained_weights)
        elif load_backbone_weights and cfg.backbone_weights == "none":
            log.warning("model.backbone_weights=none: the %s backbone starts from random initialisation", cfg.preset)
        self.backbone.freeze()
        if cfg.sigma_reparam and cfg.sigma_reparam_backbone:
            self.backbone.apply_sigma_reparam()

        D = cfg.hidden_dim
        self.pyramid = FeaturePyramid(cfg)
        # global image token: CLS concatenated with the mean patch token (DINOv2's linear-probe
        # feature), which also gives the heads a short path to pooled features in from-scratch runs
        self.cls_proj = nn.Linear(2 * cfg.backbone_hidden, D)
        init_head_weights(self.cls_proj)
        self.stem_in: nn.Conv2d | None = None
        if cfg.stem_skip:
            self.stem_in = nn.Conv2d(self.backbone.stem_channels, D, 1)
            nn.init.zeros_(self.stem_in.weight)  # starts as the plain pyramid sum; learns from there
            nn.init.zeros_(self.stem_in.bias)
        self.camera_in = None
        if cfg.crop_camera_input:
            self.camera_in = nn.Linear(3, D)
            init_head_weights(self.camera_in)
        self.level_embed = nn.Parameter(torch.randn(len(cfg.decoder_levels), D) * 0.02)
        finest = self._level_shape(cfg.grid_size, cfg.pyramid_scales[0])
        self.keypoint_resize = nn.ModuleList(
            BilinearResize(self._level_shape(cfg.grid_size, s), finest) for s in cfg.pyramid_scales[1:]
        )
        self.memory_shapes = [self._level_shape(cfg.grid_size, cfg.pyramid_scales[i]) for i in cfg.decoder_levels]
        pos = [sine_positions_2d(h, w, D) for h, w in self.memory_shapes]
        self.register_buffer("memory_pos", torch.cat(pos).unsqueeze(0), persistent=False)  # (1, T, D)
        strides = [cfg.patch_size / cfg.pyramid_scales[i] for i in cfg.decoder_levels]
        centres = [grid_centres(h, w, s) for (h, w), s in zip(self.memory_shapes, strides, strict=True)]
        self.register_buffer("memory_uv", torch.cat(centres), persistent=False)  # (T, 2) crop pixels
        stride = torch.cat([torch.full((h * w,), s) for (h, w), s in zip(self.memory_shapes, strides, strict=True)])
        self.register_buffer("memory_stride", stride, persistent=False)  # (T,) crop pixels per cell
        self.decoder = QueryDecoder(cfg)
        self.hand = HandEncoder(cfg, ManoLayer.from_pickle(cfg.mano_path) if cfg.mano_path else None)
        self.objects = ObjectHead(cfg)
        self.refiner = Refiner(cfg, len(cfg.pyramid_scales))
        self.contact = ContactHead(cfg)
        if cfg.sigma_reparam:
            apply_sigma_reparam(self, skip=("backbone",))

    @staticmethod
    def _level_shape(grid: int, scale: float) -> tuple[int, int]:
        side = int(grid * scale)
        return side, side

    # ----------------------------------------------------------------- parameters
    def trainable_backbone_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that train (blocks after `freeze_blocks`, final norm)."""
        return self.backbone.trainable_parameters()

    def head_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter outside the backbone."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]

    def keypoint_features(self, levels: list[torch.Tensor], stem: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h0, w0): the finest pyramid level plus every coarser level resampled to it, an
        FPN-style sum, plus (`stem_skip`) the conv stem's map at that stride, projected. The
        hand's keypoint heatmaps need the finest grid and the deeper taps' context: on the demo,
        heatmaps on the finest level alone (the first tap block) ended 3.5-8 mm worse
        (docs/experiments.md "Hand keypoints and object depth")."""
        out = levels[0]
        for level, resize in zip(levels[1:], self.keypoint_resize, strict=True):
            out = out + resize(level)
        if self.stem_in is not None:
            if stem is None:
                raise ValueError("AMT.keypoint_features: stem_skip needs the backbone's stem map")
            out = out + self.stem_in(stem.float()).contiguous()
        return out

    # ----------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any], return_attention: bool = False) -> dict[str, Any]:
        image, K = batch["image"], batch["K"].float()
        feats = self.backbone(image, return_attention=return_attention)
        levels = self.pyramid(feats["taps"], feats["grid"])
        memory = torch.cat(
            [
                levels[i].flatten(2).transpose(1, 2) + self.level_embed[j]
                for j, i in enumerate(self.config.decoder_levels)
            ],
            dim=1,
        )
        cls = self.cls_proj(torch.cat([feats["cls"], feats["patches"].mean(dim=1)], dim=-1))
        if self.camera_in is not None:
            cls = cls + self.camera_in(crop_camera_features(K, self.config.image_size)).to(cls.dtype)
        decoded = self.decoder(memory, self.memory_pos, cls, self.memory_uv, return_attention)
        hand_token, obj_tokens, cross = decoded["hand"], decoded["objects"], decoded["cross"]
        # The geometric heads run in float32 even under autocast: bf16's 8-bit mantissa would put
        # a ~0.4 % floor on depths (3 mm at 0.7 m) and on projections. They are cheap.
        with torch.autocast(image.device.type, enabled=False):
            hand_token, obj_tokens, cls = hand_token.float(), obj_tokens.float(), cls.float()
            levels = [level.float() for level in levels]
            needed = self.hand.heatmaps is not None or self.objects.heatmaps is not None
            keypoint_features = self.keypoint_features(levels, feats.get("stem")) if needed else None
            hand = self.hand(hand_token, cls, K, keypoint_features)
            obj = self.objects(obj_tokens, K, decoded["reference_uv"], keypoint_features)
            joints, obj_t, obj_R, obj_tokens, steps = self.refiner(
                hand["joints_3d"], obj["obj_t"], obj["obj_R"], obj_tokens, hand["hand_feature"], levels,
                self.pyramid.strides, K,
            )  # fmt: skip
            contact = self.contact(obj_tokens, hand["hand_feature"], joints, obj_t)
        obj_quat = steps[-1]["obj_quat"] if steps else obj["obj_quat"]
        aux: dict[str, Any] = {
            "refine_steps": steps,
            "joints_3d_coarse": hand["joints_3d_coarse"],
            "hand_points": hand["hand_points"],
            "obj_R": obj_R,
            "contact_logit": contact["contact_logit"],
        }
        # the heatmaps' scores on the finest grid, for the loss on the heatmaps themselves
        if "heatmap_scores" in hand:
            aux["hand_heatmap_scores"] = hand["heatmap_scores"]
        if "centre_scores" in obj:
            aux["object_heatmap_scores"] = obj["centre_scores"]
        heatmaps = self.hand.heatmaps or self.objects.heatmaps  # both on the finest grid
        if heatmaps is not None:
            aux["heatmap_uv"], aux["heatmap_stride"] = heatmaps.centres, self.config.finest_stride
        if decoded["proposal_logits"] is not None:
            aux["proposal_logits"] = decoded["proposal_logits"]
            aux["proposal_uv"], aux["proposal_stride"] = self.memory_uv, self.memory_stride
            aux["query_reference_uv"] = decoded["reference_uv"]
        if return_attention:
            aux["backbone_attentions"] = feats["attentions"]
            aux["object_cross_attention"] = cross[:, :, 1:]
            aux["memory_shapes"] = list(self.memory_shapes)
        return {
            "joints_3d": joints,
            "joints_3d_coarse": hand["joints_3d_coarse"],
            "joint_conf": hand["joint_conf"],
            "mano_shape": hand["mano_shape"],
            "obj_t": obj_t,
            "obj_quat": obj_quat,
            "obj_logits": obj["obj_logits"],
            "contact_points": contact["contact_points"],
            "contact_prob": contact["contact_prob"],
            "contact_force": contact["contact_force"],
            "aux": aux,
        }

    def forward_tensors(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tensor-only forward for tracing / ONNX: the `OUTPUT_KEYS` values in that order."""
        out = self.forward({"image": image, "K": K})
        return tuple(out[k] for k in OUTPUT_KEYS)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `config.yaml` and `model.safetensors` into `folder` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / CONFIG_FILE).open("w") as f:
            yaml.safe_dump(self.config.to_dict(), f, sort_keys=False)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "preset": self.config.preset})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> AMT:
        """Restore a model saved by `save_pretrained` (a training checkpoint folder too). Strict:
        a missing or unexpected weight, a shape mismatch, an unreadable file, a config that cannot
        build a model, or a NaN/inf weight is a `ModelFileError` naming the file (and the key).
        The shapes are compared on a "meta" model (no memory) before anything is allocated, so a
        config declaring huge dimensions is refused without trying to build it."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (folder, config_path, weights_path):
            if not path.exists():
                raise ModelFileMissing(
                    f"checkpoint incomplete: {path} does not exist (expected {CONFIG_FILE} + {WEIGHTS_FILE})"
                )
        try:
            with config_path.open() as f:
                values = yaml.safe_load(f) or {}
            if not isinstance(values, dict):
                raise TypeError(f"expected a mapping of model config keys, got {type(values).__name__}")
            for key, value in values.items():
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, (int, float)) and not (abs(v) <= MAX_CONFIG_NUMBER):  # NaN fails too
                        raise ValueError(f"key {key!r}: {value!r} is not a number in +-{MAX_CONFIG_NUMBER}")
            config = ModelConfig.from_dict(values, source=str(config_path))
            with no_sigma_init(), torch.device("meta"):  # shapes only: nothing is allocated
                meta_model = cls(config, load_backbone_weights=False)
            own = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
            tensors = [*meta_model.parameters(), *meta_model.buffers()]  # non-persistent buffers too
            needed = sum(t.numel() * t.element_size() for t in tensors)
            if needed > 2 * weights_path.stat().st_size + (1 << 30):
                raise ValueError(f"the model it describes needs {needed / 2**30:.1f} GiB, far more than its weights")
        except (KeyError, FileNotFoundError) as exc:
            raise ModelFileError(f"{config_path}: {exc}") from exc
        except Exception as exc:  # why: any failure to build from an untrusted config is the file's fault
            raise ModelFileError(f"{config_path}: cannot build a model from it ({type(exc).__name__}: {exc})") from exc
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
        except Exception as exc:  # why: safetensors raises its own SafetensorError besides OSError
            raise ModelFileError(
                f"{weights_path}: not a readable safetensors file ({type(exc).__name__}: {exc})"
            ) from exc
        missing = sorted(set(own) - set(shapes))
        unexpected = sorted(set(shapes) - set(own))
        if missing:
            raise WeightsMismatch(f"{weights_path}: missing weight(s) {missing[:10]}")
        if unexpected:
            raise WeightsMismatch(f"{weights_path}: unexpected weight(s) {unexpected[:10]}")
        for key, shape in shapes.items():
            if shape != own[key]:
                raise ModelFileError(f"{weights_path}: {key} has shape {shape}, the model expects {own[key]}")
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as exc:  # why: as above
            raise ModelFileError(f"{weights_path}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
        for key, value in state.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ModelFileError(f"{weights_path}: {key} holds NaN or inf")
        with no_sigma_init():  # u, v and gamma come from the checkpoint
            model = cls(config, load_backbone_weights=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
            raise ModelFileError(f"{weights_path}: {exc}") from exc
        log.info("loaded %s (%s preset)", folder, model.config.preset)
        return model.to(map_location)


def build_model(preset: str = "tiny", load_backbone_weights: bool | None = None, **overrides: Any) -> AMT:
    """Build AMT from a preset (`tiny`, `vits14`, `vitb14`, `vitl14`, `vitg14`) and field overrides.

    Backbone weights are loaded only when asked for: `load_backbone_weights=True`, or (the default,
    None) when `backbone_weights` is passed here. A preset's default hub id is not fetched, so
    `build_model("vitl14")` is a random model that never touches the network (the trainer, which
    builds `AMT(config)`, loads them)."""
    if load_backbone_weights is None:
        load_backbone_weights = "backbone_weights" in overrides
    return AMT(make_config(preset, **overrides), load_backbone_weights=load_backbone_weights)
