"""One writer per run folder: a second `amt train` into a folder another live process trains into
is refused with one line naming that process; the lock dies with its process (kill -9 included)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from amt.locks import LOCK_FILE, FolderLock, FolderLockedError
from amt.training.trainer import Trainer

HOLD = """
import sys, time
from amt.locks import FolderLock
FolderLock(sys.argv[1], "x").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_lock_is_refused_until_the_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf'{tmp_path}: the run is in use by another process \({{"pid": '):
            FolderLock(tmp_path, "the run").acquire()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases a dead process's lock
        holder.wait()
    lock = FolderLock(tmp_path, "the run")
    lock.acquire()
    lock.acquire()  # idempotent
    lock.release()
    lock.release()


def test_a_second_trainer_into_a_locked_run_folder_is_refused_and_writes_nothing(
    tmp_path: Path, tiny_run_config
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        trainer = Trainer(tiny_run_config(run, "training.batch_size=8", "training.max_steps=2"), evaluator=None)
        with pytest.raises(FolderLockedError, match="this run folder \\(training.output_dir\\) is in use"):
            trainer.fit()
        assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    trainer.fit()  # the holder gone: the same trainer runs
    assert (run / "checkpoints" / "last").is_dir()
