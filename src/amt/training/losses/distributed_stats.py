"""Batch statistics of the loss over the global batch of a distributed run.

Two AMT loss terms are functions of batch statistics, not means of per-sample values: the
diversity hinge (the batch standard deviation of the joints and object positions) and the kl
term (the class marginal over all queries). Averaged per rank, they would see B / world samples
and so a noisier, smaller spread than the single-process run on the same global batch. These
helpers compute them over the global batch: the per-rank tensors are gathered with
`torch.distributed.nn.functional` (autograd-aware: the backward sends each rank's share of the
gradient back to the rank that produced the samples, so after DDP's gradient averaging the
update equals the single-process one on the concatenated batch).

They reduce only inside `cross_rank_statistics()` (the trainer enters it around its training
step, which every rank runs with the same per-rank batch shape) and only when a process group
of more than one rank is initialised; everywhere else (single process, the per-rank batch-size
probe, diagnostics) they return their input's local statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("amt_cross_rank_statistics", default=False)


@contextlib.contextmanager
def cross_rank_statistics(enabled: bool = True) -> Iterator[None]:
    """Within this block the helpers below reduce over the ranks (when a group of > 1 rank exists).
    Every rank must then call them in the same order with tensors of the same shapes."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def reducing() -> bool:
    """True when the helpers reduce over ranks: enabled, and a process group of > 1 rank is up."""
    return _ENABLED.get() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """x (B, ...) of this rank -> (world * B, ...): every rank's x concatenated in rank order,
    differentiable with respect to this rank's x; x itself when not reducing."""
    if not reducing():
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of x over the ranks (differentiable); x itself when not reducing."""
    if not reducing():
        return x
    return dist_fn.all_reduce(x.clone(), op=dist.ReduceOp.SUM)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Elementwise mean of x over the ranks (differentiable); x itself when not reducing. The
    means over matched pairs and over proposal positives divide by it (DETR's num_boxes)."""
    if not reducing():
        return x
    return sum_over_ranks(x) / dist.get_world_size()


def logsumexp_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x (N, C) of this rank -> (C,) log sum over the global N of exp(x) (differentiable): each
    rank's logsumexp over its rows, gathered, then combined (log of a sum of sums)."""
    local = torch.logsumexp(x, dim=0)
    if not reducing():
        return local
    return torch.logsumexp(torch.stack(dist_fn.all_gather(local.contiguous())), dim=0)
