"""Hydra composition of src/amt/config and its validation against the typed configs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from amt.data.augment import AugmentConfig
from amt.errors import ConfigError
from amt.models.config import PRESETS, VARIANTS, ModelConfig, make_config
from amt.training.config import RunConfig, StageConfig, TrainingConfig, compose, load_run_config
from amt.training.losses import TERM_NAMES, LossConfig


def test_overrides_reach_the_dataclasses():
    cfg = load_run_config(
        "config",
        [
            "training.batch_size=64",
            "training.learning_rate=5e-4",
            "model.hidden_dim=768",
            "checkpoint.resume_from=/runs/a/checkpoints/last",
            "data.root=/data/dexycb",
            "loss.diversity=0.5",
        ],
    )
    assert isinstance(cfg.training, TrainingConfig)
    assert cfg.training.batch_size == 64
    assert cfg.training.learning_rate == pytest.approx(5e-4)
    assert cfg.checkpoint.resume_from == "/runs/a/checkpoints/last"
    assert cfg.data.root == "/data/dexycb"
    assert all(isinstance(s, StageConfig) for s in cfg.training.stages)
    # model: the preset plus only what was set explicitly (as saved), resolved into a ModelConfig
    assert {k: v for k, v in cfg.resolved["model"].items() if v is not None} == {"preset": "vitl14", "hidden_dim": 768}
    model_cfg = cfg.model
    assert model_cfg.hidden_dim == 768 and model_cfg.backbone_layers == 24
    assert model_cfg == make_config("vitl14", hidden_dim=768)
    loss_cfg = cfg.loss
    assert isinstance(loss_cfg, LossConfig) and loss_cfg.diversity == 0.5
    assert loss_cfg.hand_coarse == LossConfig().hand_coarse


def test_the_model_takes_the_caches_crop_size():
    """`data.image_size=96` alone used to build a 224-px model and fail in the first step."""
    assert load_run_config("tiny", ["data.image_size=96"]).model.image_size == 96
    assert load_run_config("tiny", ["data.image_size=96", "model.image_size=96"]).model.image_size == 96
    with pytest.raises(ConfigError, match=r"model.image_size=100: expected a multiple of patch_size=8 .*follows data"):
        load_run_config("tiny", ["model=tiny_conv", "data.image_size=100"])


def test_default_is_the_paper_setup_and_tiny_is_selected_by_config_name():
    default = load_run_config("config")
    tiny = load_run_config("tiny")
    assert default.model.preset == "vitl14"
    assert [s.name for s in default.training.stages] == ["coarse", "refine", "finetune"]
    assert tiny.model.preset == "tiny"
    assert tiny.training.precision == "fp32"
    assert tiny.training.output_dir == "runs/tiny"  # ${experiment_name} resolved


def test_experiment_paper_composes():
    cfg = load_run_config("tiny", ["experiment=paper"])
    assert cfg.experiment_name == "paper"
    assert cfg.model.preset == "vitl14" and cfg.model.hidden_dim == 1024
    assert cfg.training.output_dir == "runs/paper"
    # a command-line override still wins over the experiment file
    cfg = load_run_config("config", ["experiment=paper", "model.hidden_dim=768"])
    assert cfg.model.hidden_dim == 768


def test_model_section_has_every_model_config_field():
    cfg = compose("tiny")
    assert set(cfg.model) == {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize("override", ["training.nope=1", "model.not_a_field=3", "loss.unknown_term=1.0"])
def test_unknown_keys_are_rejected_with_their_name(override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
        compose("tiny", [override])


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigCompositionException, match="training.grad_accum_steps"):
        compose("tiny", ["training.grad_accum_steps=many"])


@pytest.mark.parametrize(
    "override",
    ["model.hidden_dim=abc", "training.learning_rate=abc", "loss.diversity=abc", "data.augment_params.scale=abc"],
)
def test_wrong_types_fail_at_load_with_the_key(override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
        load_run_config("tiny", [override])


@pytest.mark.parametrize("name", [*PRESETS, *VARIANTS])
def test_model_group_options_are_the_presets_of_models_config(name):
    assert load_run_config("tiny", [f"model={name}"]).model == make_config(name)


def test_sections_are_the_owners_dataclasses():
    cfg = load_run_config("tiny", ["data.augment_params.rotation_deg=10", "loss.match.rotation_weight=2"])
    assert cfg.data.augment_params == AugmentConfig(rotation_deg=10.0)
    assert isinstance(cfg.loss, LossConfig) and cfg.loss.match.rotation_weight == 2.0
    assert isinstance(cfg.model, ModelConfig)


def test_a_saved_resolved_config_loads_back():
    cfg = load_run_config("tiny", ["model=tiny_conv", "loss.diversity=0.5", "training.batch_size=8"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert RunConfig.from_resolved(saved) == cfg
    saved["data"]["augment_params"] = {}  # configs saved while augment_params was a free dict
    assert RunConfig.from_resolved(saved).data.augment_params == AugmentConfig()


@pytest.mark.parametrize("name", ["config", "tiny"])
def test_stage_multipliers_name_real_loss_terms(name):
    cfg = load_run_config(name)
    for stage in cfg.training.stages:
        assert set(stage.loss_multipliers) <= set(TERM_NAMES), stage.name


def test_cli_cfg_prints_the_resolved_config(capsys):
    from amt.training.cli import train_main

    assert train_main(["--config-name", "tiny", "--cfg", "training.batch_size=8", "data.root=/d"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 8" in out and "root: /d" in out and "output_dir: runs/tiny" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=nope", "Could not find 'model/nope'; Available options in 'model': tiny, tiny_conv,"),
        ("experiment=nope", "Available options in 'experiment': paper"),
        ("training.batchsize=3", "Could not override 'training.batchsize': Key 'batchsize' not in 'TrainingConfig'"),
        ("model.hidden_dim=abc", "model.hidden_dim=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        ("training.lr", "Error parsing override 'training.lr'"),
        ("model.preset=nope", "unknown model preset 'nope'; expected one of"),
        ("model.backbone_stem=nope", "model config: backbone_stem must be 'patch' or 'conv', got 'nope'"),
        # values out of range, refused when the config loads (they used to fail late or never end)
        ("training.batch_size=-8", "config training.batch_size=-8: expected a whole number >= 1 or auto"),
        ("training.grad_accum_steps=0", "config training.grad_accum_steps=0: expected >= 1"),
        ("training.max_steps=0", "config training.max_steps=0: expected >= 1 or null"),
        ("training.learning_rate=nan", "config training.learning_rate=nan: expected a number > 0"),
        ("training.weight_decay=-1", "config training.weight_decay=-1.0: expected a number >= 0"),
        ("training.betas=[0.9,1.5]", "config training.betas=[0.9, 1.5]: expected two numbers in [0, 1)"),
        ("training.warmup_fraction=1", "config training.warmup_fraction=1.0: expected a fraction in [0, 1)"),
        ("checkpoint.best_mode=mean", "config checkpoint.best_mode='mean': expected min or max"),
        ("checkpoint.keep_last=-1", "config checkpoint.keep_last=-1: expected >= 0 (0: off)"),
        ("data.image_size=8", "config data.image_size=8: expected >= 16 pixels"),
        ("data.cache_workers=0", "config data.cache_workers=0: expected >= 1"),
        ("training.precision=fp16", "config training.precision='fp16': expected auto, bf16 or fp32"),
        ("training.grad_monitor_every=-1", "config training.grad_monitor_every=-1: expected >= 0 (0: off)"),
        ("training.loss_spike_factor=0.5", "config training.loss_spike_factor=0.5: expected > 1 (or 0 to disable)"),
        ("data.sequence_length=0", "config data.sequence_length=0: expected >= 1 (1: single frames)"),
        ("model.hidden_dim=30", "config model.hidden_dim=30: expected a multiple of 4, >= 4"),
        ("model.num_queries=0", "config model.num_queries=0: expected a whole number >= 1"),
        ("loss.hand_coarse=-1", "config loss.hand_coarse=-1.0: expected a number >= 0"),
        ("loss.confidence_scale_m=0", "config loss.confidence_scale_m=0.0: expected a length > 0 (metres)"),
        ("loss.focal_alpha=2", "config loss.focal_alpha=2.0: expected a number in [0, 1]"),
        ("loss.match.translation_weight=nan", "config loss.match.translation_weight=nan: expected a number >= 0"),
        ("training.ema.decay=1.5", "config training.ema.decay=1.5: expected a number in [0, 1]"),
        ("training.stages=[{name:a,start:0,lr_mult:-1}]", "config training.stages[a].lr_mult=-1.0: expected"),
        ("data.augment_params.scale=1.5", "config data.augment_params.scale=1.5: expected a number in [0, 0.99]"),
        ("data.augment_params.rotation_deg=-10", "config data.augment_params.rotation_deg=-10.0: expected"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override, expected, capsys):
    """`amt train` with a typo or an impossible value: exit 2 and one line, no traceback."""
    from amt.training.cli import train_main

    assert train_main(["--config-name", "tiny", override]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("amt train: ") and expected in err, err
    assert "\n" not in err and "Traceback" not in err and "search path" not in err
    assert captured.out == ""


def test_a_setting_refused_when_the_run_starts_is_one_line(tmp_path, capsys):
    """A value only the trainer checks (here: no data at all) is a ConfigError: one line, exit 2."""
    from amt.training.cli import train_main

    argv = ["--config-name", "tiny", "model.backbone_weights=none", f"training.output_dir={tmp_path / 'run'}"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "amt train: config: set data.root (a dataset folder read as data.format) or data.cache_dir (a built cache)"
    )


def test_a_model_for_other_crops_than_the_caches_is_refused_when_the_run_starts(tmp_path, capsys):
    from amt.training.cli import train_main

    argv = ["--config-name", "tiny", "model.image_size=96", f"training.output_dir={tmp_path / 'run'}"]
    assert train_main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "amt train: config model.image_size=96 but data.image_size=224: the model takes the cache's crops; "
        "set data.image_size (model.image_size follows it)"
    )
