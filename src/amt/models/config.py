"""Model configuration: the `ModelConfig` dataclass and the table of named presets.

Presets are data: `PRESETS[name]` holds the field values that differ from the defaults,
`VARIANTS[name]` a preset plus changed fields, and `make_config(name, **overrides)` applies
either. These tables are the only source of named model configs: the Hydra `model` group
(`model=NAME`) is generated from them (`named_config_fields`). Backbone sizes follow DINOv2
(Oquab et al. 2023); `backbone_image_size` is the positional-embedding grid of the pretrained
weights (518 px for Meta's checkpoints), inputs of `image_size` pixels interpolate it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from amt.data.transforms import MAX_CROP_MARGIN
from amt.data.ycb import NUM_CLASSES
from amt.errors import ConfigError, finite_number, require


@dataclass
class ModelConfig:
    """Every knob of `amt.models.AMT`. Lengths in metres, image quantities in pixels."""

    preset: str = "tiny"
    # --- backbone (DINOv2 ViT) ---
    backbone_hidden: int = 64
    backbone_layers: int = 4
    backbone_heads: int = 4
    backbone_mlp_ratio: int = 4
    backbone_swiglu: bool = False
    backbone_layerscale: float = 1.0
    backbone_image_size: int = 224
    patch_size: int = 14
    image_size: int = 224
    # crop side / longest side of the hand's 2D box, of the crops the model was trained on
    # (amt.data.transforms.square_box): the trainer records its training cache's, and `amt predict`,
    # `amt eval` and `amt debug` crop new data the same way. None: not recorded (older checkpoints;
    # the default CropConfig margin, 1.5, is assumed).
    crop_margin: float | None = None
    # "patch": DINOv2's linear patch embedding (pretrained presets); "conv": a convolutional stem
    # (amt.models.stem, power-of-two patch_size) for backbones trained from scratch, e.g. the demo
    backbone_stem: str = "patch"
    backbone_stem_width: int = 32
    # stride-1 3x3 convolutions after each stem stage's stride-2 one; None = one per stage
    backbone_stem_convs: list[int] | None = None
    # hub id ("facebook/dinov2-large"), local HF folder, or Meta checkpoint (dinov2_vit*14_pretrain.pth);
    # the ViT presets default to their official DINOv2 hub id, "none" = random initialisation on purpose
    backbone_weights: str | None = None
    freeze_blocks: int = 2
    # 1-based block indices whose outputs form the pyramid; None = quarter points of the depth
    tap_blocks: list[int] | None = None
    gradient_checkpointing: bool = False
    # --- heads ---
    hidden_dim: int = 64
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # pyramid level scale factors relative to the patch grid, one per tap block (fine to coarse)
    pyramid_scales: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])
    # pyramid levels (indices) the object decoder cross-attends to
    decoder_levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    decoder_layers: int = 2
    # "learned": DETR's learned query embeddings; "selected": object queries anchored at the image
    # tokens a proposal head scores highest (amt.models.objects; docs/experiments.md "Object queries")
    object_queries: str = "learned"
    num_queries: int = 10
    num_classes: int = NUM_CLASSES
    point_layers: int = 2
    # where the coarse hand's joints come from (amt.models.hand): "token" = the hand token regresses
    # the root pixel, its depth and 20 offsets; "heatmap" = per-joint heatmaps on the pyramid's
    # finest grid (AMT.keypoint_features), soft-argmax (integral regression) for every joint's
    # pixel, the token for the root depth
    hand_keypoints: str = "token"
    # where an object's projected centre comes from (amt.models.objects): "token" = regressed from
    # its query token; "heatmap" = a soft-argmax over the cells of AMT.keypoint_features weighted by
    # the query's attention to them, plus a small regressed offset (centres just outside the crop),
    # and a linear read of the attended feature added to the token's log depth
    object_centre: str = "token"
    # add the conv stem's own feature map at the finest pyramid level's stride to the hand and
    # object heatmaps' features (AMT.keypoint_features), a U-Net-style skip: pixel detail the
    # tokens' upsampling does not carry (backbone_stem="conv" only)
    stem_skip: bool = False
    # feed where the crop sits in the camera image and its scale (from the crop K: the crop
    # centre's viewing ray and log focal length per crop pixel) into the global token, as CLIFF
    # (Li et al. 2022) does for bounding boxes: absolute depth is not in the crop's pixels alone
    crop_camera_input: bool = False
    refine_steps: int = 2
    refine_axis_length: float = 0.05
    # depth = fx * depth_per_focal * exp(raw): 1e-3 m per pixel of focal length puts a
    # 224-px crop (fx ~ 700) at about 0.7 m, the DexYCB working distance
    depth_per_focal: float = 1e-3
    sigma_reparam: bool = True
    sigma_reparam_backbone: bool = False
    mano_path: str | None = None
    surface_points_per_bone: int = 4

    def __post_init__(self) -> None:
        # plain lists (a Hydra ListConfig or a tuple would not round-trip through config.yaml)
        self.pyramid_scales = [float(x) for x in self.pyramid_scales]
        self.decoder_levels = [int(x) for x in self.decoder_levels]
        if self.tap_blocks is not None:
            self.tap_blocks = [int(x) for x in self.tap_blocks]
        if self.backbone_stem_convs is not None:
            self.backbone_stem_convs = [int(x) for x in self.backbone_stem_convs]
        if isinstance(self.backbone_weights, str) and self.backbone_weights.lower() == "none":
            self.backbone_weights = "none"  # kept (not None) so saved configs record the choice
        if self.backbone_stem not in ("patch", "conv"):
            raise ConfigError(f"model config: backbone_stem must be 'patch' or 'conv', got {self.backbone_stem!r}")
        if self.object_queries not in ("learned", "selected"):
            raise ConfigError(
                f"model config: object_queries must be 'learned' or 'selected', got {self.object_queries!r}"
            )
        if self.object_centre not in ("token", "heatmap"):
            raise ConfigError(f"model config: object_centre must be 'token' or 'heatmap', got {self.object_centre!r}")
        if self.object_centre == "heatmap" and self.object_queries == "selected":
            raise ConfigError(
                "model config: object_centre='heatmap' places the centre itself; selected queries anchor it "
                "at their token (object_queries='selected'): choose one"
            )
        if self.stem_skip and self.backbone_stem != "conv":
            raise ConfigError(
                "model config: stem_skip needs backbone_stem='conv' (a patch embedding has no feature maps)"
            )
        if self.hand_keypoints not in ("token", "heatmap"):
            raise ConfigError(f"model config: hand_keypoints must be 'token' or 'heatmap', got {self.hand_keypoints!r}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Sizes and scales a model can be built from: a value out of range is one ConfigError
        naming the field as an override (`model.hidden_dim=30`), not a traceback from deep inside the
        model's construction or, worse, a model built from it that predicts nonsense."""

        def need(ok: bool, key: str, expected: str) -> None:
            require(ok, f"model.{key}", getattr(self, key), expected)

        def whole(value: Any, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        for key in ("backbone_hidden", "backbone_layers", "backbone_heads", "backbone_mlp_ratio", "patch_size",
                    "backbone_stem_width", "num_heads", "decoder_layers", "num_queries", "num_classes",
                    "point_layers", "surface_points_per_bone"):  # fmt: skip
            need(whole(getattr(self, key), 1), key, "a whole number >= 1")
        need(whole(self.refine_steps, 0), "refine_steps", "a whole number >= 0")
        need(self.backbone_hidden % self.backbone_heads == 0, "backbone_hidden",
             f"a multiple of backbone_heads={self.backbone_heads}")  # fmt: skip
        # the points' sine encoding (amt.models.layers.sine_encode_points) splits the width in four
        need(whole(self.hidden_dim, 4) and self.hidden_dim % 4 == 0, "hidden_dim", "a multiple of 4, >= 4")
        need(self.hidden_dim % self.num_heads == 0, "hidden_dim", f"a multiple of num_heads={self.num_heads}")
        for key in ("image_size", "backbone_image_size"):
            need(whole(getattr(self, key), self.patch_size), key, f"whole pixels >= patch_size={self.patch_size}")
        if self.backbone_stem == "conv":  # its stride-2 stages must end exactly on the patch grid
            need(self.image_size % self.patch_size == 0, "image_size",
                 f"a multiple of patch_size={self.patch_size} (backbone_stem='conv')")  # fmt: skip
        for key in ("mlp_ratio", "refine_axis_length", "depth_per_focal"):
            need(finite_number(getattr(self, key)) and getattr(self, key) > 0, key, "a number > 0")
        need(finite_number(self.backbone_layerscale), "backbone_layerscale", "a finite number")
        need(self.crop_margin is None or finite_number(self.crop_margin) and 1 <= self.crop_margin <= MAX_CROP_MARGIN,
             "crop_margin", f"null or a number in [1, {MAX_CROP_MARGIN:g}]")  # fmt: skip
        need(all(finite_number(x) and x > 0 for x in self.pyramid_scales), "pyramid_scales", "numbers > 0")
        need(len(self.decoder_levels) > 0, "decoder_levels", "at least one pyramid level")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"{source}: unknown model config key(s) {unknown}; expected a subset of {sorted(known)}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(
            **{key: _scalar(value, types[key], f"{source}: model config key {key!r}") for key, value in values.items()}
        )

    @property
    def taps(self) -> list[int]:
        """1-based tap blocks: explicit, or the quarter points of the depth (6, 12, 18, 24 for 24)."""
        if self.tap_blocks is not None:
            return list(self.tap_blocks)
        n = self.backbone_layers
        return [max(1, round(n * k / 4)) for k in range(1, 5)]

    @property
    def pretrained_weights(self) -> str | None:
        """The weights to load into the backbone, or None for random initialisation."""
        return None if self.backbone_weights in (None, "none") else self.backbone_weights

    @property
    def grid_size(self) -> int:
        """Patch-grid side for `image_size` (16 for 224 / 14)."""
        return self.image_size // self.patch_size

    @property
    def finest_grid(self) -> int:
        """Cells per side of the finest pyramid level, where the heatmaps are read."""
        return int(self.grid_size * self.pyramid_scales[0])

    @property
    def finest_stride(self) -> float:
        """Crop pixels per cell of the finest pyramid level."""
        return self.patch_size / self.pyramid_scales[0]


