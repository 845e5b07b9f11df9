"""`amt bench`: latency, throughput, training speed, memory and FLOP/s against a matmul ceiling.

Everything is measured in the same process on the same device:
- the ceiling: a large square matmul in the benchmark's compute dtype (fp32 on CPU, bf16 on
  CUDA), best FLOP/s over a few repetitions;
- inference per batch size through `amt.inference.fastpath.FastPath` (bf16 + CUDA graphs on
  CUDA), and the bare backbone (`model.backbone`) the same way, so the heads' cost shows as the
  whole-model / backbone time ratio;
- model FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (plus CPU SDPA, which it
  does not count by itself), achieved FLOP/s and their share of the ceiling;
- one training step (forward, `amt.training.losses.AMTLoss`, backward, AdamW) on a fake
  batch-contract batch (`amt.testing.random_batch`), or on a cache folder (GPUCachedDataset on CUDA);
- peak memory: CUDA max allocated per phase; on CPU the process's peak RSS so far.
Weights are random unless `--checkpoint` names a checkpoint (its config sets the input size): speed
does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.utils.flop_counter as fc
from torch import nn

from amt.checkpoint import CheckpointError, load_model
from amt.data.loaders import GPUCachedDataset
from amt.inference.export import InputSpec, example_inputs
from amt.inference.fastpath import FastPath, FastPathConfig, autocast_dtype
from amt.models import build_model
from amt.testing import random_batch
from amt.training.losses import AMTLoss
from amt.training.step import TrainStep

log = logging.getLogger(__name__)

aten = torch.ops.aten


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (e.g. CUDA requested but absent)."""


@dataclass
class BenchConfig:
    """device: 'cpu' or 'cuda'; batches: inference batch sizes; iters/warmup: timed/untimed calls
    (None: 5/2 on CPU, 50/10 on CUDA); train_batch: training batch (default: largest of batches);
    threads: CPU intra-op threads (None: torch's default); matmul_n: ceiling matmul size
    (None: 2048 on CPU, 8192 on CUDA); checkpoint: a checkpoint folder to time instead of the
    random-weight `preset` (its config decides the input size, e.g. 96 px for the demo's model)."""

    device: str = "cpu"
    preset: str = "tiny"
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


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, q, k, v)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one.
_CUSTOM_FLOPS = {
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
    counter = fc.FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median wall time (s) of `fn()` over `iters` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, iters: int = 5) -> dict:
    """Best FLOP/s of an (n, n) @ (n, n) matmul in `dtype` on `device` (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 2 * n**3 / best}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


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


def _train_batches(cfg: BenchConfig, device: torch.device, batch: int, size: int):
    """Endless batches: from the cache (GPUCachedDataset on the device) or one synthetic batch of
    `size`-pixel images."""
    if cfg.cache is None:
        fixed = random_batch(batch, image_size=size, device=device)
        while True:
            yield fixed
    data = GPUCachedDataset(cfg.cache, device)
    g = torch.Generator(device="cpu").manual_seed(0)
    while True:
        yield from data.batches(batch, shuffle=True, generator=g, drop_last=True)


def bench_train(
    model: nn.Module, cfg: BenchConfig, device: torch.device, batch: int, iters: int, warmup: int, ceiling: float
) -> dict:
    """Samples/s of full training steps (`amt.training.step.TrainStep`: forward, AMTLoss, backward, AdamW step)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    train_step = TrainStep(model, AMTLoss().to(device), opt, autocast_dtype=autocast_dtype(cfg.autocast, device))
    batches = _train_batches(cfg, device, batch, InputSpec.of(model).size)

    def step() -> None:
        train_step(next(batches))

    _reset_peak(device)
    seconds = time_call(step, device, iters, warmup)
    flops = count_flops(step)
    model.eval()
    return {
        "batch": batch,
        "loss": "AMTLoss",
        "data": cfg.cache or "synthetic tensors",
        "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds,
        "flops_per_step": flops,
        "flops_per_s": flops / seconds,
        "ceiling_ratio": flops / seconds / ceiling,
        "peak_memory_mb": peak_memory_mb(device),
    }


def _bench_callable(runner: FastPath, device: torch.device, batch: int, iters: int, warmup: int, size: int) -> float:
    image, K = (t.to(device) for t in example_inputs(batch, size))
    return time_call(lambda: runner.run_flat(image, K), device, iters, warmup)


