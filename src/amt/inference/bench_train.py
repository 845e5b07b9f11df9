"""`amt bench --train`: samples/s of whole training steps, and with `--train-variants` the same
step with each switchable part of the lean step on and off.

One step = `amt.training.step.TrainStep` (forward, AMTLoss, backward, AdamW) + the EMA update
the trainer makes after it (`amt.training.ema.ModelEMA`, one fused multi-tensor lerp). Variants:
- `default`: eager forward, fused EMA;
- `ema_per_tensor`: the EMA as one `lerp_` per parameter (the update before the fused one);
- `compiled`: the forward under `torch.compile` (`training.compile=true`);
- `ddp_find_unused_off` / `ddp_find_unused_on`: the model wrapped in DistributedDataParallel
  on a one-rank gloo group in this process, without and with the unused-parameter search that
  the trainer now asks for only when a stage switches a loss term off (a single process: the
  all-reduces are local, so this isolates the search's own cost).
Not switchable, so not compared: the batched Hungarian matching (the per-sample path is gone)
and the cross-rank diversity / kl statistics (no-ops in one process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from amt.data.loaders import GPUCachedDataset
from amt.inference.export import InputSpec
from amt.inference.timing import peak_memory_mb, reset_peak, time_call
from amt.models.info import count_flops
from amt.testing import free_port, random_batch
from amt.training.ema import ModelEMA
from amt.training.losses import AMTLoss
from amt.training.optim import adamw
from amt.training.step import TrainStep

log = logging.getLogger(__name__)

TRAIN_VARIANTS = ("default", "ema_per_tensor", "compiled", "ddp_find_unused_off", "ddp_find_unused_on")


def train_batches(cache: str | None, device: torch.device, batch: int, size: int) -> Iterator[dict[str, Any]]:
    """Endless batches: from the cache folder (GPUCachedDataset on the device) or one synthetic
    batch of `size`-pixel images (`amt.testing.random_batch`)."""
    if cache is None:
        fixed = random_batch(batch, image_size=size, device=device)
        while True:
            yield fixed
    data = GPUCachedDataset(cache, device)
    g = torch.Generator(device="cpu").manual_seed(0)
    while True:
        yield from data.batches(batch, shuffle=True, generator=g, drop_last=True)


@torch.no_grad()
def ema_per_tensor(ema: ModelEMA, model: nn.Module, decay: float = 0.999) -> None:
    """The reference EMA update, one kernel per tensor (what the fused update replaced)."""
    for e, p in zip(ema.module.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.module.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@contextlib.contextmanager
def _one_rank_group() -> Iterator[None]:
    """A one-process gloo group for DDP (left alone if the caller already has one)."""
    if dist.is_initialized():
        yield
        return
    store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _time_variant(
    variant: str,
    model: nn.Module,
    batches: Iterator[dict[str, Any]],
    device: torch.device,
    autocast: torch.dtype | None,
    iters: int,
    warmup: int,
) -> float:
    """Median seconds per step of one variant (fresh optimizer and EMA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, 1e-5, device)
    ema = ModelEMA(model)
    with _one_rank_group() if variant.startswith("ddp") else contextlib.nullcontext():
        net = model
        if variant.startswith("ddp"):
            net = DistributedDataParallel(model, find_unused_parameters=variant == "ddp_find_unused_on")
        train_step = TrainStep(net, AMTLoss().to(device), opt, autocast_dtype=autocast, compile=variant == "compiled")

        def step() -> None:
            train_step(next(batches))
            if variant == "ema_per_tensor":
                ema_per_tensor(ema, model)
            else:
                ema.update(model)

        seconds = time_call(step, device, iters, warmup)
        net = train_step = None  # DDP's reducer goes before its process group
    return seconds


def bench_train(
    model: nn.Module,
    device: torch.device,
    batch: int,
    iters: int,
    warmup: int,
    ceiling: float,
    autocast: torch.dtype | None = None,
    cache: str | None = None,
    variants: tuple[str, ...] = ("default",),
) -> dict:
    """Samples/s of whole training steps (see the module docstring) for each of `variants`; the
    first variant's row is the headline (step time, FLOPs counted forward + backward)."""
    unknown = sorted(set(variants) - set(TRAIN_VARIANTS))
    if unknown:
        raise ValueError(f"training variants {unknown}: expected some of {', '.join(TRAIN_VARIANTS)}")
    model.train()
    batches = train_batches(cache, device, batch, InputSpec.of(model).size)
    rows = []
    reset_peak(device)
    for variant in variants:
        seconds = _time_variant(variant, model, batches, device, autocast, iters, warmup)
        rows.append({"variant": variant, "step_ms": seconds * 1e3, "samples_per_s": batch / seconds})
        log.info("train %s: %.1f ms/step, %.1f samples/s", variant, seconds * 1e3, batch / seconds)
    params = [p for p in model.parameters() if p.requires_grad]
    probe = TrainStep(model, AMTLoss().to(device), adamw(params, 0.0, device), autocast_dtype=autocast)
    flops = count_flops(lambda: probe(next(batches)))
    model.eval()
    head = rows[0]
    seconds = head["step_ms"] / 1e3
    return {
        "batch": batch,
        "loss": "AMTLoss",
        "data": cache or "synthetic tensors",
        "step_ms": head["step_ms"],
        "samples_per_s": head["samples_per_s"],
        "flops_per_step": flops,
        "flops_per_s": flops / seconds,
        "ceiling_ratio": flops / seconds / ceiling,
        "peak_memory_mb": peak_memory_mb(device),
        "variants": rows,
    }