_VIT = dict(backbone_image_size=518, backbone_layerscale=1e-5)
# The ViT presets' heads, sized so they cost a small fraction of the backbone (issue 17,
# benchmarks/README.md "Heads' cost"): the finest pyramid level at 2x the patch grid (stride 7 px,
# refinement samples it bilinearly) instead of 4x, whose transposed convolution alone cost 8.6
# GFLOP at width 1024; the decoder attends to the 1x and 0.5x levels (320 memory tokens at 224 px)
# instead of also the 2x one (1344 tokens: its key/value projections were 70 % of the decoder);
# 4 decoder layers.
_VIT_HEADS = dict(pyramid_scales=[2.0, 1.0, 1.0, 0.5], decoder_levels=[2, 3], decoder_layers=4)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(),
    "vits14": dict(_VIT, **_VIT_HEADS, backbone_hidden=384, backbone_layers=12, backbone_heads=6, freeze_blocks=6,
                   hidden_dim=384, num_heads=6, backbone_weights="facebook/dinov2-small"),
    "vitb14": dict(_VIT, **_VIT_HEADS, backbone_hidden=768, backbone_layers=12, backbone_heads=12, freeze_blocks=6,
                   hidden_dim=512, num_heads=8, backbone_weights="facebook/dinov2-base"),
    # the paper setup: ViT-L/14, blocks 0-11 frozen, taps 6/12/18/24, hidden 1024 (heads: _VIT_HEADS)
    "vitl14": dict(_VIT, **_VIT_HEADS, backbone_hidden=1024, backbone_layers=24, backbone_heads=16, freeze_blocks=12,
                   hidden_dim=1024, num_heads=16, backbone_weights="facebook/dinov2-large"),
    "vitg14": dict(_VIT, **_VIT_HEADS, backbone_hidden=1536, backbone_layers=40, backbone_heads=24,
                   backbone_swiglu=True, freeze_blocks=20, hidden_dim=1024, num_heads=16,
                   backbone_weights="facebook/dinov2-giant"),
}  # fmt: skip


