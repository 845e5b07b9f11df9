"""Model cost accounting: parameter counts (`amt model-info`), FLOP counting and the per-module
profile of the heads that `amt bench` prints.

Models are built on the meta device for parameter counts, so even ViT-g costs no memory. The
paper preset (vitl14) is shown next to the published figures.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.utils.flop_counter as fc
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from amt.errors import ConfigError
from amt.models.amt import AMT
from amt.models.config import PAPER_PARAMS_M, PRESETS, VARIANTS, make_config

aten = torch.ops.aten

# the top-level modules of AMT the profile reports, in forward order ("other" is the glue in
# AMT.forward between them: memory concatenation, level embeddings, dtype casts)
PROFILED_MODULES = ("backbone", "pyramid", "cls_proj", "decoder", "hand", "objects", "refiner", "contact")
HEAD_MODULES = PROFILED_MODULES[1:]


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, q, k, v)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one.
CUSTOM_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: everything counts under "Global".

    The tracker hooks module inputs for the backward pass and fails on parameters passed as
    module inputs (torch 2.13: `_get_grad_fn_or_grad_acc` on a leaf); totals need no tracking.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (multiply-add = 2) of the matmul/conv/attention ops `fn()` runs, backward included."""
    counter = fc.FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


# FLOP formulas by op (shape-wrapped: called with the op's tensors and out_val=its output)
_FLOP_FORMULAS = fc.FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS).flop_registry


def _is_view(func: torch._ops.OpOverload) -> bool:
    """Ops that return an alias of an input (view, transpose, ...) move no memory."""
    return any(a.alias_info is not None and not a.alias_info.is_write for a in func._schema.returns)


def _tensor_bytes(values: object) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor))


class _OpCostMode(TorchDispatchMode):
    """Per op: FLOPs (FlopCounterMode's formulas) and bytes read + written (every tensor input
    and output counted once per op, views free), charged to `self.current` module name."""

    def __init__(self) -> None:
        super().__init__()
        self.current = "other"
        self.flops: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in _FLOP_FORMULAS:
            # composite ops (aten.linear in inference mode) are costed as the kernels they run,
            # as FlopCounterMode does
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        formula = _FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.flops[self.current] = self.flops.get(self.current, 0) + flops
        if not _is_view(func):
            moved = _tensor_bytes(args) + _tensor_bytes(kwargs) + _tensor_bytes(out)
            self.bytes[self.current] = self.bytes.get(self.current, 0) + moved
        return out


@contextlib.contextmanager
def _module_hooks(model: nn.Module, names: tuple[str, ...], enter, leave) -> Iterator[None]:
    handles = []
    for name in names:
        module = getattr(model, name, None)
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: leave(n)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class ModuleCost:
    """One row of the profile: module name, forward FLOPs per call, median wall time per call (s),
    parameter bytes, memory traffic per call (bytes: every kernel's tensor inputs -- weights
    included -- and outputs, views free; an unfused upper bound), parameter count."""

    name: str
    flops: int
    seconds: float
    param_bytes: int
    traffic_bytes: int
    parameters: int


