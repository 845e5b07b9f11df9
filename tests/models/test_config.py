"""ModelConfig and the preset table."""

from __future__ import annotations

import pytest

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