def _scalar(value: Any, annotation: str, where: str) -> Any:
    """`value` as the plain scalar type its field is annotated with ("int", "float", "bool"):
    YAML reads 1e-5 as a string (it wants 1.0e-5) and a command line gives strings; anything that
    does not convert is the user's mistake, named."""
    if annotation.endswith(" | None"):  # an optional scalar: None stays None, anything else converts
        return None if value is None else _scalar(value, annotation[: -len(" | None")], where)
    kind = {"int": int, "float": float, "bool": bool}.get(annotation)
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if kind is bool and text in ("true", "false"):
                return text == "true"
            if kind is int and text.lstrip("+-").isdigit():
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {annotation}, got {value!r}")


def recorded_crop_margin(model: Any) -> float | None:
    """The crop margin `model` was trained on (`ModelConfig.crop_margin`, which the trainer
    records), None when its config records none (older checkpoints, models without a config)."""
    margin = getattr(getattr(model, "config", None), "crop_margin", None)
    return None if margin is None else float(margin)


# Named variants of a preset: name -> (preset, field overrides). A variant's config keeps the
# preset's name in `preset` (the same network with other fields, as if they were set by hand).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # the tiny preset for training from scratch on CPU (what `amt demo` trains): a convolutional
    # stem instead of DINOv2's linear patch embedding, every block trainable, LayerScale 1e-5
    # (docs/experiments.md "Training from scratch"); 8-px patches (12 x 12 tokens at 96 px) with
    # the pyramid scaled to keep its 4-32 px strides, and heatmap keypoints for the coarse hand
    # (docs/experiments.md "Hand keypoints and object depth"); heatmap object centres, the crop's
    # camera position as an input, the stem's stride-4 map into the heatmap features, and no
    # stride-1 conv at the stem's 48 x 48 stage (~14 % of a step; docs/experiments.md "Absolute
    # position"). Crops must be a multiple of 8 px.
    "tiny_conv": (
        "tiny",
        dict(
            backbone_stem="conv",
            patch_size=8,
            pyramid_scales=[2.0, 1.0, 0.5, 0.25],
            freeze_blocks=0,
            backbone_layerscale=1e-5,
            hand_keypoints="heatmap",
            object_centre="heatmap",
            crop_camera_input=True,
            stem_skip=True,
            backbone_stem_convs=[0, 1, 1],
        ),
    ),
}

# Published parameter counts of the paper model (vitl14 at hidden 1024), millions.
PAPER_PARAMS_M = {"total": 516.1, "trainable": 362.9}


def named_config_fields(name: str) -> dict[str, Any]:
    """The explicitly set fields that select a named config: {"preset": name} for a preset, the
    preset plus the changed fields for a variant (what Hydra's `model=NAME` writes)."""
    if name in VARIANTS:
        preset, fields = VARIANTS[name]
        return {"preset": preset, **fields}
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS) + sorted(VARIANTS)}")
    return {"preset": name}


def make_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """Look a preset (or variant) up and apply field overrides (unknown names are an error)."""
    fields = named_config_fields(preset)
    name = fields.pop("preset")
    return ModelConfig.from_dict({**PRESETS[name], "preset": name, **fields, **overrides}, source=f"preset {preset!r}")
