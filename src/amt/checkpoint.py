"""Checkpoint folders: their file names, loading a model from one, and writing one atomically.

A checkpoint folder (`<run>/checkpoints/<name>`, name = last | best | epoch_0005 | step_001000):

    config.yaml          model config   } `AMT.save_pretrained`; the weights are the EMA weights
    model.safetensors    model weights  } when the run used EMA (those evaluated)
    train_config.yaml    the resolved run config
    trainer.pt           raw model weights, optimizer, scheduler, EMA, loss state, RNG states of
                         every rank, step/epoch/data position, resolved config (`torch.save`)

A folder is written as `<name>.tmp` and renamed into place (`replace_folder`), so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from amt.models import AMT
from amt.models.amt import CONFIG_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train_config.yaml"
CHECKPOINTS = "checkpoints"  # the run folder's sub-folder holding the checkpoint folders

__all__ = [
    "CHECKPOINTS",
    "CONFIG_FILE",
    "TRAINER_STATE",
    "TRAIN_CONFIG",
    "WEIGHTS_FILE",
    "CheckpointError",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_trainer_state",
    "replace_folder",
    "write_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing or cannot be loaded; the message names the path and the problem."""


def load_model(path: str | Path) -> nn.Module:
    """`AMT.from_pretrained(path)` (the saved weights: EMA when the run used it), with an error
    that names the path when it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path}: no such file or folder (expected a folder with config.yaml and model.safetensors)"
        )
    try:
        return AMT.from_pretrained(path)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded: {type(exc).__name__}: {exc}") from exc


def load_checkpoint(folder: str | Path, use_ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Model from a checkpoint folder (config.yaml + model.safetensors [+ trainer.pt]) and what it holds.

    The trainer saves the EMA weights (the evaluated ones) as model.safetensors when EMA is on;
    `use_ema=False` loads the raw weights from trainer.pt (key "model") instead. Returns
    (model, {"model": model config dict, "weights": "ema" | "raw" | "saved", "train": run config
    or None}).
    """
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path / name}: missing; a checkpoint folder holds config.yaml and model.safetensors"
            )
    model = load_model(path)
    weights = "saved"
    if (path / TRAINER_STATE).is_file():
        state = load_trainer_state(path, mmap=True)
        weights = "ema" if state.get("ema") is not None else "raw"
        if not use_ema and state.get("ema") is not None:
            model.load_state_dict(state["model"], strict=True)
            weights = "raw"
    train_config = path / TRAIN_CONFIG
    try:
        config = {
            "model": yaml.safe_load((path / CONFIG_FILE).read_text()),
            "weights": weights,
            "train": yaml.safe_load(train_config.read_text()) if train_config.is_file() else None,
        }
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: a config file is not valid YAML ({exc})") from exc
    log.info("%s: loaded the %s weights", path, weights)
    return model, config


def load_trainer_state(folder: Path, mmap: bool = False) -> dict[str, Any]:
    """The dict of `folder`/trainer.pt on the CPU (mmap: tensors read lazily from the file)."""
    path = folder / TRAINER_STATE
    try:
        # weights_only=False: trainer.pt holds numpy/python RNG states next to the tensors; it is our own file.
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the trainer state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: expected a dict with key 'model' (the trainer's checkpoint state)")
    return state


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (holding trainer.pt) from a checkpoint or run folder path."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINTS / "last"):
        if (candidate / TRAINER_STATE).exists():
            return candidate
    raise FileNotFoundError(
        f"checkpoint.resume_from={path}: no {TRAINER_STATE} there nor in {path / CHECKPOINTS / 'last'}"
    )


def replace_folder(tmp: Path, final: Path) -> None:
    """Move a fully written `tmp` folder to `final`, replacing an older checkpoint there."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def write_checkpoint(folder: Path, model: nn.Module, train_config_yaml: str, trainer_state: dict[str, Any]) -> Path:
    """Write `folder` atomically: `model.save_pretrained`, train_config.yaml and trainer.pt."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    (tmp / TRAIN_CONFIG).write_text(train_config_yaml)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    replace_folder(tmp, folder)
    return folder
