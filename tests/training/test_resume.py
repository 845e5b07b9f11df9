"""Exact resume (N steps == N/2 + resume + N/2, bit-identical on CPU), the checkpoint folder
format, and the refusal to reuse a user's run folder."""

from __future__ import annotations

import pytest
import torch

from amt.checkpoint import COMPLETE, TRAINER_JSON, TRAINER_TENSORS, is_complete, load_trainer_state
from amt.models import AMT
from amt.training.trainer import Trainer


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:10]}"


def test_resume_is_bit_identical(tmp_path, tiny_run_config):
    # 16 samples, global batch 8 -> 2 steps per epoch; 6 steps cross 3 epochs, the checkpoint at
    # step 3 sits mid-epoch. Augmentation on: its RNG must be a function of (seed, step).
    common = ["training.batch_size=8", "training.max_steps=6", "data.augment=true", "checkpoint.every_steps=3"]
    full = Trainer(tiny_run_config(tmp_path / "full", *common), evaluator=None)
    full.fit()
    checkpoint = tmp_path / "full" / "checkpoints" / "step_000003"
    assert is_complete(checkpoint)

    resumed = Trainer(
        tiny_run_config(tmp_path / "resumed", *common, f"checkpoint.resume_from={checkpoint}"), evaluator=None
    )
    assert resumed.step == 3
    resumed.fit()
    assert resumed.step == full.step == 6
    _assert_same_tensors(full.model.state_dict(), resumed.model.state_dict())
    _assert_same_tensors(full.ema.state_dict(), resumed.ema.state_dict())
    assert full.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def test_checkpoint_folder_loads_without_the_trainer(tmp_path, tiny_run_config):
    trainer = Trainer(
        tiny_run_config(tmp_path / "run", "training.batch_size=16", "training.max_steps=1"), evaluator=None
    )
    trainer.fit()
    last = tmp_path / "run" / "checkpoints" / "last"
    assert last.is_symlink() and last.resolve().name == "step_000001"  # `last` names the newest step folder
    names = {p.name for p in last.iterdir()}
    assert {"config.yaml", "model.safetensors", TRAINER_TENSORS, TRAINER_JSON, COMPLETE, "train_config.yaml"} == names
    assert (tmp_path / "run" / "config.yaml").exists()
    # model.safetensors holds the evaluation (EMA) weights
    loaded = AMT.from_pretrained(last)
    _assert_same_tensors(trainer.eval_model.state_dict(), loaded.state_dict())
    state = load_trainer_state(last)  # no pickle: safetensors + JSON
    assert {"model", "optimizer", "scheduler", "ema", "rng", "step", "epoch", "data_position", "config"} <= set(state)
    assert {"torch", "numpy", "python"} <= set(state["rng"][0])
    assert state["config"]["training"]["batch_size"] == 16


def test_refuses_to_reuse_a_non_empty_run_folder(tmp_path, tiny_run_config):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="training.overwrite"):  # resume_from=auto finds no run there
        Trainer(tiny_run_config(out), evaluator=None)
    Trainer(tiny_run_config(out, "training.overwrite=true"), evaluator=None)
    assert (out / "notes.txt").read_text() == "user data"
