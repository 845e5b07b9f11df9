"""ModelConfig and the preset table."""

from __future__ import annotations

import pytest

from amt.errors import ConfigError
from amt.models import PRESETS, ModelConfig, make_config
from amt.models.config import VARIANTS


def test_presets_apply_and_overrides_win() -> None:
    cfg = make_config("vitl14", hidden_dim=768)
    assert cfg.preset == "vitl14" and cfg.backbone_layers == 24 and cfg.freeze_blocks == 12
    assert cfg.hidden_dim == 768
    assert set(PRESETS) == {"tiny", "vits14", "vitb14", "vitl14", "vitg14"}


def test_unknown_names_are_errors_that_name_them() -> None:
    with pytest.raises(KeyError, match="vitx99"):
        make_config("vitx99")
    with pytest.raises(KeyError, match="hiden_dim"):
        make_config("tiny", hiden_dim=3)


def test_sequences_become_plain_lists_for_config_yaml() -> None:
    cfg = ModelConfig(pyramid_scales=(4, 2, 1, 0.5), decoder_levels=(1, 2), tap_blocks=(1, 2, 3, 4))
    assert cfg.pyramid_scales == [4.0, 2.0, 1.0, 0.5] and cfg.decoder_levels == [1, 2]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_variants_are_a_preset_with_changed_fields() -> None:
    cfg = make_config("tiny_conv", image_size=112)
    preset, changed = VARIANTS["tiny_conv"]
    assert preset == "tiny" and changed["backbone_stem"] == "conv" and changed["hand_keypoints"] == "heatmap"
    assert (cfg.patch_size, cfg.pyramid_scales, cfg.freeze_blocks, cfg.backbone_layerscale) == (
        8,
        [2, 1, 0.5, 0.25],
        0,
        1e-5,
    )
    assert (cfg.object_centre, cfg.crop_camera_input, cfg.stem_skip, cfg.backbone_stem_convs) == (
        "heatmap",
        True,
        True,
        [0, 1, 1],
    )
    assert cfg == make_config("tiny", image_size=112, **changed)
    assert cfg.preset == "tiny"


def test_scalar_fields_take_their_type_from_command_line_strings_or_name_the_key() -> None:
    # YAML 1.1 (and `amt bench --set`) reads 1e-5 as a string; the field's type decides
    cfg = make_config("tiny", backbone_layerscale="1e-5", point_layers="3", sigma_reparam="false", image_size=112.0)
    assert cfg.backbone_layerscale == 1e-5 and cfg.point_layers == 3 and cfg.sigma_reparam is False
    assert isinstance(cfg.image_size, int) and cfg.image_size == 112
    with pytest.raises(ValueError, match="'hidden_dim': expected int, got 'wide'"):
        make_config("tiny", hidden_dim="wide")
    with pytest.raises(ValueError, match="hand_keypoints must be 'token' or 'heatmap'"):
        make_config("tiny", hand_keypoints="dense")
    with pytest.raises(ValueError, match="object_queries must be 'learned' or 'selected'"):
        make_config("tiny", object_queries="anchored")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_dim": 30}, r"hidden_dim=30: expected a multiple of 4, >= 4"),
        ({"hidden_dim": 0}, r"hidden_dim=0"),
        ({"hidden_dim": 68, "num_heads": 8}, r"hidden_dim=68: expected a multiple of num_heads=8"),
        ({"num_heads": 0}, r"num_heads=0: expected a whole number >= 1"),
        ({"backbone_hidden": 0}, r"backbone_hidden=0"),
        ({"backbone_hidden": 66}, r"backbone_hidden=66: expected a multiple of backbone_heads=4"),
        ({"backbone_heads": 0}, r"backbone_heads=0"),
        ({"backbone_mlp_ratio": -1}, r"backbone_mlp_ratio=-1"),
        ({"patch_size": 0}, r"patch_size=0"),
        ({"image_size": 10}, r"image_size=10: expected whole pixels >= patch_size=14"),
        ({"backbone_image_size": 0}, r"backbone_image_size=0"),
        ({"mlp_ratio": 0.0}, r"mlp_ratio=0.0: expected a number > 0"),
        ({"pyramid_scales": [0.0, 1.0, 1.0, 0.5]}, r"pyramid_scales=\[0.0, 1.0, 1.0, 0.5\]: expected numbers > 0"),
        ({"decoder_levels": []}, r"decoder_levels=\[\]: expected at least one pyramid level"),
        ({"decoder_layers": 0}, r"decoder_layers=0"),
        ({"num_queries": 0}, r"num_queries=0"),
        ({"point_layers": -1}, r"point_layers=-1"),
        ({"refine_steps": -1}, r"refine_steps=-1: expected a whole number >= 0"),
        ({"refine_axis_length": 0.0}, r"refine_axis_length=0.0"),
        ({"depth_per_focal": -1.0}, r"depth_per_focal=-1.0"),
        ({"surface_points_per_bone": 0}, r"surface_points_per_bone=0"),
        ({"backbone_layerscale": float("nan")}, r"backbone_layerscale=nan: expected a finite number"),
        ({"crop_margin": 0.5}, r"crop_margin=0.5: expected null or a number in \[1, 10\]"),
    ],
)
def test_sizes_and_scales_out_of_range_are_one_error_naming_the_field(fields, message) -> None:
    """Each of these used to fail deep inside the model's construction (ZeroDivisionError, a
    negative tensor dimension, the sine encoding's divisibility) or, worse, build a model (no object
    queries, no decoder layer, a negative depth scale that predicts NaN)."""
    with pytest.raises(ConfigError, match=rf"^config model.{message}"):
        make_config("tiny", **fields)
    for name in [*PRESETS, *VARIANTS]:
        make_config(name)  # every named config passes
