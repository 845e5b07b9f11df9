"""The training step: forward + loss + backward for one optimizer step, in one place.

Used by the trainer, the batch-size probe (`training.batch_size=auto`), `amt bench --train`
and the memory profile of `amt debug`, so that all of them measure the same computation:
the forward under autocast (bf16 when asked), the outputs cast back to float32 and the loss
computed in float32, gradients accumulated over micro-batches (each loss divided by their
number; DDP synchronises on the last only), then the global gradient norm (clipped when
`grad_clip > 0`) and the non-finite check. The optimizer update stays with the caller (the
trainer may skip it); calling a `TrainStep` on one batch is the plain step with its update.

Non-finite handling: a step is bad when the loss, any floating model output (a NaN in a head
whose term happens to be masked or weighted 0 still means the weights have gone bad) or the
gradient norm is not finite, on any rank (the flag is all-reduced, so every rank takes the same
decision and none waits in a collective the others skipped). The backward still runs on a bad
step, so DDP's gradient all-reduce happens on every rank alike; the caller skips the update.
The loss never raises on NaN outputs (`amt.training.losses`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from amt.training.distributed import DistContext, any_rank

LossFn = Callable[[Any, dict[str, Any]], Any]  # (outputs, batch) -> total or (total, {name: term})


def to_float32(x: Any) -> Any:
    """Floating tensors (nested in dicts/lists) to float32: losses run in fp32 after autocast."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float32(v) for v in x)
    return x


def outputs_finite(outputs: Any) -> bool:
    """True when every floating tensor in `outputs` (nested dicts / lists) is finite; one
    device-to-host synchronisation for all of them."""
    flags: list[torch.Tensor] = []

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.numel():
                flags.append(torch.isfinite(x.detach()).all())
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(outputs)
    return bool(torch.stack(flags).all()) if flags else True


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """`training.precision` (auto | bf16 | fp32) -> the autocast dtype (None: no autocast).
    auto is bf16 on CUDA, fp32 elsewhere."""
    precision = precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"config training.precision: {precision!r}; expected auto, bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else None


@dataclass
class StepResult:
    """What forward + backward of one optimizer step gave. `outputs`/`batch` are the last micro-batch's."""

    loss: float  # mean of the micro-batch losses
    terms: dict[str, float]  # the same for each loss term
    grad_norm: float | None  # global norm before clipping (None when neither clipped nor monitored)
    nonfinite: bool  # a non-finite loss or model output (on any rank) or gradient norm
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)
    batch: dict[str, Any] = field(repr=False, default_factory=dict)


class TrainStep:
    """Forward + loss + backward of `model` (maybe DDP-wrapped) with `loss_fn` and `optimizer`.

    autocast_dtype: None (fp32) or the autocast dtype of the forward. grad_clip: max global
    gradient norm (0: no clipping); monitor_grad_norm: compute the norm without clipping.
    ctx: the distributed context (the non-finite flag is OR-ed over the ranks).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        *,
        autocast_dtype: torch.dtype | None = None,
        grad_clip: float = 0.0,
        monitor_grad_norm: bool = False,
        ctx: DistContext | None = None,
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.autocast_dtype = autocast_dtype
        self.grad_clip, self.monitor_grad_norm = grad_clip, monitor_grad_norm
        self.ctx = ctx or DistContext()

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward's autocast context on `device` (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(total loss (scalar), its terms, the float32 outputs) of one batch on the model's device."""
        with self.autocast(batch["image"].device):
            outputs = self.model(batch)
        outputs = to_float32(outputs)
        loss = self.loss_fn(outputs, batch)
        total, terms = loss if isinstance(loss, tuple) else (loss, {})
        return total, terms, outputs

    def accumulate(
        self, micro_batches: Sequence[Any], prepare: Callable[[int, Any], dict[str, Any]] | None = None
    ) -> StepResult:
        """Zero the gradients, then forward + backward each micro-batch (`prepare(m, raw)` makes
        micro-batch m a device batch), then the gradient norm / clipping. No optimizer update."""
        self.optimizer.zero_grad(set_to_none=True)
        accum = len(micro_batches)
        ddp = isinstance(self.model, DistributedDataParallel)
        loss_sum, term_sums, nonfinite = 0.0, {}, False
        outputs: Any = {}
        batch: dict[str, Any] = {}
        for m, raw in enumerate(micro_batches):
            batch = prepare(m, raw) if prepare is not None else raw
            defer_sync = ddp and m < accum - 1  # DDP all-reduces the gradients of the last micro-batch only
            with self.model.no_sync() if defer_sync else contextlib.nullcontext():
                total, terms, outputs = self.forward(batch)
                (total / accum).backward()
            value = float(total.detach())
            nonfinite |= not math.isfinite(value) or not outputs_finite(outputs)
            loss_sum += value / accum
            for name, term in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(term.detach()) / accum
        nonfinite = any_rank(nonfinite, self.ctx)
        grad_norm = None
        if self.grad_clip > 0 or self.monitor_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            nonfinite |= not math.isfinite(grad_norm)
        return StepResult(loss_sum, term_sums, grad_norm, nonfinite, outputs, batch)

    def __call__(self, batch: dict[str, Any]) -> StepResult:
        """One whole step on one batch: forward, backward, update."""
        try:
            result = self.accumulate([batch])
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        return result
