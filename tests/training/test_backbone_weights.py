"""Pretrained backbone by default, never a random one by accident: the ViT presets name their
official DINOv2 weights, `amt train` stops before any work when they cannot be had, and random
initialisation needs an explicit `model.backbone_weights=none` that the log and config record."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from transformers import Dinov2Model

from amt.models import build_model, make_config
from amt.models.backbone import BackboneWeightsError, check_backbone_weights, dinov2_config
from amt.training.cli import train_main
from amt.training.trainer import train

# a small network under a ViT preset's name (the preset's weights, grid and LayerScale stay)
SMALL = dict(
    backbone_hidden=64,
    backbone_layers=4,
    backbone_heads=4,
    hidden_dim=64,
    num_heads=4,
    decoder_layers=1,
    freeze_blocks=2,
)
SMALL_OVERRIDES = [f"model.{k}={v}" for k, v in SMALL.items()]
HUB = {"vits14": "facebook/dinov2-small", "vitb14": "facebook/dinov2-base", "vitl14": "facebook/dinov2-large"}


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache and HF_HUB_OFFLINE=1: hub ids cannot be had."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_vit_presets_default_to_official_dinov2_and_builders_do_not_fetch(no_hub: Path) -> None:
    for preset, hub_id in {**HUB, "vitg14": "facebook/dinov2-giant"}.items():
        assert make_config(preset).backbone_weights == hub_id
    assert make_config("tiny").backbone_weights is None
    # build_model (tests, amt bench) builds a random model from the preset without the network
    model = build_model("vits14", **SMALL)
    assert model.config.backbone_weights == "facebook/dinov2-small"
    with pytest.raises(BackboneWeightsError, match="model.backbone_weights"):
        build_model("vits14", load_backbone_weights=True, **SMALL)


def test_amt_train_without_reachable_weights_stops_before_any_work(
    no_hub: Path, tmp_path: Path, tiny_train_root: Path, capsys: pytest.CaptureFixture
) -> None:
    cache_dir, out = tmp_path / "cache", tmp_path / "run"
    argv = [
        "--config-name", "tiny", "model=vits14", *SMALL_OVERRIDES,
        f"data.root={tiny_train_root}", "data.split=s1_val", "data.val_split=null", f"data.cache_dir={cache_dir}",
        "data.image_size=56", "model.image_size=56", "training.device=cpu", f"training.output_dir={out}",
    ]  # fmt: skip
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # the one line, no traceback
    assert "model.backbone_weights=facebook/dinov2-small" in err
    for way in ("HF_HUB_OFFLINE=1", ".pth", "Hugging Face folder", "model.backbone_weights=none"):
        assert way in err, way
    assert not cache_dir.exists()  # stopped before building the data cache


def test_unreachable_hub_is_refused_quickly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BackboneWeightsError, match=r"127\.0\.0\.1:9 is unreachable"):
        check_backbone_weights("facebook/dinov2-large")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        check_backbone_weights(str(tmp_path / "dinov2_vitl14_pretrain.pth"))
    with pytest.raises(BackboneWeightsError, match="config.json missing"):
        check_backbone_weights(str(tmp_path))
    check_backbone_weights(None)
    check_backbone_weights("none")


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE=1", "hub unreachable"])
def test_hub_id_loads_from_the_hf_cache_offline(no_hub: Path, monkeypatch: pytest.MonkeyPatch, offline: str) -> None:
    """A hub id whose files sit in the HF cache loads with HF_HUB_OFFLINE=1, and without it when
    the hub cannot be reached (no network)."""
    if offline == "HF_HUB_OFFLINE=1":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
    cfg = make_config("vits14", **SMALL)
    torch.manual_seed(0)
    source = Dinov2Model(dinov2_config(cfg))
    commit = "0" * 40
    repo = no_hub / "models--facebook--dinov2-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    source.save_pretrained(repo / "snapshots" / commit)
    check_backbone_weights("facebook/dinov2-small")
    model = build_model("vits14", load_backbone_weights=True, **SMALL)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.model.state_dict()[key], value), key


def test_explicit_none_trains_from_random_init_and_is_recorded(
    no_hub: Path, tmp_path: Path, tiny_run_config, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_run_config(
        tmp_path / "run", "model=vits14", "model.backbone_weights=none", *SMALL_OVERRIDES,
        "training.batch_size=8", "training.max_steps=1",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trainer = train(cfg, evaluator=None)
    assert trainer.step == 1
    assert "model.backbone_weights=none" in caplog.text and "random initialisation" in caplog.text
    run_config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run_config["model"]["backbone_weights"] == "none"
    model_config = yaml.safe_load((tmp_path / "run" / "checkpoints" / "last" / "config.yaml").read_text())
    assert model_config["backbone_weights"] == "none" and model_config["preset"] == "vits14"
