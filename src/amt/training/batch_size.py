"""`training.batch_size=auto`: the largest global batch whose training step fits in GPU memory.

Bounded search over the per-device micro-batch: double from 1 until a step runs out of memory
or the bound `training.auto_batch_max` (global) is reached, then bisect between the last size
that fitted and the first that did not. Each probe is one real training step (forward,
backward, AdamW step, EMA copy when enabled) on samples of the training cache, with the run's
precision (autocast) and `training.compile`, as the run's `TrainStep`. The trainer probes after
its training cache is placed (`TrainBatches`), so a GPU-resident cache shard is already in
memory and the probe's samples come from it. In a distributed run each rank probes alone (an
out-of-memory error on one rank inside a collective would hang the others) with a buffer the
size of its trainable parameters held, standing in for DDP's gradient buckets; the global
batch is micro x world_size x grad_accum_steps, the smallest micro over the ranks.

Without CUDA there is no allocator limit to measure: the configured fallback
`training.auto_batch_fallback` is used and the log says so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch

from amt.data.loaders import batch_to_device
from amt.data.transforms import normalize_images
from amt.models import AMT
from amt.training.data import cache_samples
from amt.training.distributed import gather_object
from amt.training.losses import AMTLoss
from amt.training.optim import adamw
from amt.training.step import TrainStep, autocast_dtype_for

log = logging.getLogger(__name__)

TryStep = Callable[[int], None]  # runs one step at a micro-batch size; raises on out-of-memory


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or any allocator) out-of-memory error."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


def search_batch_size(try_step: TryStep, high: int, low: int = 1) -> tuple[int, list[tuple[int, bool]]]:
    """Largest b in [low, high] for which `try_step(b)` does not run out of memory, assuming
    memory grows with b. Returns (b, probes as (size, fitted) in call order). At most about
    2 log2(high / low) probes. Errors other than out-of-memory propagate."""
    probes: list[tuple[int, bool]] = []

    def fits(b: int) -> bool:
        try:
            try_step(b)
            ok = True
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            ok = False
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        probes.append((b, ok))
        return ok

    if high < low:
        raise ValueError(f"batch-size search: bound {high} is below the minimum {low}")
    if not fits(low):
        raise RuntimeError(f"batch-size search: even a micro-batch of {low} runs out of memory")
    good, bad = low, None
    while bad is None and good < high:
        b = min(2 * good, high)
        if fits(b):
            good = b
        else:
            bad = b
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, probes


class TrainingStepProbe:
    """A `TryStep` running one real training step (`amt.training.step.TrainStep`: autocast
    forward, fp32 loss, backward, AdamW update) of the run's model at micro-batch b.

    cfg: the `RunConfig`; samples(b) -> a batch-contract dict of b samples (on any device).
    The model, an EMA copy (when enabled: its memory counts too), the loss and an AdamW
    optimizer are built once and kept for every probe.
    """

    def __init__(
        self, cfg: Any, device: torch.device, samples: Callable[[int], dict[str, Any]], distributed: bool = False
    ) -> None:
        t = cfg.training
        self.device, self.samples = device, samples
        # memory does not depend on the weights' values: no backbone weights read (disk/network) per probe
        self.model = AMT(cfg.model, load_backbone_weights=False)
        self.model.to(device)
        self.ema = copy.deepcopy(self.model) if t.ema.enabled else None
        self.loss_fn = AMTLoss(cfg.loss).to(device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(trainable, 0.0, device)
        # DDP's gradient buckets: one more copy of the trainable parameters' gradients
        numel = sum(p.numel() for p in trainable)
        self.ddp_buckets = torch.empty(numel if distributed else 0, dtype=torch.float32, device=device)
        self.step = TrainStep(
            self.model, self.loss_fn, self.optimizer, autocast_dtype=autocast_dtype_for(t.precision, device),
            compile=t.compile,
        )  # fmt: skip

    def __call__(self, b: int) -> None:
        batch = batch_to_device(self.samples(b), self.device)
        if batch["image"].dtype == torch.uint8:
            batch["image"] = normalize_images(batch["image"])
        self.step(batch)


def resolve_batch_size(
    cfg: Any, ctx: Any, try_step: TryStep | None = None, samples: Callable[[int], dict[str, Any]] | None = None
) -> int:
    """The global batch size for `training.batch_size=auto` (see the module docstring).

    cfg: the `RunConfig`; ctx: the `DistContext`. try_step: injected probe (tests); default a
    real training step (`TrainingStepProbe`), on CUDA only, on `samples(b)` (the placed training
    cache's `TrainBatches.samples`; default read from the training cache).
    """
    t = cfg.training
    per_step = ctx.world_size * t.grad_accum_steps
    if try_step is None and ctx.device.type != "cuda":
        log.warning(
            "training.batch_size=auto measures GPU memory; the device is %s, so the configured fallback "
            "training.auto_batch_fallback=%d is used",
            ctx.device, t.auto_batch_fallback,
        )  # fmt: skip
        return int(t.auto_batch_fallback)
    if try_step is None:
        try_step = TrainingStepProbe(cfg, ctx.device, samples or cache_samples(cfg.data, ctx), ctx.enabled)
    high = max(1, t.auto_batch_max // per_step)
    micro, probes = search_batch_size(try_step, high)
    del try_step  # the probe's model and optimizer state are freed before the run's are built
    micro = min(gather_object(micro, ctx))  # every rank gets the smallest
    size = micro * per_step
    log.info(
        "training.batch_size=auto: micro-batch %d per device fits (probes %s; bound %d), global batch %d",
        micro, ", ".join(f"{b}{'' if ok else ' OOM'}" for b, ok in probes), t.auto_batch_max, size,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return size
