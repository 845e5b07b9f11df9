"""The trainer's side of checkpoints: which folder to resume from, what a checkpoint holds, and
saving it under its names (`amt.checkpoint` owns the files and their atomicity).

Folders are `checkpoints/step_NNNNNN` (at most one per step); the names `last` (always the
newest), `best` and `epoch_NNNN` are symlinks to them. Of the folders asked for by
`checkpoint.every_steps` / `every_epochs`, the newest `checkpoint.keep_last` are kept (0: all)
plus those `best` and `last` point to; the others (the `every_minutes`, signal and final saves)
are deleted once no name points to them. Before writing, the free space is checked against the
previous checkpoint's size (or, for the first, the state's tensor bytes) plus a margin; each
save logs its size. A save that cannot be written raises CheckpointError on every rank and
leaves the earlier checkpoints as they were.

Resume (`resolve_resume`): `checkpoint.resume_from=auto` (the default) continues the run folder's
newest complete checkpoint when there is one, so a restarted job (`torchrun --max-restarts`, a
requeued SLURM job) picks up where it stopped; otherwise it starts fresh, in a new or empty
folder, or in a run folder killed before its first checkpoint (only files the trainer writes);
any other non-empty folder is refused unless `training.overwrite=true` (then an earlier run's
`checkpoints/` is moved aside to `checkpoints_before_<time>`, never deleted). `resume_from=PATH`
resumes from a checkpoint or run folder; `null` never resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from amt.checkpoint import (
    CHECKPOINTS,
    LEGACY_STATE,
    CheckpointError,
    find_checkpoint,
    folder_bytes,
    load_trainer_state,
    newest_checkpoint,
    point_alias,
    prune_checkpoints,
    remove_leftovers,
    write_checkpoint,
)
from amt.training.distributed import DistContext, barrier, broadcast_object, gather_object
from amt.training.loggers import TENSORBOARD, check_output_dir
from amt.training.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

AUTO = "auto"
RUN_FILES = {"config.yaml", TENSORBOARD, CHECKPOINTS, "wandb"}  # what the trainer writes in a run folder


def _restartable(run_dir: Path) -> bool:
    """A run folder holding only what the trainer writes (a run killed before its first checkpoint)."""
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    return "config.yaml" in names and names <= RUN_FILES


def _resolve_on_main(cfg: Any, run_dir: Path) -> Path | None:
    resume_from = cfg.checkpoint.resume_from
    restart = False
    if resume_from == AUTO:
        found = newest_checkpoint(run_dir / CHECKPOINTS)
        if found is None and any((run_dir / CHECKPOINTS).glob(f"*/{LEGACY_STATE}")):
            find_checkpoint(run_dir)  # raises: the old format, with the conversion command
        restart = found is None and _restartable(run_dir)
        if restart:
            log.warning("%s: no complete checkpoint (killed before its first save): starting again", run_dir)
    else:
        found = find_checkpoint(resume_from) if resume_from else None
    check_output_dir(run_dir, cfg.training.overwrite, found is not None or restart)
    checkpoints = run_dir / CHECKPOINTS
    remove_leftovers(checkpoints)
    if found is None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        # a fresh run (training.overwrite=true) never mixes its checkpoints with an older run's
        aside = run_dir / f"{CHECKPOINTS}_before_{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("%s: holds an earlier run's checkpoints; moved to %s", checkpoints, aside)
        checkpoints.rename(aside)
    return found


def resolve_resume(cfg: Any, run_dir: Path, ctx: DistContext) -> Path | None:
    """The checkpoint folder to resume from (None: a fresh run), decided on rank 0 and shared;
    a refusal (CheckpointError, FileExistsError) is raised on every rank. cfg: the `RunConfig`."""
    result: Path | Exception | None = None
    if ctx.is_main:
        try:
            result = _resolve_on_main(cfg, run_dir)
        except (CheckpointError, FileExistsError) as exc:
            result = exc
    result = broadcast_object(result, ctx)
    if isinstance(result, Exception):
        raise result
    return result


def trainer_state(trainer: Any) -> dict[str, Any]:
    """Everything exact resume needs (every rank must call it: the RNG states are gathered)."""
    rng_states = gather_object(rng_state(), trainer.ctx)
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "loss": trainer.loss_fn.state_dict(),
        "rng": rng_states,
        "step": trainer.step,
        "epoch": trainer.epoch,
        "data_position": trainer.step - trainer.epoch * trainer.steps_per_epoch,
        "steps_per_epoch": trainer.steps_per_epoch,
        "skipped_steps": trainer.skipped_steps,
        "best_value": trainer.best_value,
        "world_size": trainer.ctx.world_size,
        "config": trainer.cfg.resolved,
    }


SPACE_MARGIN = 1.2  # free space wanted before a save: the estimate times this


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested state of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        obj = obj.values()
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def checkpoint_estimate(checkpoints: Path, state: dict[str, Any], model: Any) -> int:
    """Expected bytes of the next checkpoint folder: the newest complete one's size, else the
    tensor bytes of the trainer state and the saved model's weights."""
    previous = newest_checkpoint(checkpoints)
    if previous is not None:
        return folder_bytes(previous)
    return tensor_bytes(state) + tensor_bytes(model.state_dict())


