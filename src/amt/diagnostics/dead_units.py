"""Dead-unit finder: forward hooks on leaf modules keep running per-unit statistics only.

A unit is one output channel of a module: the channel axis (1) of a Conv2d output, the last axis
of anything else (Linear, activation, norm outputs of shape (..., C)). Per unit the scanner keeps
count, min, max, sum and sum of squares (float64 tensors of shape (C,)), so memory is flat in the
number of batches: nothing per sample is stored.

Rule (documented thresholds): a unit is dead when its output is constant over every sample and
position seen, max - min <= `DEAD_RANGE` (1e-6; covers ReLUs that never fire and layers whose
weights collapsed to zero). A layer is flagged when at least `LAYER_DEAD_FRACTION` (0.5) of its
units are dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from amt.data.loaders import batch_to_device

log = logging.getLogger(__name__)

DEAD_RANGE = 1e-6
LAYER_DEAD_FRACTION = 0.5
SKIPPED_TYPES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Identity)


class UnitStats:
    """Running count, min, max, sum, sum of squares per unit; `update(rows (n, C))`.

    The statistics live on the device of the first rows (no host sync per batch); min/max in
    the rows' precision (exact), sums accumulated in float64.
    """

    def __init__(self, units: int, device: torch.device | str = "cpu") -> None:
        self.units = units
        self.count = 0
        self.min = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self.max = torch.full((units,), float("-inf"), dtype=torch.float64, device=device)
        self.sum = torch.zeros(units, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(units, dtype=torch.float64, device=device)

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(self.sum.device)
        self.count += rows.shape[0]
        lo, hi = torch.aminmax(rows, dim=0)
        torch.minimum(self.min, lo.double(), out=self.min)
        torch.maximum(self.max, hi.double(), out=self.max)
        self.sum += rows.sum(0, dtype=torch.float64)
        self.sumsq += rows.square().sum(0, dtype=torch.float64)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.min, self.max, self.sum, self.sumsq))


@dataclass
class LayerUnits:
    """Scan result of one module: how many of its units are dead, and whether it is flagged."""

    name: str
    type: str
    units: int
    dead: int
    dead_fraction: float
    flagged: bool
    rows: int  # samples x positions seen
    mean_activation: float
    dead_indices: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unit_rows(module: nn.Module, output: torch.Tensor) -> torch.Tensor | None:
    """(n, C) rows of one output: channel axis 1 for convolutions, else the last axis."""
    if output.dim() < 2:
        return None
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        output = output.movedim(1, -1)
    return output.reshape(-1, output.shape[-1])


class DeadUnitScanner:
    """Context manager: hooks every selected leaf module of `model`, accumulating `UnitStats`.

    select: `(name, module) -> bool`; default every leaf module except Dropout/Identity.
    Use: `with DeadUnitScanner(model) as scan: model(batch) ...; layers = scan.result()`.
    """

    def __init__(self, model: nn.Module, select: Callable[[str, nn.Module], bool] | None = None) -> None:
        self.model = model
        self.select = select or (lambda _n, m: not any(True for _ in m.children()) and not isinstance(m, SKIPPED_TYPES))
        self.stats: dict[str, UnitStats] = {}
        self.types: dict[str, str] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order: list[str] = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return
            rows = _unit_rows(module, output)
            if rows is None:
                return
            stats = self.stats.get(name)
            if stats is None:
                stats = self.stats[name] = UnitStats(rows.shape[1], rows.device)
                self.types[name] = type(module).__name__
            elif stats.units != rows.shape[1]:
                log.debug("%s: unit count changed (%d -> %d), batch ignored", name, stats.units, rows.shape[1])
                return
            stats.update(rows)

        return hook

    def __enter__(self) -> DeadUnitScanner:
        for name, module in self.model.named_modules():
            if name and self.select(name, module):
                self._order.append(name)
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def state_bytes(self) -> int:
        """Bytes held by the running statistics (constant once every module has been seen)."""
        return sum(s.nbytes() for s in self.stats.values())

    def result(self, dead_range: float = DEAD_RANGE, layer_fraction: float = LAYER_DEAD_FRACTION) -> list[LayerUnits]:
        """One `LayerUnits` per hooked module that produced output, in module order."""
        out = []
        for name in self._order:
            s = self.stats.get(name)
            if s is None or s.count == 0:
                continue
            dead = ((s.max - s.min) <= dead_range).cpu()
            n_dead = int(dead.sum())
            fraction = n_dead / s.units
            out.append(
                LayerUnits(
                    name=name,
                    type=self.types[name],
                    units=s.units,
                    dead=n_dead,
                    dead_fraction=fraction,
                    flagged=fraction >= layer_fraction,
                    rows=s.count,
                    mean_activation=float(s.sum.sum()) / (s.count * s.units),
                    dead_indices=torch.nonzero(dead).flatten().tolist()[:64],
                )
            )
        return out


@torch.no_grad()
def find_dead_units(
    model: nn.Module,
    batches: Iterable[Any],
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    select: Callable[[str, nn.Module], bool] | None = None,
    dead_range: float = DEAD_RANGE,
    layer_fraction: float = LAYER_DEAD_FRACTION,
) -> list[LayerUnits]:
    """Scan `model` (eval mode) over `batches` (dicts moved to `device`, or tensors) and return
    per-layer dead-unit counts; flagged layers are logged by name."""
    model.eval()
    with DeadUnitScanner(model, select) as scan:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(batch_to_device(batch, device) if isinstance(batch, dict) else batch.to(device))
    layers = scan.result(dead_range, layer_fraction)
    for layer in layers:
        if layer.flagged:
            log.warning("layer %s (%s): %d of %d units dead", layer.name, layer.type, layer.dead, layer.units)
    return layers
