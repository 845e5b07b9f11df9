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

Host synchronisation: the flag, the loss, its terms and the gradient norm of a step stay on the
device until one device-to-host transfer at the end of the step (the flag must reach the host
every step, since it decides the update; the numbers ride along), so the step costs one
synchronisation however many loss terms there are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from amt.errors import ConfigError
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


def nonfinite_flag(outputs: Any) -> torch.Tensor:
    """0-dim bool tensor (on the outputs' device): True when any floating tensor in `outputs`
    (nested dicts / lists) holds a NaN or inf. No device-to-host synchronisation."""
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
    return ~torch.stack(flags).all() if flags else torch.zeros((), dtype=torch.bool)


def outputs_finite(outputs: Any) -> bool:
    """True when every floating tensor in `outputs` (nested dicts / lists) is finite; one
    device-to-host synchronisation for all of them."""
    return not bool(nonfinite_flag(outputs))


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """`training.precision` (auto | bf16 | fp32) -> the autocast dtype (None: no autocast).
    auto is bf16 on CUDA, fp32 elsewhere."""
    precision = precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"config training.precision: {precision!r}; expected auto, bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else None


class CompileUnavailable(RuntimeError):
    """torch.compile asked for (`training.compile=true`, `--compile`) on a machine where it cannot
    build kernels."""


def check_compiler(device: torch.device | str, asked: str, instead: str) -> None:
    """Compile a tiny function on `device` so that a machine without a working compiler toolchain
    gives one clear `CompileUnavailable` ("{asked}: ...; {instead}") up front instead of a
    traceback at the first real call."""
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(2, device=device))  # the device's toolchain: Triton on CUDA, a C++ compiler on CPU
    except Exception as exc:  # inductor raises many types (missing C++ compiler, triton, ...)
        raise CompileUnavailable(
            f"{asked}: torch.compile does not work here ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); {instead}"
        ) from exc


def compile_step(fn: Callable[..., Any], device: torch.device | str = "cpu") -> Callable[..., Any]:
    """`torch.compile(fn)` (graph breaks allowed), the toolchain checked first (`check_compiler`)."""
    check_compiler(device, "config training.compile=true", "set training.compile=false")
    return torch.compile(fn)


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
        compile: bool = False,
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.autocast_dtype = autocast_dtype
        self.grad_clip, self.monitor_grad_norm = grad_clip, monitor_grad_norm
        self.ctx = ctx or DistContext()
        # compile=True: the model's forward is compiled; the loss stays eager (its Hungarian matching
        # runs on the host and its data-dependent shapes, e.g. `unique`, do not trace)
        device = next(model.parameters(), torch.empty(0)).device
        self._run_model: Callable[[dict[str, Any]], Any] = compile_step(model, device) if compile else model

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward's autocast context on `device` (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(total loss (scalar), its terms, the float32 outputs) of one batch on the model's device
        (the model's forward compiled with `compile=True`)."""
        with self.autocast(batch["image"].device):
            outputs = self._run_model(batch)
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
        # per micro-batch: [non-finite flag, total, *terms] stay on the device until the one
        # device-to-host transfer of the step below (no float() per loss term)
        rows: list[torch.Tensor] = []
        names: list[str] = []
        outputs: Any = {}
        batch: dict[str, Any] = {}
        for m, raw in enumerate(micro_batches):
            batch = prepare(m, raw) if prepare is not None else raw
            defer_sync = ddp and m < accum - 1  # DDP all-reduces the gradients of the last micro-batch only
            with self.model.no_sync() if defer_sync else contextlib.nullcontext():
                total, terms, outputs = self.forward(batch)
                (total / accum).backward()
            names = list(terms)
            values = [total.detach(), *(terms[k].detach() for k in names)]
            values = [v.float().reshape(()).to(total.device) for v in values]
            bad = (~torch.isfinite(values[0]) | nonfinite_flag(outputs).to(total.device)).float()
            rows.append(torch.stack([bad, *values]))
        self._average_unowned_grads()
        grad_norm_t = None
        if self.grad_clip > 0 or self.monitor_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
            grad_norm_t = torch.nn.utils.clip_grad_norm_(params, max_norm).detach().float().reshape(1)
        # the step's one device-to-host transfer: flags, losses and the gradient norm together
        packed = torch.cat(
            [torch.stack(rows).flatten(), *([grad_norm_t.to(rows[0])] if grad_norm_t is not None else [])]
        )
        host = packed.cpu().tolist()
        width = len(names) + 2
        loss_sum, term_sums, nonfinite = 0.0, dict.fromkeys(names, 0.0), False
        for m in range(accum):
            row = host[m * width : (m + 1) * width]
            nonfinite |= row[0] > 0.5
            loss_sum += row[1] / accum
            for name, value in zip(names, row[2:], strict=True):
                term_sums[name] += value / accum
        nonfinite = any_rank(nonfinite, self.ctx)
        grad_norm = host[-1] if grad_norm_t is not None else None
        if grad_norm is not None:
            nonfinite |= not math.isfinite(grad_norm)  # DDP's gradients, and so their norm, agree on every rank
        return StepResult(loss_sum, term_sums, grad_norm, nonfinite, outputs, batch)

    def _average_unowned_grads(self) -> None:
        """Mean over the ranks of the gradients DDP does not own: the optimizer's parameters outside
        the wrapped model (the loss's learned task weights, `loss.dynamic_weighting`). Left per rank,
        they and the clipped norm would differ between ranks and the replicas drift apart."""
        if not self.ctx.enabled:
            return
        owned = {id(p) for p in self.model.parameters()}
        params = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in owned]
        if not params:
            return
        # every rank sends every such gradient (zeros where a rank has none), so the shapes agree and
        # every rank applies the same update
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.ctx.world_size
        for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = part.view_as(p).clone()

    def __call__(self, batch: dict[str, Any]) -> StepResult:
        """One whole step on one batch: forward, backward, update."""
        try:
            result = self.accumulate([batch])
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        return result
