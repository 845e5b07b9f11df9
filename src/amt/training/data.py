"""Training data: the cache folders of the run, rank-local batches in a deterministic order,
and the default validation evaluator."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amt.data.cache import (
    CacheError,
    EmptySplitError,
    cache_folder,
    cache_problem,
    check_cache_margin,
    ensure_cache,
    open_cache,
)
from amt.data.cache_source import check_cache_source
from amt.data.loaders import (
    CacheBudgetError,
    CachedDataset,
    GPUCachedDataset,
    Prefetcher,
    collate,
    free_device_memory,
)
from amt.data.object_tables import OBJECT_TABLES_FILE, ObjectTables
from amt.errors import ConfigError
from amt.evaluation.evaluator import evaluate
from amt.training.config import DataConfig
from amt.training.distributed import DistContext, barrier, broadcast_object
from amt.training.rng import epoch_order, mix_seed
from amt.training.sequence import SequenceSampler

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module, Any], dict]  # (model, dataset) -> nested metrics dict


def resolve_cache(
    data: DataConfig,
    split: str,
    cache_dir: str | None,
    ctx: DistContext,
    optional: bool = False,
    margin: float | None = None,
) -> Path | None:
    """The cache folder of `split`, built from `data.root` when missing or incomplete (rank 0
    builds: an unfinished build resumes, a damaged cache is rebuilt). CacheError when there is no
    complete cache and no `data.root` to build it. optional: a split with no samples in
    `data.root` logs a warning and gives None (used for the validation split) instead of raising
    EmptySplitError. margin: the crop margin the cache must have (`ensure_cache`; the validation
    split's is the training cache's), None: any."""
    if cache_dir is None:
        if data.root is None:
            raise ConfigError(
                "config: set data.root (a dataset folder read as data.format) or data.cache_dir (a built cache)"
            )
        folder = cache_folder(data.root, split, data.image_size)
    else:
        folder = Path(cache_dir)
    problem = cache_problem(folder)
    if problem is None:
        if cache_dir is None:  # found under data.root: still a cache of the data there? (every rank: same answer)
            check_cache_source(folder, data.root, split, data.format)
        if margin is not None:
            check_cache_margin(folder, margin)
        return folder
    if data.root is None:
        raise CacheError(f"{problem}; data.root is not set, so it cannot be built")
    empty: EmptySplitError | None = None
    if ctx.is_main:
        try:
            ensure_cache(
                data.root, split, data.image_size, folder, workers=data.cache_workers, format=data.format, margin=margin
            )
        except EmptySplitError as exc:
            if not optional:
                raise
            empty = exc
    if broadcast_object(empty is not None, ctx):
        log.warning("%s; validation is skipped (set data.val_split=null to silence this)", empty)
        return None
    barrier(ctx)
    return folder


def cache_budget(data: DataConfig, device: torch.device) -> int:
    """Bytes one rank's cache shard may occupy on `device`: `data.gpu_cache_max_gb`, else
    `data.gpu_cache_fraction` of the memory free on it now (`free_device_memory`)."""
    if data.gpu_cache_max_gb is not None:
        return int(data.gpu_cache_max_gb * 1e9)
    if not 0 < data.gpu_cache_fraction <= 1:
        raise ConfigError(f"config data.gpu_cache_fraction={data.gpu_cache_fraction}: expected a value in (0, 1]")
    return int(data.gpu_cache_fraction * free_device_memory(device))


class TrainBatches:
    """Rank-local training batches: the cache sharded `rank::world_size`, each shard permuted
    per epoch by `epoch_order`. Every rank runs the same number of steps per epoch.

    data.loader: "gpu" (and "auto" on CUDA) places this rank's shard on its device when it fits
    the budget (`cache_budget`); otherwise (and "dataset", and "auto" on the CPU) batches are read
    from the cache by a DataLoader, into pinned memory on CUDA; after a budget fallback they are
    also read ahead by a background thread (`Prefetcher`). `kind` is "gpu" or "dataset".
    """

    def __init__(self, folder: Path, data: DataConfig, ctx: DistContext, seed: int) -> None:
        kind = data.loader if data.loader != "auto" else ("gpu" if ctx.device.type == "cuda" else "dataset")
        if kind not in ("gpu", "dataset"):
            raise ConfigError(f"config data.loader: {data.loader!r}; expected auto, gpu or dataset")
        normalize = not data.augment  # BatchAugment takes uint8 and normalises on the device
        self.seed, self.ctx = seed, ctx
        self.num_workers = data.num_workers
        self.prefetch = False
        self.dataset: GPUCachedDataset | CachedDataset | None = None
        if kind == "gpu":
            budget = cache_budget(data, ctx.device)
            need = GPUCachedDataset.shard_bytes(folder, ctx.rank, ctx.world_size)
            try:
                self.dataset = GPUCachedDataset(
                    folder, ctx.device, ctx.rank, ctx.world_size, normalize=normalize, max_bytes=budget
                )
                log.info("rank %d: cache shard on %s: %.3f GB (budget %.3f GB)", ctx.rank, ctx.device,
                         need / 1e9, budget / 1e9)  # fmt: skip
            except CacheBudgetError:
                log.warning(
                    "data.loader=%s: rank %d's cache shard needs %.3f GB, over the %.3f GB budget on %s "
                    "(data.gpu_cache_max_gb, else data.gpu_cache_fraction of free memory): reading batches from "
                    "pinned host memory with asynchronous prefetch instead",
                    data.loader, ctx.rank, need / 1e9, budget / 1e9, ctx.device,
                )  # fmt: skip
                kind, self.prefetch = "dataset", True
        if self.dataset is None:
            self.dataset = CachedDataset(folder, data.cache_mode, normalize, ctx.rank, ctx.world_size)
        self.kind = kind
        self.global_size = int(len(self.dataset.meta))
        self.sequence = None  # data.sequence_length >= 2: clips of consecutive frames
        if data.sequence_length > 1:
            local_meta = self.dataset.meta[ctx.rank :: ctx.world_size]
            self.sequence = SequenceSampler(local_meta, data.sequence_length, seed)

    def samples(self, b: int) -> dict[str, Any]:
        """The first b local samples (repeated when the shard is smaller) as one batch, from
        where they were placed (the batch-size probe uses it)."""
        idx = torch.arange(b) % len(self.dataset)
        if isinstance(self.dataset, GPUCachedDataset):
            return self.dataset.get(idx)
        return collate(self.dataset.__getitems__(idx.tolist()))

    def steps_per_epoch(self, per_rank_batch: int) -> int:
        if self.sequence is not None:
            return self.sequence.steps_per_epoch(per_rank_batch)
        return (self.global_size // self.ctx.world_size) // per_rank_batch

    def epoch(self, epoch: int, first_step: int, stop_step: int, micro: int, accum: int) -> Iterator[list[dict]]:
        """Micro-batch lists (accum of them, `micro` samples each) for steps [first, stop)."""
        order = epoch_order(len(self.dataset), self.seed, epoch)
        per_step = micro * accum
        chunks = [
            order[s * per_step + m * micro : s * per_step + (m + 1) * micro]
            for s in range(first_step, stop_step)
            for m in range(accum)
        ]
        if self.sequence is not None:
            chunks = self.sequence.chunks(epoch, first_step, stop_step, micro, accum)
        if self.kind == "gpu":
            batches: Iterator[dict] = (self.dataset.get(idx) for idx in chunks)
        else:
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=[c.tolist() for c in chunks],
                collate_fn=collate,
                num_workers=self.num_workers,
                pin_memory=self.ctx.device.type == "cuda",
                generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x10AD)),
            )
            batches = iter(Prefetcher(loader) if self.prefetch else loader)
        group: list[dict] = []
        for batch in batches:
            if self.sequence is not None:
                batch["sequence_length"] = self.sequence.length
            group.append(batch)
            if len(group) == accum:
                yield group
                group = []


def cache_samples(data: DataConfig, ctx: DistContext) -> Callable[[int], dict[str, Any]]:
    """samples(b): the first b samples of the training cache (repeated when it is smaller)."""
    folder = resolve_cache(data, data.split, data.cache_dir, ctx)
    assert folder is not None  # optional=False: an empty split raised
    dataset = CachedDataset(folder, data.cache_mode)
    return lambda b: collate([dataset[i % len(dataset)] for i in range(b)])


def models_dir_of(data_folder: Path) -> str:
    """The object-models folder of the dataset a cache was built from."""
    params = open_cache(data_folder).params
    return params.get("models_dir") or str(Path(params["root"]) / "models")


def object_tables_of(data_folder: Path, write: bool = True) -> ObjectTables:
    """The object tables (symmetries, core radii) of the dataset a cache was built from, computed
    from its models folder and cached next to the cache (`<cache parent>/object_tables.json`,
    i.e. `<root>/cache/` by default). write: store them when computed (rank 0 only under DDP)."""
    return ObjectTables.for_models_dir(models_dir_of(data_folder), data_folder.parent / OBJECT_TABLES_FILE, write)


def default_evaluator(data_folder: Path, batch_size: int, device: torch.device) -> Evaluator:
    """`amt.evaluation.evaluator.evaluate` bound to the dataset's models folder."""
    return functools.partial(evaluate, models_dir=models_dir_of(data_folder), batch_size=batch_size, device=device)
