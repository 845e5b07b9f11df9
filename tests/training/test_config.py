"""Hydra composition of src/amt/config and its validation against the typed configs."""

from __future__ import annotations

import dataclasses

import pytest
from hydra.errors import ConfigCompositionException

from amt.models.config import ModelConfig, make_config
from amt.training.config import RunConfig, StageConfig, TrainingConfig, build_loss_config, compose
from amt.training.losses import TERM_NAMES, LossConfig


def test_overrides_reach_the_dataclasses():
    cfg = RunConfig.from_omegaconf(
        compose(
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
    )
    assert isinstance(cfg.training, TrainingConfig)
    assert cfg.training.batch_size == 64
    assert cfg.training.learning_rate == pytest.approx(5e-4)
    assert cfg.checkpoint.resume_from == "/runs/a/checkpoints/last"
    assert cfg.data.root == "/data/dexycb"
    assert all(isinstance(s, StageConfig) for s in cfg.training.stages)
    # model: the preset plus only what was set explicitly
    assert cfg.model == {"preset": "vitl14", "hidden_dim": 768}
    model_cfg = make_config(cfg.model["preset"], **{k: v for k, v in cfg.model.items() if k != "preset"})
    assert model_cfg.hidden_dim == 768 and model_cfg.backbone_layers == 24
    loss_cfg = build_loss_config(cfg.loss)
    assert isinstance(loss_cfg, LossConfig) and loss_cfg.diversity == 0.5
    assert loss_cfg.hand_coarse == LossConfig().hand_coarse


def test_default_is_the_paper_setup_and_tiny_is_selected_by_config_name():
    default = RunConfig.from_omegaconf(compose("config"))
    tiny = RunConfig.from_omegaconf(compose("tiny"))
    assert default.model["preset"] == "vitl14"
    assert [s.name for s in default.training.stages] == ["coarse", "refine", "finetune"]
    assert tiny.model["preset"] == "tiny"
    assert tiny.training.precision == "fp32"
    assert tiny.training.output_dir == "runs/tiny"  # ${experiment_name} resolved


def test_experiment_paper_composes():
    cfg = RunConfig.from_omegaconf(compose("tiny", ["experiment=paper"]))
    assert cfg.experiment_name == "paper"
    assert cfg.model["preset"] == "vitl14" and cfg.model["hidden_dim"] == 1024
    assert cfg.training.output_dir == "runs/paper"
    # a command-line override still wins over the experiment file
    cfg = RunConfig.from_omegaconf(compose("config", ["experiment=paper", "model.hidden_dim=768"]))
    assert cfg.model["hidden_dim"] == 768


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


@pytest.mark.parametrize("name", ["config", "tiny"])
def test_stage_multipliers_name_real_loss_terms(name):
    cfg = RunConfig.from_omegaconf(compose(name))
    for stage in cfg.training.stages:
        assert set(stage.loss_multipliers) <= set(TERM_NAMES), stage.name


def test_cli_cfg_prints_the_resolved_config(capsys):
    from amt.training.cli import train_main

    assert train_main(["--config-name", "tiny", "--cfg", "training.batch_size=8", "data.root=/d"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 8" in out and "root: /d" in out and "output_dir: runs/tiny" in out
