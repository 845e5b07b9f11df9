"""Validation sharded across data-parallel ranks.

`ShardedEvaluator` is the trainer's default evaluator when several ranks run
(`training.shard_validation`): each rank collects the predictions of one contiguous, disjoint
shard of the validation split (`shard_bounds`), the shards are gathered to rank 0 in rank order,
which is dataset order, and rank 0 computes the report from them exactly as a single process
would (`amt.evaluation.evaluator.report_from_predictions`), so the metrics are those of one
process up to the float noise of batching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from amt.evaluation.evaluator import collect_predictions, concat_predictions, report_from_predictions
from amt.training.distributed import DistContext, gather_to_main


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s shard of `size` samples: contiguous, disjoint, covering
    0..size-1 in rank order, sizes differing by at most one (later ranks may get none)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedEvaluator:
    """`(model, dataset) -> report` called on every rank: rank 0 gets the report of the whole
    dataset, the other ranks an empty dict. models_dir, batch_size (per rank), device: as for
    `amt.evaluation.evaluator.evaluate`."""

    def __init__(self, models_dir: str | Path, batch_size: int, device: torch.device, ctx: DistContext) -> None:
        self.models_dir, self.batch_size, self.device, self.ctx = models_dir, batch_size, device, ctx

    def __call__(self, model: torch.nn.Module, dataset: Dataset) -> dict[str, Any]:
        start, stop = shard_bounds(len(dataset), self.ctx.rank, self.ctx.world_size)  # type: ignore[arg-type]
        shard = None
        if stop > start:
            subset = Subset(dataset, range(start, stop))
            shard = collect_predictions(model, subset, batch_size=self.batch_size, device=self.device)
        gathered = gather_to_main(shard, self.ctx)
        if gathered is None:
            return {}
        parts = [p for p in gathered if p is not None]
        return report_from_predictions(concat_predictions(parts), self.models_dir)
