"""`amt sweep --devices 0,1,2,3`: one worker process per device, each running trials of the
shared study on its own device (`amt.training.sweep` starts them and writes the results)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerAssignment:
    """One worker process of a `--devices` sweep: its device, the environment it adds to the
    parent's, and the run-config override that puts its trials there."""

    device: str
    env: dict[str, str]
    override: str


def assign_devices(spec: str, visible: str | None = None) -> list[WorkerAssignment]:
    """One worker per entry of `spec` ("0,1,2,3", "cuda:1", "cpu,cpu"). A GPU index N (or cuda:N)
    gives the worker CUDA_VISIBLE_DEVICES=<the N-th visible GPU> and training.device=cuda, so that
    it sees only its own GPU; `visible`: the parent's CUDA_VISIBLE_DEVICES (default: the
    environment's). ValueError for an entry that is neither, or a GPU listed twice."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    mapping = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    workers: list[WorkerAssignment] = []
    for entry in (e.strip() for e in spec.split(",")):
        if entry == "cpu":
            workers.append(WorkerAssignment("cpu", {}, "training.device=cpu"))
            continue
        index = entry.removeprefix("cuda:")
        if not index.isdigit():
            raise ValueError(f"--devices {spec}: {entry!r} is neither a GPU index (0, cuda:0) nor cpu")
        if mapping is not None and int(index) >= len(mapping):
            raise ValueError(f"--devices {spec}: GPU {index} is not among CUDA_VISIBLE_DEVICES={visible}")
        physical = mapping[int(index)] if mapping is not None else index
        workers.append(WorkerAssignment(f"cuda:{index}", {"CUDA_VISIBLE_DEVICES": physical}, "training.device=cuda"))
    gpus = [w.device for w in workers if w.device != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--devices {spec}: a GPU is listed twice (one trial per GPU)")
    return workers


def worker_argv(argv: list[str], worker: WorkerAssignment) -> list[str]:
    """`amt sweep` arguments of one worker: `argv` without --devices, led by `--worker <its override>`
    (in front, so that the positional overrides of `argv` stay together)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return ["--worker", worker.override, *out]


def run_workers(argv: list[str], workers: list[WorkerAssignment]) -> list[int]:
    """Start one `amt sweep` worker process per assignment and wait for all; their exit codes."""
    procs = []
    for worker in workers:
        cmd = [sys.executable, "-m", "amt.cli", "sweep", *worker_argv(argv, worker)]
        log.info("sweep worker on %s: %s", worker.device, " ".join(cmd[3:]))
        procs.append(subprocess.Popen(cmd, env={**os.environ, **worker.env}))
    return [p.wait() for p in procs]


def in_process(workers: list[WorkerAssignment]) -> list[str]:
    """A single device runs in this process: its environment is applied (before this process
    first touches CUDA) and its override returned; otherwise nothing changes and [] is returned."""
    if len(workers) != 1:
        return []
    os.environ.update(workers[0].env)
    return [workers[0].override]
