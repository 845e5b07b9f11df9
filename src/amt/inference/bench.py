"""`amt bench`: latency, throughput, training speed, memory and FLOP/s against a matmul ceiling.

Everything is measured in the same process on the same device:
- the ceiling: a large square matmul in the benchmark's compute dtype (fp32 on CPU, bf16 on
  CUDA), best FLOP/s over a few repetitions;
- inference per batch size through `amt.inference.fastpath.FastPath` (bf16 + CUDA graphs on
  CUDA), and the bare backbone (`model.backbone`) the same way, the two calls interleaved so
  both see the same load on a shared machine; the heads' cost shows as the whole-model /
  backbone time ratio (the median of the interleaved pairs' ratios);
- model FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (plus CPU SDPA, which it
  does not count by itself), achieved FLOP/s and their share of the ceiling;
- the heads per module (`amt.models.info.profile_modules`) at every batch size: FLOPs, time
  (forward hooks around each top-level module, median of the timed calls) and memory traffic
  (every kernel's tensor inputs, weights included, and outputs), next to the bare backbone;
- one training step (`amt.inference.bench_train`: forward, AMTLoss, backward, AdamW, EMA) on a
  fake batch-contract batch, or on a cache folder (GPUCachedDataset on CUDA); with
  `--train-variants` also with compile, the per-tensor EMA and DDP's unused-parameter search;
- peak memory: CUDA max allocated per phase; on CPU the process's peak RSS so far.
Weights are random unless `--checkpoint` names a checkpoint (its config sets the input size): speed
does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from amt.argtypes import int_at_least
from amt.checkpoint import CheckpointError, load_model
from amt.errors import ConfigError, check_device
from amt.inference.bench_train import TRAIN_VARIANTS, bench_train
from amt.inference.export import InputSpec, example_inputs
from amt.inference.fastpath import FastPath, FastPathConfig, autocast_dtype
from amt.inference.precision import PrecisionError, inference_model, parse_dtype
from amt.inference.timing import peak_memory_mb, reset_peak, sync, time_call
from amt.models import build_model
from amt.models.info import HEAD_MODULES, ModuleTimer, count_flops, profile_modules
from amt.outputs import OutputExistsError, claim_output_file
from amt.training.step import CompileUnavailable

log = logging.getLogger(__name__)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (e.g. CUDA requested but absent)."""


@dataclass
class BenchConfig:
    """device: 'cpu' or 'cuda'; batches: inference batch sizes; iters/warmup: timed/untimed calls
    (None: 5/2 on CPU, 50/10 on CUDA); train_batch: training batch (default: largest of batches);
    overrides: model config fields changed from the preset (`--set decoder_layers=6`);
    threads: CPU intra-op threads (None: torch's default); matmul_n: ceiling matmul size
    (None: 2048 on CPU, 8192 on CUDA); checkpoint: a checkpoint folder to time instead of the
    random-weight `preset` (its config decides the input size, e.g. 96 px for the demo's model);
    train_variants: the training step's variants to time (`amt.inference.bench_train.TRAIN_VARIANTS`;
    empty: the default step only); dtype: the inference model's storage dtype (`amt.inference.precision`: 'bfloat16' stores the
    backbone, pyramid and decoder in bf16, weights cast once; training stays float32)."""

    device: str = "cpu"
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    batches: tuple[int, ...] = (1, 8)
    train: bool = False
    train_batch: int | None = None
    iters: int | None = None
    warmup: int | None = None
    threads: int | None = None
    matmul_n: int | None = None
    autocast: str = "auto"
    compile: bool = False
    cuda_graph: bool = True
    cache: str | None = None
    checkpoint: str | None = None
    dtype: str = "float32"
    train_variants: tuple[str, ...] = ()


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, iters: int = 5) -> dict:
    """Best FLOP/s of an (n, n) @ (n, n) matmul in `dtype` on `device` (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 2 * n**3 / best}


class BackboneOnly(nn.Module):
    """The model's bare backbone behind the same (image, K) -> tuple interface as the whole model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "backbone"):
            raise AttributeError(f"{type(model).__name__} has no `backbone` module to benchmark on its own")
        self.backbone = model.backbone

    def forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(image)
        return (out["cls"], out["patches"], *out["taps"])


