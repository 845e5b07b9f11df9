"""The training loop: AdamW with param groups, warm-up + cosine, stages, EMA, DDP, checkpoints.

Determinism (exact resume): data order, augmentation and the global RNGs are functions of
(seed, step) as described in `amt.training.rng`; the global RNG states are saved in every
checkpoint. So N steps in one run and N/2 + resume + N/2 give bit-identical parameters on CPU.

Run folder (`training.output_dir`):

    config.yaml                 the resolved run config
    tensorboard/                scalars (train/*, val/*)
    checkpoints/step_NNNNNN/    one folder per saved step; last, best, epoch_NNNN: names (symlinks)
                                pointing at one (`training.checkpointing`, `amt.checkpoint`)

Reliability: `checkpoint.resume_from=auto` continues the run folder's newest complete checkpoint;
SIGTERM / SIGUSR1 save at the next step boundary and raise `TrainingPreempted` (`amt train` exits
75); `checkpoint.every_minutes` bounds the work a hard kill loses (`training.preemption`).

The parts live next to the loop: the step (`training.step`), data (`training.data`), optimiser
and schedule (`training.optim`), loggers (`training.loggers`), checkpoint files
(`amt.checkpoint`). Extension points: `Callback` (`training.callbacks`: per-step, validation,
start/end hooks, receiving the trainer and a `StepInfo`), `evaluator` (any callable
`(model, dataset) -> dict`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from amt.data.augment import BatchAugment
from amt.data.cache import cache_crop_margin
from amt.data.loaders import CachedDataset, batch_to_device
from amt.errors import ConfigError
from amt.locks import FolderLock, FolderLockedError
from amt.models import AMT
from amt.models.backbone import check_backbone_weights
from amt.training.batch_size import resolve_batch_size
from amt.training.callbacks import Callback, StepInfo, callbacks_from_config
from amt.training.checkpointing import resolve_resume, restore, save
from amt.training.config import RunConfig
from amt.training.data import Evaluator, TrainBatches, default_evaluator, models_dir_of, object_tables_of, resolve_cache
from amt.training.distributed import (
    DistContext,
    all_reduce_mean,
    any_rank,
    broadcast_object,
    gather_object,
    resolve_device,
    terms_switched_off,
)
from amt.training.ema import ModelEMA
from amt.training.loggers import RunLoggers, flatten_metrics, prediction_spread, summarize_metrics
from amt.training.losses import TERM_NAMES, AMTLoss
from amt.training.losses.distributed_stats import cross_rank_statistics
from amt.training.optim import build_optimizer, head_lr
from amt.training.preemption import SaveClock, StopSignals, TrainingPreempted
from amt.training.rng import mix_seed, seed_global_rngs
from amt.training.schedule import StageSchedule
from amt.training.sequence import ClipAugment
from amt.training.step import TrainStep, autocast_dtype_for
from amt.training.validation import ShardedEvaluator

log = logging.getLogger(__name__)

SPREAD_RANKS = "_spread_ranks"  # all_reduce_mean key of _log_step: the fraction of ranks with a spread


def record_crop_margin(model: torch.nn.Module, margin: float, train_folder: Path) -> None:
    """Write the crop margin of the training cache `train_folder` into the model's config, which its
    checkpoints save: `amt predict`, `amt eval` and `amt debug` then frame new crops as the model
    learned them."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "crop_margin"):
        return
    if config.crop_margin is not None and abs(config.crop_margin - margin) > 1e-6:
        log.warning("%s: crops of margin %g, the model's config says %g: the model learns (and records) %g",
                    train_folder, margin, config.crop_margin, margin)  # fmt: skip
    config.crop_margin = margin


