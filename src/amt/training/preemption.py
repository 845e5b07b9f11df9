"""Stopping a run cleanly: SIGTERM / SIGUSR1 and the time since the last checkpoint.

Schedulers (SLURM, Kubernetes, cloud spot instances) send SIGTERM, or a configured signal such
as SIGUSR1, some time before they kill a job. `StopSignals` turns those signals into a flag; at
the next step boundary the trainer asks `SaveClock.poll`, which agrees across ranks (one
all-reduce of two flags: signal seen on any rank, `checkpoint.every_minutes` elapsed on rank 0),
so every rank saves the same step. After a signal-triggered save `Trainer.fit` raises
`TrainingPreempted` and `amt train` exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL of sysexits.h:
"try again later"), which a job script can use to requeue.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from amt.training.distributed import DistContext

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # `amt train` after a SIGTERM / SIGUSR1 save (EX_TEMPFAIL)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingPreempted(Exception):
    """Raised by `Trainer.fit` after the checkpoint a stop signal asked for; resume continues it."""

    def __init__(self, step: int, checkpoint: Path, signal_name: str) -> None:
        super().__init__(f"{signal_name}: saved {checkpoint} at step {step}; resume continues from there")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class StopSignals:
    """Between `install` and `restore`, SIGTERM and SIGUSR1 set `received` (the signal's name)
    instead of ending the process. Outside the main thread (where Python cannot install
    handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the next step boundary, then exiting", self.received)

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put the handlers back that were there before `install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class SaveClock:
    """When to save besides the configured steps and epochs: `every_minutes` after the last save
    (0: never) and at a stop signal. `poll` must be called by every rank at every step boundary."""

    def __init__(self, every_minutes: float, ctx: DistContext, signals: StopSignals) -> None:
        self.every_s = 60.0 * every_minutes
        self.ctx, self.signals = ctx, signals
        self.last_save = time.monotonic()

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def poll(self) -> tuple[bool, bool]:
        """(stop signal seen on any rank, save due by time on rank 0's clock), equal on every rank."""
        due = self.ctx.is_main and self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        flags = [float(self.signals.received is not None), float(due)]
        if self.ctx.enabled:
            t = torch.tensor(flags, device=self.ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
        return flags[0] > 0, flags[1] > 0
