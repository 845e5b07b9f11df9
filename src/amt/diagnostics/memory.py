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
from typing import Any

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


def _measure(phase: str, device: torch.device, fn: Callable[[], Any]) -> tuple[Any, PhaseMemory]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        value = fn()
        torch.cuda.synchronize(device)
        return value, PhaseMemory(phase, "cuda_allocated", before, torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device))
    before = rss_bytes()
    with RSSSampler() as sampler:
        value = fn()
    return value, PhaseMemory(phase, "cpu_rss", before, sampler.peak, rss_bytes())


def profile_step_memory(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: Callable[[dict[str, Any], dict[str, Any]], Any],
    optimizer: torch.optim.Optimizer,
) -> dict[str, PhaseMemory]:
    """Run one training step (train mode) and measure each phase on the batch's device.

    loss_fn: (outputs, batch) -> total or (total, terms). Returns {"forward", "backward",
    "optimizer"} -> `PhaseMemory`. The optimizer does update the parameters.
    """
    device = batch["image"].device
    model.train()
    optimizer.zero_grad(set_to_none=True)

    def forward() -> torch.Tensor:
        total = loss_fn(model(batch), batch)
        return total[0] if isinstance(total, tuple) else total

    total, fwd = _measure("forward", device, forward)
    _, bwd = _measure("backward", device, total.backward)
    _, opt = _measure("optimizer", device, optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    return {p.phase: p for p in (fwd, bwd, opt)}
