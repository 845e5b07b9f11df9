"""Run every diagnostic on a model and a few batches; write Markdown + JSON (+ attention PNGs).

`run_diagnostics(model, batches, out_dir, ...)` returns a JSON-able dict with the sections
`diversity`, `dead_units`, `gradients`, `non_finite`, `memory`, `attention`;
`write_debug_report(result, out_dir)` writes `debug.json` and `debug.md` next to the PNGs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from amt.diagnostics.attention import save_attention_maps
from amt.diagnostics.collapse import DiversityMonitor
from amt.diagnostics.dead_units import find_dead_units
from amt.diagnostics.gradients import module_grad_norms, trace_non_finite
from amt.diagnostics.memory import SteppableModel, profile_step_memory
from amt.jsonio import write_json

log = logging.getLogger(__name__)

DEBUG_JSON = "debug.json"
DEBUG_MD = "debug.md"
LossFn = Callable[[dict[str, Any], dict[str, Any]], Any]


def run_diagnostics(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    out_dir: str | Path,
    loss_fn: LossFn | None = None,
    attention_images: int = 4,
    grad_depth: int = 2,
    memory_step: SteppableModel | None = None,
) -> dict[str, Any]:
    """Diagnose `model` on `batches` (batch-contract dicts already on the model's device).

    Diversity and dead units use every batch (eval mode, no gradients); attention the first
    batch; gradient health one backward on the first batch with `loss_fn` (skipped without
    one); the memory profile one step of `memory_step` (an `amt.training.step.TrainStep` over
    `model`; skipped without one or without `loss_fn`) on the first batch. The memory step
    updates the weights, so it runs last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "num_batches": len(batches),
        "num_samples": sum(int(b["image"].shape[0]) for b in batches),
    }

    monitor = DiversityMonitor()
    model.eval()
    with torch.no_grad():
        for batch in batches:
            monitor.update(model(batch), batch)
    result["diversity"] = {k: v.to_dict() for k, v in monitor.result().items()}
    result["dead_units"] = [
        layer.to_dict() for layer in find_dead_units(model, batches, device=batches[0]["image"].device)
    ]
    try:
        paths = save_attention_maps(model, batches[0], out, max_images=attention_images)
        result["attention"] = {"images": [p.name for p in paths]}
    except (ValueError, TypeError, KeyError) as exc:  # models without return_attention
        log.warning("attention maps skipped: %s", exc)
        result["attention"] = {"images": [], "skipped": str(exc)}
    if loss_fn is not None:
        model.train()
        report = trace_non_finite(model, batches[0], loss_fn)
        result["non_finite"] = report.to_dict()
        result["gradients"] = module_grad_norms(model, grad_depth)
        model.zero_grad(set_to_none=True)
        if memory_step is not None:
            phases = profile_step_memory(memory_step, batches[0])
            result["memory"] = {k: v.to_dict() for k, v in phases.items()}
    else:
        result["non_finite"] = trace_non_finite(model, batches[0]).to_dict()
    model.eval()
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _fmt(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def format_markdown(result: dict[str, Any], title: str = "AMT debug report") -> str:
    """The report's tables as Markdown."""
    parts = [f"# {title}", f"{result['num_samples']} samples in {result['num_batches']} batches."]
    if result.get("provenance"):
        parts.append(
            "Checkpoint `{checkpoint}`, data `{data}`, device `{device}`, {date}.".format(**result["provenance"])
        )
    rows = [
        [
            h["head"],
            _fmt(h["pred_std"]),
            _fmt(h["gt_std"]),
            _fmt(h["ratio"], 3),
            "COLLAPSED" if h["collapsed"] else "ok",
            h["rule"],
        ]
        for h in result["diversity"].values()
    ]
    parts += [
        "## Prediction diversity",
        "Std across samples per output element, averaged; ratio = prediction / ground truth.",
        tabulate(rows, headers=["head", "pred std", "GT std", "ratio", "status", "collapse rule"], tablefmt="pipe"),
    ]
    layers = result["dead_units"]
    flagged = [layer for layer in layers if layer["flagged"]]
    parts += ["## Dead units", f"{len(layers)} layers scanned, {len(flagged)} flagged (>= 50 % of units constant)."]
    if flagged:
        rows = [[x["name"], x["type"], x["units"], x["dead"], f"{100 * x['dead_fraction']:.0f}%"] for x in flagged]
        parts.append(tabulate(rows, headers=["layer", "type", "units", "dead", "dead %"], tablefmt="pipe"))
    nf = result["non_finite"]
    parts += ["## Gradient health", "Non-finite values: " + ("none" if nf["healthy"] else "")]
    if not nf["healthy"]:
        parts.append(
            f"first non-finite forward output: `{nf['forward_module']}` ({nf['forward_kind']}); "
            f"backward anomaly: {nf['anomaly']}; parameters with non-finite gradients: {nf['nonfinite_grads'][:5]}"
        )
    if result.get("gradients"):
        rows = sorted(result["gradients"].items(), key=lambda kv: -kv[1] if kv[1] == kv[1] else float("inf"))
        parts.append(tabulate([[k, f"{v:.3e}"] for k, v in rows], headers=["module", "grad norm"], tablefmt="pipe"))
    if result.get("memory"):
        rows = [
            [k, v["kind"], _mib(v["before"]), _mib(v["peak"]), _mib(v["after"]), _mib(v["delta"])]
            for k, v in result["memory"].items()
        ]
        parts += [
            "## Memory per phase (MiB)",
            tabulate(rows, headers=["phase", "measure", "before", "peak", "after", "delta"], tablefmt="pipe"),
        ]
    images = result.get("attention", {}).get("images", [])
    parts.append("## Attention")
    parts += [f"![{name}]({name})" for name in images] or ["not available: " + result["attention"].get("skipped", "")]
    return "\n\n".join(parts) + "\n"


def write_debug_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write debug.json and debug.md under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / DEBUG_JSON, "markdown": out / DEBUG_MD}
    write_json(paths["json"], result)
    paths["markdown"].write_text(format_markdown(result))
    return paths
