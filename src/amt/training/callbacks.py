"""Trainer hooks (`Callback`, `StepInfo`) and the training aids built on them.

A callback receives the trainer object (typed `Any`: this module never imports the trainer)
and reads its public attributes: `model`, `cfg`, `ctx`, `step`, `epoch`, `stages`, `run_dir`.

Training aids, switched on from the run config:
- `GradientMonitor` (`training.grad_monitor_every=N`): every N optimizer steps, the gradient
  norm of each module (parameter names grouped to `training.grad_monitor_depth` components) is
  written to TensorBoard as `grad_norm/<module>` (rank 0). Norms are reported before clipping:
  clipping scales every gradient by the same factor, which is divided out.
- `LossSpikeGuard` (`training.loss_spike_factor=F`): a step whose loss exceeds F times the
  median of the last `training.loss_spike_window` accepted losses is skipped (no update),
  counted in the trainer's skipped steps and logged; the history restarts at each stage
  change, since stages rescale the loss terms. Non-finite losses and gradients are always
  skipped by the trainer itself.

`callbacks_from_config(cfg)` builds the enabled ones; the trainer adds them to its callbacks.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from amt.diagnostics.gradients import module_grad_norms
from amt.errors import ConfigError
from amt.training.loggers import open_summary_writer

log = logging.getLogger(__name__)

GRAD_EVENTS_SUFFIX = ".grad_monitor"
MIN_HISTORY = 5  # accepted losses needed before the spike guard judges


@dataclass
class StepInfo:
    """What one optimizer step did. `outputs`/`batch` are those of the step's last micro-batch."""

    step: int  # optimizer steps completed, this one included
    epoch: int
    stage: str
    loss: float  # mean over micro-batches of this rank
    terms: dict[str, float]
    lr: float  # head learning rate
    grad_norm: float | None  # global norm before clipping (None when not monitored)
    skipped: bool  # non-finite loss or gradient: no parameter update
    spread: float | None  # prediction_spread of the last micro-batch (logged steps only, else None)
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)
    batch: dict[str, Any] = field(repr=False, default_factory=dict)


class Callback:
    """Hooks for research tooling; override what you need. Called on every rank with the trainer."""

    def on_train_start(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any, info: StepInfo) -> None: ...

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Any) -> None: ...

    def skip_update(self, trainer: Any, loss: float, grad_norm: float | None) -> str | None:
        """Before the optimizer update of a finite step: a reason to skip it, or None."""
        return None


class GradientMonitor(Callback):
    """Per-module gradient norms every `every` steps to TensorBoard (and `last`)."""

    def __init__(self, every: int, depth: int = 2) -> None:
        self.every, self.depth = every, depth
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self._writer: Any = None

    def on_train_start(self, trainer: Any) -> None:
        if trainer.ctx.is_main and trainer.cfg.logging.tensorboard:
            # purge_step: on resume, drop events logged after the checkpoint (as the trainer's writer)
            self._writer = open_summary_writer(trainer.run_dir, trainer.step, filename_suffix=GRAD_EVENTS_SUFFIX)

    def on_step_end(self, trainer: Any, info: StepInfo) -> None:
        if info.skipped or info.step % self.every or not trainer.ctx.is_main:
            return
        norms = module_grad_norms(trainer.model, self.depth)
        clip = trainer.cfg.training.grad_clip
        if clip > 0 and info.grad_norm is not None and info.grad_norm > clip:
            scale = clip / (info.grad_norm + 1e-6)  # torch's clip_grad_norm_ coefficient
            norms = {k: v / scale for k, v in norms.items()}
        self.last, self.last_step = norms, info.step
        if self._writer is not None:
            for name, value in norms.items():
                self._writer.add_scalar(f"grad_norm/{name}", value, info.step)
        else:
            top = sorted(norms.items(), key=lambda kv: -kv[1])[:5]
            log.info("step %d grad norms: %s", info.step, ", ".join(f"{k}={v:.3g}" for k, v in top))

    def on_train_end(self, trainer: Any) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LossSpikeGuard(Callback):
    """Vetoes the update of a step whose loss exceeds `factor` x the running median."""

    def __init__(self, factor: float, window: int = 50) -> None:
        if factor <= 1.0:
            raise ConfigError(f"config training.loss_spike_factor={factor}: expected > 1 (or 0 to disable)")
        self.factor = factor
        self.history: deque[float] = deque(maxlen=window)
        self.spikes = 0
        self._stage: str | None = None

    def skip_update(self, trainer: Any, loss: float, grad_norm: float | None) -> str | None:
        stage = trainer.stages.stages[trainer.stages.index(trainer.step)].name
        if stage != self._stage:
            self._stage = stage
            self.history.clear()
        if len(self.history) >= MIN_HISTORY:
            median = statistics.median(self.history)
            if loss > self.factor * median:
                self.spikes += 1
                return f"loss spike {loss:.4g} > {self.factor:g} x median {median:.4g} of the last {len(self.history)}"
        self.history.append(loss)
        return None


def callbacks_from_config(cfg: Any) -> list[Callback]:
    """The training aids enabled in `cfg.training` (a `RunConfig`)."""
    t = cfg.training
    out: list[Callback] = []
    if getattr(t, "grad_monitor_every", 0):
        out.append(GradientMonitor(t.grad_monitor_every, t.grad_monitor_depth))
    if getattr(t, "loss_spike_factor", 0):
        out.append(LossSpikeGuard(t.loss_spike_factor, t.loss_spike_window))
    return out
