"""Checkpoint retention and full disks (issue 15, item 5): `checkpoint.keep_last` prunes the
periodic folders but never one `best` or `last` names; a save checks the free space first and a
disk that fills up mid-write leaves the previous checkpoints intact and no partial folder."""

from __future__ import annotations

import errno
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

import amt.checkpoint as checkpoint_module
from amt.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    folder_bytes,
    is_complete,
    newest_checkpoint,
    point_alias,
    prune_checkpoints,
    write_checkpoint,
)
from amt.training.checkpointing import checkpoint_estimate
from amt.training.trainer import Trainer

Usage = namedtuple("Usage", "total used free")


class TinyModel(nn.Module):
    """Stands in for AMT in `write_checkpoint`: one weight file."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(6.0))

    def save_pretrained(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.bin").write_bytes(self.w.detach().numpy().tobytes())


def _save(checkpoints: Path, step: int, keep: bool = True, needed: int = 0) -> Path:
    state = {"model": {"w": torch.full((4,), float(step))}, "step": step}
    return write_checkpoint(checkpoints / f"step_{step:06d}", TinyModel(), "a: 1\n", state, step, keep, needed)


def _entries(checkpoints: Path) -> set[str]:
    return {p.name for p in checkpoints.iterdir()}


def test_keep_last_prunes_old_periodic_folders_but_never_best_or_last(tmp_path):
    checkpoints = tmp_path / CHECKPOINTS
    for step in range(1, 7):
        _save(checkpoints, step)
        point_alias(checkpoints, f"epoch_{step:04d}", f"step_{step:06d}")
    point_alias(checkpoints, "best", "step_000002")
    point_alias(checkpoints, "last", "step_000006")
    _save(checkpoints, 7, keep=False)  # a timed save nobody names: goes
    deleted = prune_checkpoints(checkpoints, keep_last=2)
    assert sorted(deleted) == ["step_000001", "step_000003", "step_000004", "step_000007"]
    assert _entries(checkpoints) == {
        "step_000002", "step_000005", "step_000006", "best", "last", "epoch_0002", "epoch_0005", "epoch_0006",
    }  # fmt: skip
    for link in checkpoints.iterdir():  # no name is left dangling, every folder left is complete
        assert is_complete(link.resolve()), link
    assert prune_checkpoints(checkpoints, keep_last=0) == []  # 0: keep every periodic folder


def test_trainer_keeps_the_last_two_and_logs_the_size(tmp_path, tiny_run_config, caplog):
    run = tmp_path / "run"
    cfg = tiny_run_config(run, "training.batch_size=8", "training.max_steps=5", "checkpoint.every_steps=1")
    assert cfg.checkpoint.keep_last == 2  # the default
    with caplog.at_level(logging.INFO, logger="amt.training.checkpointing"):
        Trainer(cfg, evaluator=None).fit()
    folders = {p.name for p in (run / CHECKPOINTS).iterdir() if not p.is_symlink()}
    assert folders == {"step_000003", "step_000004", "step_000005"}  # 2 periodic + the final (`last`)
    assert (run / CHECKPOINTS / "last").resolve().name == "step_000005"
    assert any("MB)" in r.getMessage() and "saved checkpoint" in r.getMessage() for r in caplog.records)


def test_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    checkpoints = tmp_path / CHECKPOINTS
    first = _save(checkpoints, 1)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    need = checkpoint_estimate(checkpoints, {}, TinyModel())
    assert need == folder_bytes(first) > 0  # estimated from the previous checkpoint
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - need // 2, need // 2))
    with pytest.raises(CheckpointError, match="GB free, a checkpoint needs about"):
        _save(checkpoints, 2, needed=need)
    assert _entries(checkpoints) == {"step_000001"}  # no partial folder
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before and is_complete(first)


def test_enospc_in_a_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    checkpoints = tmp_path / CHECKPOINTS
    first = _save(checkpoints, 1)
    point_alias(checkpoints, "last", first.name)
    real_save_file = checkpoint_module.save_file

    def fill_the_disk(tensors, path):
        real_save_file(tensors, path)
        with open(path, "r+b") as f:  # a half-written file, then the disk is full
            f.truncate(8)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(checkpoint_module, "save_file", fill_the_disk)
    with pytest.raises(CheckpointError, match="the disk is full"):
        _save(checkpoints, 2)
    assert _entries(checkpoints) == {"step_000001", "last"}
    assert newest_checkpoint(checkpoints) == first and (checkpoints / "last").resolve() == first.resolve()


def test_the_trainer_stops_on_a_full_disk_with_its_last_checkpoint_intact(tmp_path, tiny_run_config, monkeypatch):
    run = tmp_path / "run"
    common = ["training.batch_size=8", "checkpoint.every_steps=1"]
    Trainer(tiny_run_config(run, *common, "training.max_steps=1"), evaluator=None).fit()
    first = newest_checkpoint(run / CHECKPOINTS)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
    trainer = Trainer(tiny_run_config(run, *common, "training.max_steps=2"), evaluator=None)  # resumes at 1
    with pytest.raises(CheckpointError, match="nothing was written"):
        trainer.fit()
    assert newest_checkpoint(run / CHECKPOINTS) == first and is_complete(first)
    assert not list((run / CHECKPOINTS).glob("*.tmp"))


def test_a_checkpoint_holding_a_users_files_is_never_pruned(tmp_path, caplog):
    """`amt eval CKPT` writes its report into CKPT/eval_<split> by default and `amt export` its
    model into CKPT: keep_last used to delete them with the folder, silently."""
    checkpoints = tmp_path / CHECKPOINTS
    for step in range(1, 4):
        _save(checkpoints, step)
    point_alias(checkpoints, "last", "step_000003")
    (checkpoints / "step_000001" / "eval_s0_test").mkdir()
    (checkpoints / "step_000001" / "eval_s0_test" / "report.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert prune_checkpoints(checkpoints, keep_last=1) == ["step_000002"]
    assert (checkpoints / "step_000001" / "eval_s0_test" / "report.json").read_text() == "{}"
    assert "step_000001: left in place although no longer kept: it holds files the trainer did not write" in caplog.text
    assert "eval_s0_test" in caplog.text