def time_interleaved(
    model_call: Callable[[], float], backbone_call: Callable[[], object], device: torch.device, iters: int, warmup: int
) -> tuple[float, float, float]:
    """(median model s, median backbone s, median of the per-pair model / backbone ratios):
    the two calls alternate (model, backbone, backbone, model, ...), so on a shared machine both
    see the same load and the ratio stays meaningful when the absolute times drift.
    `model_call` returns its own wall time (it may record per-module times meanwhile)."""
    for _ in range(warmup):
        model_call()
        backbone_call()
    models, backbones = [], []
    for i in range(iters):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        pair = [0.0, 0.0]
        for which in order:
            if which == 0:
                pair[0] = model_call()
            else:
                pair[1] = time_call(backbone_call, device, 1, 0)
        models.append(pair[0])
        backbones.append(pair[1])
    ratios = [m / b for m, b in zip(models, backbones, strict=True)]
    return statistics.median(models), statistics.median(backbones), statistics.median(ratios)


def run(cfg: BenchConfig) -> dict:
    """Run every measurement of `cfg`; returns the JSON-ready result dict."""
    check_device(cfg.device)
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    iters = cfg.iters if cfg.iters is not None else (50 if device.type == "cuda" else 5)
    warmup = cfg.warmup if cfg.warmup is not None else (10 if device.type == "cuda" else 2)
    dtype = autocast_dtype(cfg.autocast, device)
    stored = parse_dtype(cfg.dtype)
    compute_dtype = dtype or stored
    if cfg.checkpoint is not None:
        model = load_model(cfg.checkpoint).to(device).eval()
    else:
        model = build_model(cfg.preset, **cfg.overrides).to(device).eval()
    size = InputSpec.of(model).size
    n_params = sum(p.numel() for p in model.parameters())
    ceiling = matmul_ceiling(device, compute_dtype, cfg.matmul_n or (8192 if device.type == "cuda" else 2048))
    fp_cfg = FastPathConfig(autocast=cfg.autocast, compile=cfg.compile, cuda_graph=cfg.cuda_graph)
    whole = FastPath(inference_model(model, stored), device, fp_cfg)
    bare = FastPath(whole.model, device, fp_cfg, flat=BackboneOnly(whole.model))
    image1, K1 = (t.to(device) for t in example_inputs(1, size))
    with torch.inference_mode():
        flops_model = count_flops(lambda: whole.model({"image": image1, "K": K1}))
        flops_backbone = count_flops(lambda: whole.model.backbone(image1))
    rows, heads = [], []
    # per-module times come from forward hooks, which do not fire inside CUDA graphs or compiled
    # code: there the profile times an eager copy separately; on the eager CPU path the timed
    # calls themselves are hooked (the hooks cost microseconds)
    eager_cfg = replace(fp_cfg, compile=False, cuda_graph=False, fold_sigma_reparam=False)
    eager = whole if not (whole.use_graphs or cfg.compile) else FastPath(whole.model, device, eager_cfg)
    for b in cfg.batches:
        reset_peak(device)
        image, K = (t.to(device) for t in example_inputs(b, size))
        timer = ModuleTimer(eager.model)
        with timer if eager is whole else contextlib.nullcontext():
            t_model, t_back, ratio = time_interleaved(
                lambda i=image, k=K, tm=timer: tm.timed(lambda: whole.run_flat(i, k)),
                lambda i=image, k=K: bare.run_flat(i, k),
                device, iters, warmup,
            )  # fmt: skip
        mem = peak_memory_mb(device)
        # the warm-up calls are recorded too: keep the timed ones
        timer.calls = timer.calls[warmup:]
        profile = profile_modules(
            eager.model, lambda i=image, k=K: eager.run_flat(i, k), iters=iters, timer=timer if eager is whole else None
        )
        heads.append({"batch": b, "modules": [asdict(m) for m in profile]})
        row = {
            "batch": b,
            "latency_ms": t_model * 1e3,
            "images_per_s": b / t_model,
            "flops_per_image": flops_model,
            "flops_per_s": flops_model * b / t_model,
            "ceiling_ratio": flops_model * b / t_model / ceiling["flops_per_s"],
            "backbone_latency_ms": t_back * 1e3,
            "backbone_flops_per_s": flops_backbone * b / t_back,
            "backbone_ceiling_ratio": flops_backbone * b / t_back / ceiling["flops_per_s"],
            "model_over_backbone": ratio,  # median of interleaved pairs (not the ratio of medians)
            "peak_memory_mb": mem,
        }
        rows.append(row)
        log.info(
            "batch %d: %.1f ms, %.1f img/s, %.0f%% of ceiling",
            b,
            row["latency_ms"],
            row["images_per_s"],
            100 * row["ceiling_ratio"],
        )
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(device),
        "config": asdict(cfg),
        "preset": getattr(model.config, "preset", cfg.preset),
        "overrides": cfg.overrides,
        "checkpoint": cfg.checkpoint,
        "image_size": size,
        "parameters": n_params,
        "weights": "random (speed does not depend on the values)" if cfg.checkpoint is None else "checkpoint",
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "stored_dtype": cfg.dtype,
        "flops_per_image_backbone": flops_backbone,
        "ceiling": ceiling,
        "inference": rows,
        "heads": heads,
    }
    if cfg.train:
        tb = cfg.train_batch or max(cfg.batches)
        variants = cfg.train_variants or ("default",)
        result["train"] = bench_train(
            model, device, tb, max(1, iters // 2), warmup // 2, ceiling["flops_per_s"],
            autocast=autocast_dtype(cfg.autocast, device), cache=cfg.cache, variants=variants,
        )  # fmt: skip
    # A second ceiling measurement shows how steady the machine was during the run.
    result["ceiling_at_end"] = matmul_ceiling(device, compute_dtype, ceiling["n"])
    return result


def _machine(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(result: dict) -> str:
    """Markdown tables of a `run` result."""
    c = result["ceiling"]
    lines = [
        f"preset {result['preset']} ({result['parameters'] / 1e6:.1f}M params, {result['weights']}, "
        f"{result.get('image_size', 224)} px), "
        f"{result['machine']['device']} {result['machine'].get('gpu', '')}, {result['compute_dtype']}, "
        f"{result['machine']['torch_threads']} threads",
        f"matmul ceiling ({c['n']}^3 {c['dtype']}): {c['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"(again at the end: {result['ceiling_at_end']['flops_per_s'] / 1e9:.1f}); "
        f"model {result['inference'][0]['flops_per_image'] / 1e9:.2f} GFLOP/image, "
        f"backbone {result['flops_per_image_backbone'] / 1e9:.2f} GFLOP/image",
        "",
        "| batch | latency ms | images/s | GFLOP/s | % of ceiling | backbone ms | backbone % of ceiling | model / backbone | peak MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["inference"]:
        lines.append(
            f"| {r['batch']} | {r['latency_ms']:.1f} | {r['images_per_s']:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['ceiling_ratio']:.0f}% | {r['backbone_latency_ms']:.1f} | {100 * r['backbone_ceiling_ratio']:.0f}% | "
            f"{r['model_over_backbone']:.2f} | {r['peak_memory_mb']:.0f} |"
        )
    if result.get("heads"):
        lines += ["", *format_heads(result)]
    if "train" in result:
        t = result["train"]
        lines += [
            "",
            "| train batch | step ms | samples/s | GFLOP/s | % of ceiling | loss | data | peak MB |",
            "|---:|---:|---:|---:|---:|---|---|---:|",
            f"| {t['batch']} | {t['step_ms']:.1f} | {t['samples_per_s']:.1f} | {t['flops_per_s'] / 1e9:.1f} | "
            f"{100 * t['ceiling_ratio']:.0f}% | {t['loss']} | {t['data']} | {t['peak_memory_mb']:.0f} |",
        ]
        if len(t.get("variants", [])) > 1:
            base = t["variants"][0]["samples_per_s"]
            lines += ["", "| training variant | step ms | samples/s | vs default |", "|---|---:|---:|---:|"]
            for v in t["variants"]:
                lines.append(
                    f"| {v['variant']} | {v['step_ms']:.1f} | {v['samples_per_s']:.2f} | {v['samples_per_s'] / base:.2f}x |"
                )
    return "\n".join(lines)


def format_heads(result: dict) -> list[str]:
    """Markdown lines of the per-module table: FLOPs per image, and per batch size the time per
    call and the memory traffic per call (kernel inputs, weights included, and outputs)."""
    runs = result["heads"]
    first = {m["name"]: m for m in runs[0]["modules"]}
    total_flops = first["total"]["flops"] / runs[0]["batch"]
    head_flops = sum(first[n]["flops"] for n in HEAD_MODULES if n in first) / runs[0]["batch"]
    batches = [r["batch"] for r in runs]
    head = "| module | params M | GFLOP/image | % of FLOPs | " + " | ".join(
        f"ms b={b} | % time b={b} | MB moved b={b}" for b in batches
    )
    lines = [
        f"heads per module: heads {head_flops / 1e9:.2f} of {total_flops / 1e9:.2f} GFLOP/image "
        f"({100 * head_flops / max(total_flops, 1):.1f} %); time from forward hooks, eager, median of the timed calls",
        "",
        head + " |",
        "|---|---:|---:|---:|" + "---:|---:|---:|" * len(batches),
    ]
    per_batch = [{m["name"]: m for m in r["modules"]} for r in runs]
    for name in first:
        m = first[name]
        cells = [
            name if name not in ("backbone", "total") else f"**{name}**",
            f"{m['parameters'] / 1e6:.2f}",
            f"{m['flops'] / runs[0]['batch'] / 1e9:.3f}",
            f"{100 * m['flops'] / max(first['total']['flops'], 1):.1f}",
        ]
        for mods in per_batch:
            x, t = mods[name], mods["total"]["seconds"]
            cells += [f"{1e3 * x['seconds']:.1f}", f"{100 * x['seconds'] / t:.1f}", f"{x['traffic_bytes'] / 2**20:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY=VALUE, e.g. decoder_layers=6 or decoder_levels=[1,2,3]"
        )
    return key, yaml.safe_load(value)


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(v for v in text.split(",") if v)
    unknown = sorted(set(names) - set(TRAIN_VARIANTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: expected names from {', '.join(TRAIN_VARIANTS)}")
    return names


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 1,8")
    return values


def main(argv: list[str]) -> int:
    """Entry point of `amt bench`."""
    p = argparse.ArgumentParser(prog="amt bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--preset", default="tiny", help="tiny, vits14, vitb14, vitl14, vitg14")
    p.add_argument(
        "--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
        help="change a model config field of --preset (repeatable), e.g. --set decoder_layers=6",
    )  # fmt: skip
    p.add_argument("--checkpoint", default=None, help="time this checkpoint folder instead of a random --preset")
    p.add_argument(
        "--batch", type=_int_list, default=None, help="inference batch sizes (default 1,8 on CPU; 1,256 on CUDA)"
    )
    p.add_argument("--train", action="store_true", help="also time training steps")
    p.add_argument(
        "--train-variants", type=_name_list, default=None, metavar="V1,V2",
        help=f"with --train: time the step with each switchable part on/off; some of {','.join(TRAIN_VARIANTS)} "
        "(compiled only when named: compiling takes minutes on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--train-batch", type=int_at_least(1), default=None, help="training batch (default: largest --batch)"
    )
    p.add_argument("--iters", type=int_at_least(1), default=None)
    p.add_argument("--warmup", type=int_at_least(0), default=None)
    p.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--matmul-n", type=int_at_least(1), default=None, help="ceiling matmul size (default 2048 CPU, 8192 CUDA)"
    )
    p.add_argument("--autocast", default="auto", help="auto (bf16 on CUDA, none on CPU), bf16, fp16, none")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="inference model storage dtype (bfloat16: weights cast once, geometric heads float32)",
    )  # fmt: skip
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model and the backbone (inductor, frozen weights, a static graph per batch size)",
    )
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--cache", default=None, help="training data cache folder (default: synthetic tensors)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (a new file unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json is not None:
        try:  # before the run: a long benchmark is not lost to a refusal at its end
            claim_output_file(args.json, args.force, "--json")
        except OutputExistsError as exc:
            print(f"amt bench: {exc}", file=sys.stderr)
            return 2
    if args.train and args.autocast == "fp16":
        # the trainer runs bf16 or fp32 (training.precision) and has no loss scaler: an fp16 step
        # would time a step no run takes
        print(
            "amt bench: --train times the trainer's step, which runs bf16 or fp32; use --autocast bf16 or none",
            file=sys.stderr,
        )
        return 2
    batches = args.batch or ((1, 256) if args.device == "cuda" else (1, 8))
    cfg = BenchConfig(
        device=args.device, preset=args.preset, overrides=dict(args.set), batches=batches, train=args.train,
        train_batch=args.train_batch,
        iters=args.iters, warmup=args.warmup, threads=args.threads, matmul_n=args.matmul_n, autocast=args.autocast,
        compile=args.compile, cuda_graph=not args.no_cuda_graph, cache=args.cache, checkpoint=args.checkpoint,
        dtype=args.dtype, train_variants=args.train_variants or (),
    )  # fmt: skip
    try:
        result = run(cfg)
    except (BenchError, CheckpointError, CompileUnavailable, ConfigError, KeyError, PrecisionError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # str(KeyError) adds quotes
        print(f"amt bench: {text}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