class Trainer:
    """Trains `model` (built from `cfg.model` when not given) on the cache of `cfg.data`.

    ctx: the distributed context (single process by default). evaluator: `(model, dataset) ->
    dict` run on rank 0 every `training.val_every_epochs` epochs with the EMA weights; "default"
    uses `amt.evaluation.evaluator.evaluate`, None disables validation.
    """

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext | None = None,
        *,
        model: nn.Module | None = None,
        evaluator: Evaluator | str | None = "default",
        callbacks: Sequence[Callback] = (),
    ) -> None:
        t = cfg.training
        # without a context (the Python API, `amt sweep`): one process on training.device
        self.cfg, self.ctx = cfg, ctx or DistContext(device=resolve_device(t.device))
        self.device = self.ctx.device
        self.callbacks = list(callbacks) + callbacks_from_config(cfg)
        self.run_dir = Path(t.output_dir)
        self.resume_path = resolve_resume(cfg, self.run_dir, self.ctx)  # auto, a path, or None (fresh)
        if model is None and self.resume_path is None:  # unreachable weights stop the run before any work
            check_backbone_weights(cfg.model.pretrained_weights)
        size = getattr(getattr(model, "config", None), "image_size", None) or cfg.model.image_size
        if size != cfg.data.image_size:
            raise ConfigError(
                f"config model.image_size={size} but data.image_size={cfg.data.image_size}: the model takes "
                "the cache's crops; set data.image_size (model.image_size follows it)"
            )

        train_folder = resolve_cache(cfg.data, cfg.data.split, cfg.data.cache_dir, self.ctx)
        self.data = TrainBatches(train_folder, cfg.data, self.ctx, t.seed)  # placed first: auto batch sees it
        self.crop_margin = cache_crop_margin(train_folder)  # recorded in the model; validation crops must match
        if t.batch_size == "auto":
            t.batch_size = resolve_batch_size(cfg, self.ctx, samples=self.data.samples)
        if not isinstance(t.batch_size, int):
            raise ConfigError(f"config training.batch_size={t.batch_size!r}: expected an integer or 'auto'")
        micro, rest = divmod(t.batch_size, self.ctx.world_size * t.grad_accum_steps)
        if rest or micro == 0:
            raise ConfigError(
                f"config training.batch_size={t.batch_size}: expected a multiple of world_size x grad_accum_steps "
                f"= {self.ctx.world_size} x {t.grad_accum_steps}"
            )
        self.micro_batch = micro

        # the smallest over the ranks: sequence clips are counted per rank shard, and a rank with more
        # steps would wait alone in a collective (DDP, any_rank) the others never reach
        self.steps_per_epoch = min(gather_object(self.data.steps_per_epoch(micro * t.grad_accum_steps), self.ctx))
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{train_folder}: {self.data.global_size} samples are fewer than one global batch "
                f"(training.batch_size={t.batch_size})"
            )
        self.total_steps = t.max_steps if t.max_steps is not None else t.epochs * self.steps_per_epoch
        self.val_dataset = None
        # several ranks with the default evaluator: each validates a shard (training.validation)
        self.sharded_validation = self.ctx.enabled and t.shard_validation and evaluator == "default"
        same = cfg.data.val_split == cfg.data.split and cfg.data.val_cache_dir == cfg.data.cache_dir
        if same and cfg.data.val_split is not None and evaluator is not None and self.ctx.is_main:
            log.warning("data.val_split is data.split (%s): validation measures the training data, not held-out "
                        "frames (set data.val_split to another split, or null)", cfg.data.split)  # fmt: skip
        if cfg.data.val_split is not None and evaluator is not None and (self.ctx.is_main or self.sharded_validation):
            val_ctx = self.ctx if self.sharded_validation else DistContext()
            # validated on crops framed like the training crops (a cache of another margin is refused)
            val_folder = resolve_cache(
                cfg.data, cfg.data.val_split, cfg.data.val_cache_dir, val_ctx, True, self.crop_margin
            )
            self.val_dataset = CachedDataset(val_folder, cfg.data.cache_mode) if val_folder else None
            if evaluator == "default" and val_folder:
                batch = t.batch_size // self.ctx.world_size
                evaluator = (
                    ShardedEvaluator(models_dir_of(val_folder), batch, self.device, self.ctx)
                    if self.sharded_validation
                    else default_evaluator(val_folder, batch, self.device)
                )
        self.evaluator = evaluator if callable(evaluator) else None
        self.validation_enabled = bool(
            broadcast_object(self.evaluator is not None and self.val_dataset is not None, self.ctx)
        )

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        fresh = self.resume_path is None  # a resumed run takes its backbone from the checkpoint
        self.model = (model if model is not None else AMT(cfg.model, load_backbone_weights=fresh)).to(self.device)
        record_crop_margin(self.model, self.crop_margin, train_folder)
        # symmetry centres and core radii from the data's own object meshes (the loss and its matching use them)
        tables = object_tables_of(train_folder, write=self.ctx.is_main)
        self.loss_fn = AMTLoss(cfg.loss, tables.symmetries, tables.core_radius).to(self.device)
        self.stages = StageSchedule(t.stages, self.total_steps)
        for stage in t.stages:
            self.loss_fn.set_stage_multipliers(stage.loss_multipliers)  # fail early on unknown term names
        self.augment = BatchAugment(cfg.data.augment_params) if cfg.data.augment else None
        if self.augment is not None and cfg.data.sequence_length > 1:
            self.augment = ClipAugment(self.augment, cfg.data.sequence_length)

        self.optimizer, self.scheduler = build_optimizer(
            self.model, self.loss_fn, t, self.device, self.total_steps, self.stages
        )
        self.ema = ModelEMA(self.model, t.ema.decay, t.ema.warmup) if t.ema.enabled else None
        self.ddp_model: nn.Module = self.model
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
                if self.device.type == "cuda":  # the conv stem: one set of batch statistics over all ranks
                    self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                else:
                    log.warning("BatchNorm (the conv stem) uses per-rank batch statistics: SyncBatchNorm needs CUDA")
            # a stage that switches a loss term off can leave the head feeding it without gradients;
            # only then does DDP need its (per-step) search for unused parameters
            off = terms_switched_off(
                {n: getattr(cfg.loss, n) for n in TERM_NAMES}, [s.loss_multipliers for s in t.stages]
            )
            log.info("DDP find_unused_parameters=%s (terms switched off: %s)", bool(off), ", ".join(off) or "none")
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=bool(off)
            )
        self.autocast_dtype = autocast_dtype_for(t.precision, self.device)
        self.train_step_fn = TrainStep(
            self.ddp_model, self.loss_fn, self.optimizer, autocast_dtype=self.autocast_dtype,
            grad_clip=t.grad_clip, monitor_grad_norm=t.monitor_grad_norm, ctx=self.ctx, compile=t.compile,
        )  # fmt: skip

        self.step = 0
        self.skipped_steps = 0
        self.best_value: float | None = None
        self.last_validation: dict[str, float] = {}
        seed_global_rngs(mix_seed(t.seed, self.ctx.rank, 0x5EED))
        if self.resume_path is not None:
            restore(self, self.resume_path)
        self.loggers = RunLoggers(cfg, self.run_dir, self.ctx.is_main)

    # -- public -------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and saved as model.safetensors (EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`; returns the last validation metrics (empty without them).
        FolderLockedError (every rank) when another live process trains into the same run folder."""
        lock = FolderLock(self.run_dir, "this run folder (training.output_dir)")
        refused = None
        if self.ctx.is_main:  # rank 0 alone writes the run folder
            try:
                lock.acquire()
            except FolderLockedError as exc:
                refused = str(exc)
        refused = broadcast_object(refused, self.ctx)
        if refused is not None:
            raise FolderLockedError(refused)
        try:
            return self._fit()
        finally:
            lock.release()

    def _fit(self) -> dict[str, float]:
        t = self.cfg.training
        self.loggers.open(self.step)
        if self.ctx.is_main:
            log.info(
                "training %d steps (%d per epoch, global batch %d = %d ranks x %d accumulation x %d), "
                "device %s, precision %s, run folder %s",
                self.total_steps, self.steps_per_epoch, t.batch_size, self.ctx.world_size, t.grad_accum_steps,
                self.micro_batch, self.device, "bf16" if self.autocast_dtype else "fp32", self.run_dir,
            )  # fmt: skip
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = self.loggers.progress_bar(self.total_steps, self.step)
        signals = StopSignals().install()
        self.save_clock = SaveClock(self.cfg.checkpoint.every_minutes, self.ctx, signals)
        self.final_saved = False
        try:
            while self.step < self.total_steps:
                epoch = self.epoch
                first = self.step - epoch * self.steps_per_epoch
                stop = min(self.steps_per_epoch, first + self.total_steps - self.step)
                for micro_batches in self.data.epoch(epoch, first, stop, self.micro_batch, t.grad_accum_steps):
                    info = self.train_step(micro_batches)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{info.loss:.4f}", stage=info.stage, refresh=False)
                    self._after_step(signals)
            if not self.final_saved:  # a finished run resumed: validate and save again
                self._after_step(signals)
        finally:
            signals.restore()
            if bar is not None:
                bar.close()
            self.loggers.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.last_validation

    def train_step(self, micro_batches: list[dict[str, Any]]) -> StepInfo:
        """One optimizer step over `micro_batches` (gradient accumulation, DDP-synchronised on the last)."""
        step = self.step
        self.model.train()
        self.loss_fn.set_stage_multipliers(self.stages.loss_multipliers(step))
        with cross_rank_statistics():  # diversity / kl over the global batch (every rank runs this step)
            result = self.train_step_fn.accumulate(micro_batches, prepare=lambda m, raw: self._prepare(step, m, raw))
        nonfinite = result.nonfinite
        vetoes = (
            []
            if nonfinite
            else [r for cb in self.callbacks if (r := cb.skip_update(self, result.loss, result.grad_norm))]
        )
        vetoed = any_rank(bool(vetoes), self.ctx)
        if nonfinite or vetoed:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            reason = "non-finite loss or gradient" if nonfinite else "; ".join(vetoes) or "a callback on another rank"
            log.warning("step %d: %s, update skipped (%d so far)", step, reason, self.skipped_steps)
        else:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        lr = head_lr(self.optimizer)  # the LR this step used (read before the scheduler advances it)
        with warnings.catch_warnings():
            # a skipped first step makes PyTorch warn that the scheduler stepped before the optimizer;
            # the schedule is a function of the step counter, which advances either way
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            self.scheduler.step()
        self.step += 1
        info = StepInfo(
            step=self.step,
            epoch=step // self.steps_per_epoch,
            stage=self.stages.stages[self.stages.index(step)].name,
            loss=result.loss,
            terms=result.terms,
            lr=lr,
            grad_norm=result.grad_norm,
            skipped=nonfinite or vetoed,
            spread=None,
            outputs=result.outputs,
            batch=result.batch,
        )
        if self.step % self.cfg.training.log_every_steps == 0 or self.step == self.total_steps:
            info.spread = prediction_spread(result.outputs, result.batch)  # host syncs: logged steps only
            self._log_step(info)
        for cb in self.callbacks:
            cb.on_step_end(self, info)
        return info

    def validate(self) -> dict[str, float]:
        """Run the evaluator with the evaluation weights on rank 0 (on every rank, each on its
        shard, with `sharded_validation`); metrics are broadcast."""
        metrics: dict[str, float] = {}
        runs_here = self.ctx.is_main or self.sharded_validation
        if runs_here and self.evaluator is not None and self.val_dataset is not None:
            model = self.eval_model
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = flatten_metrics(self.evaluator(model, self.val_dataset))
            model.train(was_training)
        if self.ctx.is_main and self.evaluator is not None and self.val_dataset is not None:
            self.loggers.log_scalars({f"val/{k}": v for k, v in metrics.items()}, self.step)
            log.info("validation at step %d: %s", self.step, summarize_metrics(metrics))
        metrics = broadcast_object(metrics, self.ctx)
        self.last_validation = metrics
        for cb in self.callbacks:
            cb.on_validation_end(self, metrics)
        return metrics

    def save_checkpoint(self, names: Sequence[str] = ("last",), keep: bool = True) -> Path:
        """Save checkpoints/step_<step> and point `names` at it (every rank must call this)."""
        folder = save(self, list(names), keep)
        if hasattr(self, "save_clock"):
            self.save_clock.saved()
        return folder

    # -- internals ----------------------------------------------------------------------------
    def _prepare(self, step: int, m: int, raw: dict[str, Any]) -> dict[str, Any]:
        """Micro-batch m of optimizer step `step` on the device, augmented with its own generator."""
        batch = batch_to_device(raw, self.device)
        if self.augment is not None:
            gen = torch.Generator(device=self.device).manual_seed(
                mix_seed(self.cfg.training.seed, step, m, self.ctx.rank)
            )
            batch = self.augment(batch, generator=gen)
        return batch

    def _after_step(self, signals: StopSignals) -> None:
        """At a step boundary: validation, then at most one save (periodic, best, timed, final or
        signalled) under all its names; after a signal's save, raise `TrainingPreempted`."""
        t, c = self.cfg.training, self.cfg.checkpoint
        done, epochs = self.step >= self.total_steps, self.step // self.steps_per_epoch
        epoch_end = not done and self.step % self.steps_per_epoch == 0
        names, keep = [], bool(c.every_steps and self.step % c.every_steps == 0 and not done)
        if done or (epoch_end and t.val_every_epochs and epochs % t.val_every_epochs == 0):
            names += ["best"] if self._validate_and_keep_best() else []
        if epoch_end and c.every_epochs and epochs % c.every_epochs == 0:
            names, keep = [*names, f"epoch_{epochs:04d}"], True
        stop, timed = self.save_clock.poll()
        if keep or names or done or stop or timed:
            folder = self.save_checkpoint([*names, "last"], keep)
            self.final_saved = done
            if stop and not done:
                raise TrainingPreempted(self.step, folder, signals.received or "a stop signal on another rank")

    def _validate_and_keep_best(self) -> bool:
        """Validate; True when the metric improved on the best so far (then saved as `best`)."""
        if not self.validation_enabled:
            return False
        metrics = self.validate()
        c = self.cfg.checkpoint
        value = metrics.get(c.best_metric)
        if value is None or not math.isfinite(value):
            return False
        better = self.best_value is None or (
            value < self.best_value if c.best_mode == "min" else value > self.best_value
        )
        if better:
            self.best_value = value
        return better

    def _log_step(self, info: StepInfo) -> None:
        values = {"loss": info.loss, **{f"loss/{k}": v for k, v in info.terms.items()}}
        # every rank must reduce the same keys: the spread (None on a rank with < 2 valid hands) goes
        # as a sum and a count of the ranks that have it, then the mean over those ranks
        values["spread"] = info.spread if info.spread is not None else 0.0
        values[SPREAD_RANKS] = float(info.spread is not None)
        values = all_reduce_mean(values, self.ctx)
        spread, ranks = values.pop("spread"), values.pop(SPREAD_RANKS)
        if ranks > 0:
            values["spread"] = spread / ranks
        if not self.ctx.is_main:
            return
        scalars = {f"train/{k}": v for k, v in values.items()}
        log_vars = self.loss_fn.learned_log_variances()
        if log_vars is not None:
            scalars.update({f"train/log_var/{n}": v for n, v in log_vars.items()})
        for g in self.optimizer.param_groups:
            scalars[f"lr/{g.get('name', 'group')}"] = g["lr"]
        if info.grad_norm is not None:
            scalars["train/grad_norm"] = info.grad_norm
        scalars["train/skipped_steps"] = self.skipped_steps
        scalars["train/stage"] = self.stages.index(info.step - 1)
        self.loggers.log_scalars(scalars, self.step)
        spread = values.get("spread")
        if spread is not None and spread < self.cfg.training.collapse_threshold:
            log.warning(
                "step %d: prediction spread %.3f < %.3f (std of predicted root-relative joints / GT std): "
                "the hand head may be collapsing to a mean pose",
                info.step, spread, self.cfg.training.collapse_threshold,
            )  # fmt: skip
        log.info("step %d: loss %.5f lr %.2e grad_norm %s", info.step, info.loss, info.lr, info.grad_norm)


def train(
    cfg: RunConfig,
    ctx: DistContext | None = None,
    *,
    evaluator: Evaluator | str | None = "default",
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """Build a `Trainer` from `cfg`, run it, and return it (its model, EMA and metrics)."""
    trainer = Trainer(cfg, ctx, evaluator=evaluator, callbacks=callbacks)
    trainer.fit()
    return trainer
