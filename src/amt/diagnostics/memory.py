"""Memory profile of one training step, per phase (forward, backward, optimizer).

On CUDA: the allocator's peak (`torch.cuda.max_memory_allocated`, reset before each phase) and
the allocated bytes after it. On CPU: the process resident set size (RSS, from
/proc/self/statm), sampled every `interval_s` by a background thread during the phase for its
peak, and read after it. Bytes throughout.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

_STATM = Path("/proc/self/statm")


def rss_bytes() -> int:
    """Current resident set size of this process (bytes); the lifetime peak where /proc is absent."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class RSSSampler:
    """Context manager sampling RSS every `interval_s` in a thread; `peak` after exit (bytes)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@dataclass
class PhaseMemory:
    """One phase: `before`/`after` bytes (CUDA allocated or RSS), `peak` bytes during it, and
    `kind` ("cuda_allocated" or "cpu_rss")."""

    phase: str
    kind: str
    before: int
    peak: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}


def measure_phase(phase: str, device: torch.device, fn: Callable[[], Any]) -> tuple[Any, PhaseMemory]:
    """Run `fn()` and measure its memory on `device`; returns (its value, the `PhaseMemory`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        value = fn()
        torch.cuda.synchronize(device)
        return value, PhaseMemory(
            phase,
            "cuda_allocated",
            before,
            torch.cuda.max_memory_allocated(device),
            torch.cuda.memory_allocated(device),
        )
    before = rss_bytes()
    with RSSSampler() as sampler:
        value = fn()
    return value, PhaseMemory(phase, "cpu_rss", before, sampler.peak, rss_bytes())


class SteppableModel(Protocol):
    """One training step split into its phases; `amt.training.step.TrainStep` is one (this
    package sits below training, so the step is passed in, not imported)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any, Any]:
        """(total loss, terms, outputs) of one batch."""
        ...


def profile_step_memory(step: SteppableModel, batch: dict[str, Any]) -> dict[str, PhaseMemory]:
    """Run one training step of `step` (train mode) on `batch` and measure each phase on the
    batch's device. Returns {"forward", "backward", "optimizer"} -> `PhaseMemory`. The
    optimizer does update the parameters."""
    device = batch["image"].device
    step.model.train()
    step.optimizer.zero_grad(set_to_none=True)
    total, fwd = measure_phase("forward", device, lambda: step.forward(batch)[0])
    _, bwd = measure_phase("backward", device, total.backward)
    _, opt = measure_phase("optimizer", device, step.optimizer.step)
    step.optimizer.zero_grad(set_to_none=True)
    return {p.phase: p for p in (fwd, bwd, opt)}