class ModuleTimer:
    """Wall time spent inside each of `names` (top-level modules of `model`) per timed call.

    Use as a context manager (installs forward hooks) and wrap each call in `timed(call)`;
    `seconds(name)` is then the median over the timed calls, "other" being the call's time
    outside the named modules and "total" its whole time. On CUDA each hook synchronises.
    Hooks do not fire inside CUDA graphs or compiled code: time an eager model."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] = PROFILED_MODULES) -> None:
        self.model, self.names = model, names
        self.device = next(model.parameters()).device
        self.calls: list[dict[str, float]] = []
        self._starts: dict[str, float] = {}
        self._now: dict[str, float] = {}
        self._hooks = contextlib.ExitStack()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _enter(self, name: str) -> None:
        self._sync()
        self._starts[name] = time.perf_counter()

    def _leave(self, name: str) -> None:
        self._sync()
        self._now[name] = self._now.get(name, 0.0) + time.perf_counter() - self._starts[name]

    def __enter__(self) -> ModuleTimer:
        self._hooks.enter_context(_module_hooks(self.model, self.names, self._enter, self._leave))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.close()

    def timed(self, call: Callable[[], object]) -> float:
        """Run `call()` once, recording its per-module times; returns its wall time (s)."""
        self._now = {}
        self._sync()
        t0 = time.perf_counter()
        call()
        self._sync()
        total = time.perf_counter() - t0
        row = {n: self._now.get(n, 0.0) for n in self.names}
        row["other"] = total - sum(row.values())
        row["total"] = total
        self.calls.append(row)
        return total

    def seconds(self, name: str) -> float:
        return statistics.median(c[name] for c in self.calls) if self.calls else 0.0


def profile_modules(
    model: nn.Module,
    call: Callable[[], object],
    names: tuple[str, ...] = PROFILED_MODULES,
    iters: int = 3,
    timer: ModuleTimer | None = None,
) -> list[ModuleCost]:
    """Per top-level module of `model` (`names`, plus "other" for everything outside them and
    "total"): FLOPs and memory traffic of one `call()` (counted), and the median wall time of
    `iters` further calls, or of the calls a `timer` already recorded (then `iters` is unused).
    `call` runs the forward pass (e.g. under `torch.inference_mode`). The FLOP rows sum to the
    whole count."""
    cost = _OpCostMode()

    def enter(name: str) -> None:
        cost.current = name

    def leave(name: str) -> None:
        cost.current = "other"

    with _module_hooks(model, names, enter, leave), cost:
        call()
    if timer is None:
        with ModuleTimer(model, names) as timer:
            for _ in range(iters):
                timer.timed(call)
    listed = {id(p) for n in names if getattr(model, n, None) is not None for p in getattr(model, n).parameters()}
    rows = []
    for n in (*names, "other"):
        module = getattr(model, n, None) if n != "other" else None
        if n != "other" and module is None:
            continue
        # "other": the model's own parameters (level embeddings) and those of unlisted modules
        params = (
            list(module.parameters()) if module is not None else [p for p in model.parameters() if id(p) not in listed]
        )
        rows.append(
            ModuleCost(
                name=n,
                flops=cost.flops.get(n, 0),
                seconds=timer.seconds(n),
                param_bytes=sum(p.numel() * p.element_size() for p in params),
                traffic_bytes=cost.bytes.get(n, 0),
                parameters=sum(p.numel() for p in params),
            )
        )
    rows.append(
        ModuleCost(
            name="total",
            flops=sum(r.flops for r in rows),
            seconds=timer.seconds("total"),
            param_bytes=sum(r.param_bytes for r in rows),
            traffic_bytes=sum(r.traffic_bytes for r in rows),
            parameters=sum(r.parameters for r in rows),
        )
    )
    return rows


def count_parameters(preset: str, **overrides) -> dict[str, int]:
    """{"total", "trainable", "backbone", "backbone_trainable", "head"} for a preset, built on meta."""
    cfg = make_config(preset, **{"mano_path": None, **overrides})
    with torch.device("meta"):
        model = AMT(cfg, load_backbone_weights=False)
    backbone = list(model.backbone.parameters())
    head = model.head_parameters()
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone": sum(p.numel() for p in backbone),
        "backbone_trainable": sum(p.numel() for p in backbone if p.requires_grad),
        "head": sum(p.numel() for p in head),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amt model-info", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS) + sorted(VARIANTS),
        help="only these presets (repeatable; default every preset)",
    )
    parser.add_argument("--hidden-dim", type=int, default=None, help="override the head width of every preset")
    args = parser.parse_args(argv)
    overrides = {} if args.hidden_dim is None else {"hidden_dim": args.hidden_dim}
    try:  # a width the heads cannot have: one line before the table
        for preset in args.preset or list(PRESETS):
            make_config(preset, **overrides)
    except ConfigError as exc:
        print(f"amt model-info: {exc}", file=sys.stderr)
        return 2
    header = f"{'preset':<9} {'total (M)':>10} {'trainable (M)':>14} {'backbone (M)':>13} {'head (M)':>9}  note"
    print(header)
    print("-" * len(header))
    for preset in args.preset or list(PRESETS):
        c = count_parameters(preset, **overrides)
        note = ""
        if preset == "vitl14":
            note = f"paper: {PAPER_PARAMS_M['total']:.1f} total / {PAPER_PARAMS_M['trainable']:.1f} trainable"
        print(
            f"{preset:<9} {c['total'] / 1e6:>10.1f} {c['trainable'] / 1e6:>14.1f} "
            f"{c['backbone'] / 1e6:>13.1f} {c['head'] / 1e6:>9.1f}  {note}"
        )
    return 0
