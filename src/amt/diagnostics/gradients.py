"""Gradient health: per-module gradient norms, and where a NaN/Inf first appears.

- `module_grad_norms(model, depth)`: L2 norm of the gradients of each module (parameters grouped
  by the first `depth` components of their dotted name), after `backward()`.
- `NonFiniteTracer`: forward hooks on every module check its outputs; the first module, in
  execution order, whose output holds a NaN or Inf is the one that produced it (children run,
  and so report, before their parents).
- `trace_non_finite(model, batch, loss_fn)`: one forward (traced) and, when a loss function is
  given, one backward under `torch.autograd.detect_anomaly`, whose error names the backward op
  that produced a NaN; parameters left with non-finite gradients are listed in module order.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def module_grad_norms(model: nn.Module, depth: int = 2) -> dict[str, float]:
    """{module prefix: L2 norm of its parameters' gradients} for parameters holding a gradient.

    depth: how many components of the parameter name form the module key ("hand.mlp.0.weight"
    at depth 2 -> "hand.mlp"). Norms may be NaN/Inf when the gradients are.
    """
    squares: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")[:-1] or [name]
        key = ".".join(parts[:depth])
        value = p.grad.detach().float().pow(2).sum()
        squares[key] = squares[key] + value if key in squares else value
    return {k: float(v.sqrt()) for k, v in squares.items()}


def _first_non_finite(value: Any) -> str | None:
    """'nan' / 'inf' for the first floating tensor (nested in tuples, lists, dicts) holding one."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            if torch.isnan(value).any():
                return "nan"
            if torch.isinf(value).any():
                return "inf"
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        kind = _first_non_finite(item)
        if kind is not None:
            return kind
    return None


class NonFiniteTracer:
    """Context manager recording the first module (execution order) whose output is non-finite.

    After the forward: `first` is (module name, "nan" | "inf") or None; `order` lists the names
    of the modules in the order they finished their forward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.first: tuple[str, str] | None = None
        self.order: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.order.append(name)
            if self.first is None:
                kind = _first_non_finite(output)
                if kind is not None:
                    self.first = (name, kind)

        return hook

    def __enter__(self) -> NonFiniteTracer:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name or "<model>")))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class NonFiniteReport:
    """Where non-finite values appeared. forward_module: first module with a NaN/Inf output
    (None if the forward is finite); loss: the loss value (None without a loss function);
    anomaly: the message of autograd's anomaly detection (None if the backward was finite);
    nonfinite_grads: parameter names with NaN/Inf gradients, model order (first 20)."""

    forward_module: str | None
    forward_kind: str | None
    loss: float | None = None
    anomaly: str | None = None
    nonfinite_grads: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.forward_module is None and self.anomaly is None and not self.nonfinite_grads

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def trace_non_finite(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
) -> NonFiniteReport:
    """Forward `batch` through `model` with the tracer; with `loss_fn` ((outputs, batch) ->
    total or (total, terms)) also run the backward under anomaly detection. Gradients are left
    in the parameters' `.grad` (call `model.zero_grad()` afterwards if needed)."""
    with NonFiniteTracer(model) as tracer:
        outputs = model(batch)
    report = NonFiniteReport(*(tracer.first or (None, None)))
    if report.forward_module is not None:
        log.warning("first non-finite forward output: %s (%s)", *tracer.first)
    if loss_fn is None:
        return report
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
        anomaly = torch.autograd.detect_anomaly(check_nan=True)
    with anomaly:
        outputs = model(batch)
        total = loss_fn(outputs, batch)
        total = total[0] if isinstance(total, tuple) else total
        report.loss = float(total.detach())
        try:
            total.backward()
        except RuntimeError as exc:
            report.anomaly = str(exc).splitlines()[0]
            log.warning("anomaly detection in the backward: %s", report.anomaly)
    report.nonfinite_grads = [
        n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
    ][:20]
    if not math.isfinite(report.loss) and report.anomaly is None:
        report.anomaly = f"the loss itself is {report.loss}"
    return report