def run(cfg: BenchConfig) -> dict:
    """Run every measurement of `cfg`; returns the JSON-ready result dict."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: CUDA is not available on this machine")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    iters = cfg.iters if cfg.iters is not None else (50 if device.type == "cuda" else 5)
    warmup = cfg.warmup if cfg.warmup is not None else (10 if device.type == "cuda" else 2)
    dtype = autocast_dtype(cfg.autocast, device)
    compute_dtype = dtype or torch.float32
    if cfg.checkpoint is not None:
        model = load_model(cfg.checkpoint).to(device).eval()
    else:
        model = build_model(cfg.preset).to(device).eval()
    size = InputSpec.of(model).size
    n_params = sum(p.numel() for p in model.parameters())
    ceiling = matmul_ceiling(device, compute_dtype, cfg.matmul_n or (8192 if device.type == "cuda" else 2048))
    fp_cfg = FastPathConfig(autocast=cfg.autocast, compile=cfg.compile, cuda_graph=cfg.cuda_graph)
    whole = FastPath(model, device, fp_cfg)
    bare = FastPath(whole.model, device, fp_cfg, flat=BackboneOnly(whole.model))
    image1, K1 = (t.to(device) for t in example_inputs(1, size))
    with torch.inference_mode():
        flops_model = count_flops(lambda: whole.model({"image": image1, "K": K1}))
        flops_backbone = count_flops(lambda: whole.model.backbone(image1))
    rows = []
    for b in cfg.batches:
        _reset_peak(device)
        t_model = _bench_callable(whole, device, b, iters, warmup, size)
        mem = peak_memory_mb(device)
        t_back = _bench_callable(bare, device, b, iters, warmup, size)
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
            "model_over_backbone": t_model / t_back,
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
        "checkpoint": cfg.checkpoint,
        "image_size": size,
        "parameters": n_params,
        "weights": "random (speed does not depend on the values)" if cfg.checkpoint is None else "checkpoint",
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "flops_per_image_backbone": flops_backbone,
        "ceiling": ceiling,
        "inference": rows,
    }
    if cfg.train:
        tb = cfg.train_batch or max(cfg.batches)
        result["train"] = bench_train(model, cfg, device, tb, max(1, iters // 2), warmup // 2, ceiling["flops_per_s"])
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
    if "train" in result:
        t = result["train"]
        lines += [
            "",
            "| train batch | step ms | samples/s | GFLOP/s | % of ceiling | loss | data | peak MB |",
            "|---:|---:|---:|---:|---:|---|---|---:|",
            f"| {t['batch']} | {t['step_ms']:.1f} | {t['samples_per_s']:.1f} | {t['flops_per_s'] / 1e9:.1f} | "
            f"{100 * t['ceiling_ratio']:.0f}% | {t['loss']} | {t['data']} | {t['peak_memory_mb']:.0f} |",
        ]
    return "\n".join(lines)


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
    p.add_argument("--checkpoint", default=None, help="time this checkpoint folder instead of a random --preset")
    p.add_argument(
        "--batch", type=_int_list, default=None, help="inference batch sizes (default 1,8 on CPU; 1,256 on CUDA)"
    )
    p.add_argument("--train", action="store_true", help="also time training steps")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: largest --batch)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--matmul-n", type=int, default=None, help="ceiling matmul size (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--autocast", default="auto", help="auto (bf16 on CUDA, none on CPU), bf16, fp16, none")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--cache", default=None, help="training data cache folder (default: synthetic tensors)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    batches = args.batch or ((1, 256) if args.device == "cuda" else (1, 8))
    cfg = BenchConfig(
        device=args.device, preset=args.preset, batches=batches, train=args.train, train_batch=args.train_batch,
        iters=args.iters, warmup=args.warmup, threads=args.threads, matmul_n=args.matmul_n, autocast=args.autocast,
        compile=args.compile, cuda_graph=not args.no_cuda_graph, cache=args.cache, checkpoint=args.checkpoint,
    )  # fmt: skip
    try:
        result = run(cfg)
    except (BenchError, CheckpointError, KeyError) as exc:
        print(f"amt bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