def save(trainer: Any, names: list[str], keep: bool) -> Path:
    """Write checkpoints/step_<step> (rank 0) and point `names` (e.g. ["best", "last"]) at it;
    every rank must call this. keep=False: deleted once no name points to it. A save refused
    for lack of space (or failing to write) raises CheckpointError on every rank."""
    state = trainer_state(trainer)
    checkpoints = trainer.run_dir / CHECKPOINTS
    folder = checkpoints / f"step_{trainer.step:06d}"
    error: CheckpointError | None = None
    if trainer.ctx.is_main:
        try:
            needed = int(SPACE_MARGIN * checkpoint_estimate(checkpoints, state, trainer.eval_model))
            write_checkpoint(folder, trainer.eval_model, trainer.cfg.to_yaml(), state, trainer.step, keep, needed)
        except CheckpointError as exc:
            error = exc
        else:
            for name in names:
                point_alias(checkpoints, name, folder.name)
            deleted = prune_checkpoints(checkpoints, trainer.cfg.checkpoint.keep_last)
            log.info("saved checkpoint %s (step %d; %s; %.1f MB)%s", folder, trainer.step,
                     ", ".join(names) or "no name", folder_bytes(folder) / 1e6,
                     f"; deleted {', '.join(deleted)}" if deleted else "")  # fmt: skip
    error = broadcast_object(error, trainer.ctx)
    if error is not None:
        raise error
    barrier(trainer.ctx)
    return folder


def restore(trainer: Any, folder: Path) -> None:
    """Load a checkpoint folder's trainer state into `trainer` (every rank reads the folder)."""
    state = load_trainer_state(folder)
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if trainer.ema is not None:
            if state["ema"] is None:
                raise ValueError("it holds no EMA weights but training.ema.enabled is true")
            trainer.ema.load_state_dict(state["ema"])
        trainer.loss_fn.load_state_dict(state["loss"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{folder}: does not fit this run's model/optimizer ({str(exc)[:400]}); resume with the config it "
            "was saved with, or start a new run (another training.output_dir, or checkpoint.resume_from=null)"
        ) from exc
    if state["steps_per_epoch"] != trainer.steps_per_epoch:
        raise CheckpointError(
            f"{folder}: steps_per_epoch {state['steps_per_epoch']} != {trainer.steps_per_epoch} now (dataset, "
            "batch size or world size changed): the data position cannot be restored"
        )
    trainer.step = int(state["step"])
    trainer.skipped_steps = int(state["skipped_steps"])
    trainer.best_value = state["best_value"]
    rng = state["rng"]
    if len(rng) == trainer.ctx.world_size:
        set_rng_state(rng[trainer.ctx.rank])
    else:
        log.warning("%s: saved by %d ranks, resumed on %d: RNG states re-seeded", folder, len(rng),
                    trainer.ctx.world_size)  # fmt: skip
    resolved = trainer.cfg.resolved
    changed = {k for k in set(state["config"]) | set(resolved) if state["config"].get(k) != resolved.get(k)}
    if changed - {"checkpoint", "training"}:
        log.warning("resuming with a config that differs from the checkpoint's in %s", sorted(changed))
    log.info("resumed from %s at step %d (epoch %d)", folder, trainer.step, trainer.epoch)
