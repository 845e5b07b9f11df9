"""Process-group setup for `torchrun` (DDP: NCCL on GPU, gloo on CPU) and cross-rank reductions.

A run without torchrun's environment (WORLD_SIZE unset or 1) is a plain single process; every
helper here then degrades to a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from amt.errors import ConfigError, check_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> cuda:<local_rank> when CUDA is available, else cpu; "cuda" -> cuda:<local_rank>,
    modulo the visible GPUs: a scheduler that gives each process its own GPU (SLURM
    `--gpus-per-task=1`, CUDA_VISIBLE_DEVICES per rank) leaves one visible device, cuda:0."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        visible = torch.cuda.device_count()
        return torch.device("cuda", local_rank % visible if visible else local_rank)
    return torch.device(name)


class DeviceConfigError(ConfigError):
    """A `training.device` that cannot work for this launch (one line for the user)."""


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), or return a single-process context when WORLD_SIZE is unset/1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and device.startswith("cuda:"):
        # NCCL refuses two ranks on one GPU, deep inside the first collective
        raise DeviceConfigError(
            f"config training.device={device} with {world_size} ranks would put every rank on that one GPU; "
            "use training.device=cuda (each rank takes its LOCAL_RANK's GPU)"
        )
    check_device(device, f"training.device={device}")  # a ConfigError, before torch.cuda fails obscurely
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # rank 0 validates alone while the others wait: allow long validations before timing out
        timeout = timedelta(hours=2)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and "MASTER_ADDR" in os.environ:
            # torchrun keeps its store across worker restarts, so a restarted group would read the
            # killed workers' addresses (gloo: connection refused): one key prefix per restart
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=rank == 0 and not agent_store, timeout=timeout)  # fmt: skip
            store = dist.PrefixStore(f"amt/restart_{restart}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(ctx: DistContext) -> None:
    """Barrier, then leave the process group (without the barrier a rank can abort at exit)."""
    if ctx.enabled and dist.is_initialized():
        barrier(ctx)
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        # NCCL: the rank's own GPU, not whichever device is current (else a warning, or GPU 0 when unset)
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean of each scalar over ranks (every rank must pass the same keys)."""
    if not ctx.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v / ctx.world_size for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True if `flag` is true on any rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """List of every rank's `obj`, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any, ctx: DistContext) -> list[Any] | None:
    """List of every rank's `obj`, in rank order, on rank 0 only (None elsewhere): what only the
    main rank reads (validation shards) is not sent to every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def terms_switched_off(weights: Mapping[str, float], stage_multipliers: Sequence[Mapping[str, float]]) -> list[str]:
    """Loss terms whose weight (base weight x a stage's multiplier, missing = 1) is 0 in some stage.

    DDP needs `find_unused_parameters=True` only when some trainable parameter gets no gradient
    in a step, which happens when a term is switched off and with it the head feeding only that
    term; the search costs a traversal of the autograd graph every step, so the trainer asks for
    it only when this list is not empty (a term at 0 is taken to possibly switch a head off)."""
    stages = list(stage_multipliers) or [{}]
    return sorted({name for m in stages for name, w in weights.items() if float(w) * float(m.get(name, 1.0)) == 0.0})
