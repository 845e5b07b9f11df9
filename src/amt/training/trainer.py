"""The training loop: AdamW with param groups, warm-up + cosine, stages, EMA, DDP, checkpoints.

Determinism (exact resume): the data order of epoch e is a permutation drawn from a generator
seeded with (seed, e); the augmentation of optimizer step s, micro-batch m, rank r uses a
generator seeded with (seed, s, m, r); everything else random (dropout) uses the global RNGs,
whose states are saved in every checkpoint. So N steps in one run and N/2 + resume + N/2 give
bit-identical parameters on CPU.

Run folder (`training.output_dir`):

    config.yaml                 the resolved run config
    tensorboard/                scalars (train/*, val/*)
    checkpoints/<name>/         name = last | best | epoch_0005 | step_001000
        config.yaml             model config  } written by AMT.save_pretrained; the weights are
        model.safetensors       model weights } the EMA weights when EMA is on (those evaluated)
        train_config.yaml       the resolved run config
        trainer.pt              raw model weights, optimizer, scheduler, EMA, loss state, RNG
                                states of every rank, step/epoch/data position, resolved config

Extension points: `Callback` (per-step, validation, start/end hooks, receiving the trainer and a
`StepInfo` with the step's outputs, batch, loss terms and gradient norm), `evaluator` (any
callable `(model, dataset) -> dict`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from amt.training.config import DataConfig, RunConfig, build_loss_config
from amt.training.distributed import (
    DistContext,
    all_reduce_mean,
    any_rank,
    barrier,
    broadcast_object,
    gather_object,
)
from amt.training.ema import ModelEMA
from amt.training.schedule import StageSchedule, build_lr_scheduler

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train_config.yaml"
CHECKPOINTS = "checkpoints"

Evaluator = Callable[[nn.Module, Any], dict]


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """(n,) int64 permutation for `epoch`: a pure function of (n, seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0xDA7A)))


def prediction_spread(outputs: dict[str, Any], batch: dict[str, Any]) -> float | None:
    """Std of predicted root-relative joints across the batch / the same for the ground truth
    (valid hands only; None with fewer than 2). Near 0 means the model predicts one pose."""
    valid = batch["hand_valid"].bool()
    if int(valid.sum()) < 2:
        return None
    pred = outputs["joints_3d"].detach().float()[valid]
    gt = batch["joints_3d"].float()[valid]
    pred_std = (pred - pred[:, :1]).std(dim=0).mean()
    gt_std = (gt - gt[:, :1]).std(dim=0).mean()
    return float(pred_std / gt_std.clamp_min(1e-9))


def _float32(x: Any) -> Any:
    """Floating tensors (nested in dicts/lists) to float32: losses run in fp32 after autocast."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_float32(v) for v in x)
    return x


def flatten_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested evaluator result -> {"hand.root-relative.mpjpe": value, ...} (finite-or-not
    numbers only; lists, arrays and objects are left out)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name + "."))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


@dataclass
class StepInfo:
    """What one optimizer step did. `outputs`/`batch` are those of the step's last micro-batch."""

    step: int  # optimizer steps completed, this one included
    epoch: int
    stage: str
    loss: float  # mean over micro-batches of this rank
    terms: dict[str, float]
    lr: float  # head learning rate
    grad_norm: float | None  # global norm before clipping (None when not monitored)
    skipped: bool  # non-finite loss or gradient: no parameter update
    spread: float | None  # prediction_spread of the last micro-batch
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)
    batch: dict[str, Any] = field(repr=False, default_factory=dict)


class Callback:
    """Hooks for research tooling; override what you need. Called on every rank."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, info: StepInfo) -> None: ...

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def skip_update(self, trainer: Trainer, loss: float, grad_norm: float | None) -> str | None:
        """Before the optimizer update of a finite step: a reason to skip it, or None."""
        return None


# --------------------------------------------------------------------------------------------
# data


def resolve_cache(data: DataConfig, split: str, cache_dir: str | None, ctx: DistContext) -> Path:
    """The cache folder of `split`, built from `data.root` when missing (rank 0 builds)."""
    from amt.data.cache import META_FILE, build_cache

    if cache_dir is None:
        if data.root is None:
            raise ValueError("config: set data.root (a DexYCB-layout folder) or data.cache_dir (a built cache)")
        folder = Path(data.root) / "cache" / f"{split}_{data.image_size}"
    else:
        folder = Path(cache_dir)
    if not (folder / META_FILE).exists():
        if data.root is None:
            raise FileNotFoundError(f"{folder}: no cache here ({META_FILE} missing) and data.root is not set to build it")
        if ctx.is_main:
            log.info("building the %s cache of %s in %s", split, data.root, folder)
            build_cache(data.root, split, folder, size=data.image_size, workers=data.cache_workers)
        barrier(ctx)
    return folder


class TrainBatches:
    """Rank-local training batches: the cache sharded `rank::world_size`, each shard permuted
    per epoch by `epoch_order`. Every rank runs the same number of steps per epoch."""

    def __init__(self, folder: Path, data: DataConfig, ctx: DistContext, seed: int) -> None:
        from amt.data.loaders import CachedDataset, GPUCachedDataset

        kind = data.loader if data.loader != "auto" else ("gpu" if ctx.device.type == "cuda" else "dataset")
        if kind not in ("gpu", "dataset"):
            raise ValueError(f"config data.loader: {data.loader!r}; expected auto, gpu or dataset")
        normalize = not data.augment  # BatchAugment takes uint8 and normalises on the device
        self.kind, self.seed, self.ctx = kind, seed, ctx
        self.num_workers = data.num_workers
        if kind == "gpu":
            self.dataset = GPUCachedDataset(folder, ctx.device, ctx.rank, ctx.world_size, normalize=normalize)
        else:
            self.dataset = CachedDataset(folder, data.cache_mode, normalize, ctx.rank, ctx.world_size)
        self.global_size = int(len(self.dataset.meta))
        self.sequence = None  # data.sequence_length >= 2: clips of consecutive frames
        if data.sequence_length > 1:
            from amt.training.sequence import SequenceSampler

            local_meta = self.dataset.meta[ctx.rank :: ctx.world_size]
            self.sequence = SequenceSampler(local_meta, data.sequence_length, seed)

    def steps_per_epoch(self, per_rank_batch: int) -> int:
        if self.sequence is not None:
            return self.sequence.steps_per_epoch(per_rank_batch)
        return (self.global_size // self.ctx.world_size) // per_rank_batch

    def epoch(self, epoch: int, first_step: int, stop_step: int, micro: int, accum: int) -> Iterator[list[dict]]:
        """Micro-batch lists (accum of them, `micro` samples each) for steps [first, stop)."""
        from amt.data.loaders import collate

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
            batches = iter(loader)
        group: list[dict] = []
        for batch in batches:
            if self.sequence is not None:
                batch["sequence_length"] = self.sequence.length
            group.append(batch)
            if len(group) == accum:
                yield group
                group = []


def default_evaluator(data_folder: Path, batch_size: int, device: torch.device) -> Evaluator | None:
    """`amt.evaluation.evaluator.evaluate` bound to the dataset's models folder, or None when
    the evaluator is not installed."""
    try:
        from amt.evaluation.evaluator import evaluate
    except ImportError as exc:
        log.warning("no evaluator available (%s): validation is skipped", exc)
        return None
    from amt.data.cache import open_cache

    params = open_cache(data_folder).params
    models_dir = params.get("models_dir") or str(Path(params["root"]) / "models")
    return functools.partial(evaluate, models_dir=models_dir, batch_size=batch_size, device=device)


# --------------------------------------------------------------------------------------------
# optimisation


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups: trainable backbone blocks at lr * backbone_lr_mult, heads at lr; 1-D
    parameters (biases, norm scales, sigma-reparam gammas) without weight decay."""
    backbone = {id(p) for p in model.trainable_backbone_parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = ("backbone" if id(p) in backbone else "heads", p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "name": f"{part}{'' if decay else '_no_decay'}",
                "params": params,
                "lr": lr * (backbone_lr_mult if part == "backbone" else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return out


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_folder(tmp: Path, final: Path) -> None:
    """Move a fully written `tmp` folder to `final`, replacing an older checkpoint there."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (holding trainer.pt) from a checkpoint or run folder path."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINTS / "last"):
        if (candidate / TRAINER_STATE).exists():
            return candidate
    raise FileNotFoundError(
        f"checkpoint.resume_from={path}: no {TRAINER_STATE} there nor in {path / CHECKPOINTS / 'last'}"
    )


def check_output_dir(folder: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into an existing non-empty run folder unless asked to (never deletes)."""
    if folder.exists() and any(folder.iterdir()) and not (overwrite or resuming):
        raise FileExistsError(
            f"{folder}: training.output_dir exists and is not empty; choose another folder, resume with "
            f"checkpoint.resume_from=..., or set training.overwrite=true to write into it"
        )


# --------------------------------------------------------------------------------------------
# the trainer


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
        from amt.data.augment import AugmentConfig, BatchAugment
        from amt.training.losses import AMTLoss

        self.cfg, self.ctx = cfg, ctx or DistContext()
        t = cfg.training
        self.device = self.ctx.device
        from amt.diagnostics.callbacks import callbacks_from_config

        self.callbacks = list(callbacks) + callbacks_from_config(cfg)
        self.resume_path = find_checkpoint(cfg.checkpoint.resume_from) if cfg.checkpoint.resume_from else None
        self.run_dir = Path(t.output_dir)
        if self.ctx.is_main:
            check_output_dir(self.run_dir, t.overwrite, self.resume_path is not None)
        barrier(self.ctx)

        if t.batch_size == "auto":
            from amt.training.batch_size import resolve_batch_size

            t.batch_size = resolve_batch_size(cfg, self.ctx)
        if not isinstance(t.batch_size, int):
            raise ValueError(f"config training.batch_size={t.batch_size!r}: expected an integer or 'auto'")
        micro, rest = divmod(t.batch_size, self.ctx.world_size * t.grad_accum_steps)
        if rest or micro == 0:
            raise ValueError(
                f"config training.batch_size={t.batch_size}: expected a multiple of world_size x grad_accum_steps "
                f"= {self.ctx.world_size} x {t.grad_accum_steps}"
            )
        self.micro_batch = micro

        train_folder = resolve_cache(cfg.data, cfg.data.split, cfg.data.cache_dir, self.ctx)
        self.data = TrainBatches(train_folder, cfg.data, self.ctx, t.seed)
        self.steps_per_epoch = self.data.steps_per_epoch(micro * t.grad_accum_steps)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{train_folder}: {self.data.global_size} samples are fewer than one global batch "
                f"(training.batch_size={t.batch_size})"
            )
        self.total_steps = t.max_steps if t.max_steps is not None else t.epochs * self.steps_per_epoch
        self.val_dataset = None
        if cfg.data.val_split is not None and evaluator is not None and self.ctx.is_main:
            from amt.data.loaders import CachedDataset

            val_folder = resolve_cache(cfg.data, cfg.data.val_split, cfg.data.val_cache_dir, DistContext())
            self.val_dataset = CachedDataset(val_folder, cfg.data.cache_mode)
            if evaluator == "default":
                evaluator = default_evaluator(val_folder, t.batch_size // self.ctx.world_size, self.device)
        self.evaluator = evaluator if callable(evaluator) else None
        self.validation_enabled = bool(
            broadcast_object(self.evaluator is not None and self.val_dataset is not None, self.ctx)
        )

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        if model is None:
            from amt.models import build_model

            preset = cfg.model.get("preset", "tiny")
            model = build_model(preset, **{k: v for k, v in cfg.model.items() if k != "preset"})
        self.model = model.to(self.device)
        self.loss_fn = AMTLoss(build_loss_config(cfg.loss)).to(self.device)
        self.stages = StageSchedule(t.stages, self.total_steps)
        for stage in t.stages:
            self.loss_fn.set_stage_multipliers(stage.loss_multipliers)  # fail early on unknown term names
        self.augment = BatchAugment(AugmentConfig(**cfg.data.augment_params)) if cfg.data.augment else None
        if self.augment is not None and cfg.data.sequence_length > 1:
            from amt.training.sequence import ClipAugment

            self.augment = ClipAugment(self.augment, cfg.data.sequence_length)

        groups = param_groups(self.model, t.learning_rate, t.backbone_lr_mult, t.weight_decay)
        loss_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        if loss_params:  # learned uncertainty weights (LossConfig.dynamic_weighting)
            groups.append({"name": "loss", "params": loss_params, "lr": t.learning_rate, "weight_decay": 0.0})
        # the fused kernel on CPU too: one kernel per group instead of ~10 ops per tensor
        # (measured: 2.5 vs 14 ms per step for the tiny model's 292 tensors on 2 cores)
        self.optimizer = torch.optim.AdamW(
            groups, lr=t.learning_rate, betas=tuple(t.betas), fused=self.device.type in ("cuda", "cpu")
        )
        self.scheduler = build_lr_scheduler(self.optimizer, self.total_steps, t.warmup_fraction, t.min_lr_ratio, self.stages)
        self.ema = ModelEMA(self.model, t.ema.decay, t.ema.warmup) if t.ema.enabled else None
        self.ddp_model: nn.Module = self.model
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
                if self.device.type == "cuda":  # the conv stem: one set of batch statistics over all ranks
                    self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                else:
                    log.warning("BatchNorm (the conv stem) uses per-rank batch statistics: SyncBatchNorm needs CUDA")
            # stages switch loss terms (and so the heads feeding them) on and off: unused parameters happen
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)
        precision = t.precision if t.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"config training.precision: {t.precision!r}; expected auto, bf16 or fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None

        self.step = 0
        self.skipped_steps = 0
        self.best_value: float | None = None
        self.last_validation: dict[str, float] = {}
        seed_all = mix_seed(t.seed, self.ctx.rank, 0x5EED)
        torch.manual_seed(seed_all)
        np.random.seed(seed_all % 2**32)
        random.seed(seed_all)
        if self.resume_path is not None:
            self._load(self.resume_path)
        self._writer = None
        self._wandb = None

    # -- public -------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and saved as model.safetensors (EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`; returns the last validation metrics (empty without them)."""
        t = self.cfg.training
        self._open_loggers()
        if self.ctx.is_main:
            log.info(
                "training %d steps (%d per epoch, global batch %d = %d ranks x %d accumulation x %d), "
                "device %s, precision %s, run folder %s",
                self.total_steps, self.steps_per_epoch, t.batch_size, self.ctx.world_size, t.grad_accum_steps,
                self.micro_batch, self.device, "bf16" if self.autocast_dtype else "fp32", self.run_dir,
            )  # fmt: skip
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = self._progress_bar()
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
                    every = self.cfg.checkpoint.every_steps
                    if every and self.step % every == 0 and self.step < self.total_steps:
                        self.save_checkpoint(f"step_{self.step:06d}")
                if self.step % self.steps_per_epoch == 0 and self.step < self.total_steps:
                    self._end_of_epoch(self.epoch)
            self._end_of_training()
        finally:
            if bar is not None:
                bar.close()
            self._close_loggers()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.last_validation

    def train_step(self, micro_batches: list[dict[str, Any]]) -> StepInfo:
        """One optimizer step over `micro_batches` (gradient accumulation, DDP-synchronised on the last)."""
        from amt.data.loaders import batch_to_device

        t = self.cfg.training
        step = self.step
        self.model.train()
        self.loss_fn.set_stage_multipliers(self.stages.loss_multipliers(step))
        self.optimizer.zero_grad(set_to_none=True)
        accum = len(micro_batches)
        loss_sum, term_sums, nonfinite = 0.0, {}, False
        outputs: dict[str, Any] = {}
        batch: dict[str, Any] = {}
        for m, raw in enumerate(micro_batches):
            batch = batch_to_device(raw, self.device)
            if self.augment is not None:
                gen = torch.Generator(device=self.device).manual_seed(mix_seed(t.seed, step, m, self.ctx.rank))
                batch = self.augment(batch, generator=gen)
            sync = self.ctx.enabled and m < accum - 1
            with self.ddp_model.no_sync() if sync else contextlib.nullcontext():
                with self._autocast():
                    outputs = self.ddp_model(batch)
                outputs = _float32(outputs)
                total, terms = self.loss_fn(outputs, batch)
                (total / accum).backward()
            value = float(total.detach())
            nonfinite |= not math.isfinite(value)
            loss_sum += value / accum
            for name, term in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(term.detach()) / accum
        nonfinite = any_rank(nonfinite, self.ctx)
        grad_norm = None
        if t.grad_clip > 0 or t.monitor_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            nonfinite |= not math.isfinite(grad_norm)
        vetoes = [] if nonfinite else [r for cb in self.callbacks if (r := cb.skip_update(self, loss_sum, grad_norm))]
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
        lr = self._head_lr()  # the LR this step used (read before the scheduler advances it)
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
            loss=loss_sum,
            terms=term_sums,
            lr=lr,
            grad_norm=grad_norm,
            skipped=nonfinite or vetoed,
            spread=prediction_spread(outputs, batch),
            outputs=outputs,
            batch=batch,
        )
        if self.step % t.log_every_steps == 0 or self.step == self.total_steps:
            self._log_step(info)
        for cb in self.callbacks:
            cb.on_step_end(self, info)
        return info

    def validate(self) -> dict[str, float]:
        """Run the evaluator on rank 0 with the evaluation weights; metrics are broadcast."""
        metrics: dict[str, float] = {}
        if self.ctx.is_main and self.evaluator is not None and self.val_dataset is not None:
            model = self.eval_model
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = flatten_metrics(self.evaluator(model, self.val_dataset))
            model.train(was_training)
            self._write_scalars({f"val/{k}": v for k, v in metrics.items()})
            log.info("validation at step %d: %s", self.step, self._summary(metrics))
        metrics = broadcast_object(metrics, self.ctx)
        self.last_validation = metrics
        for cb in self.callbacks:
            cb.on_validation_end(self, metrics)
        return metrics

    def save_checkpoint(self, name: str) -> Path:
        """Write checkpoints/<name> (rank 0; every rank must call this: RNG states are gathered)."""
        rng_states = gather_object(_rng_state(), self.ctx)
        folder = self.run_dir / CHECKPOINTS / name
        if self.ctx.is_main:
            tmp = folder.with_name(folder.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            self.eval_model.save_pretrained(tmp)
            (tmp / TRAIN_CONFIG).write_text(self.cfg.to_yaml())
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "loss": self.loss_fn.state_dict(),
                "rng": rng_states,
                "step": self.step,
                "epoch": self.epoch,
                "data_position": self.step - self.epoch * self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "skipped_steps": self.skipped_steps,
                "best_value": self.best_value,
                "world_size": self.ctx.world_size,
                "config": self.cfg.resolved,
            }
            torch.save(state, tmp / TRAINER_STATE)
            _replace_folder(tmp, folder)
            log.info("saved checkpoint %s (step %d)", folder, self.step)
        barrier(self.ctx)
        return folder

    # -- internals ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _head_lr(self) -> float:
        """Current LR of the head weights (the first group when there is no "heads" group)."""
        for g in self.optimizer.param_groups:
            if g.get("name") == "heads":
                return float(g["lr"])
        return float(self.optimizer.param_groups[0]["lr"])

    def _load(self, folder: Path) -> None:
        # weights_only=False: the file holds numpy/python RNG states; it is our own checkpoint.
        state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{folder / TRAINER_STATE}: key 'ema' is empty but training.ema.enabled is true")
            self.ema.load_state_dict(state["ema"])
        self.loss_fn.load_state_dict(state["loss"])
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{folder / TRAINER_STATE}: steps_per_epoch {state['steps_per_epoch']} != {self.steps_per_epoch} "
                "now (dataset, batch size or world size changed): the data position cannot be restored"
            )
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.best_value = state["best_value"]
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            _set_rng_state(rng[self.ctx.rank])
        else:
            log.warning("%s: saved by %d ranks, resumed on %d: RNG states re-seeded", folder, len(rng), self.ctx.world_size)
        changed = {
            k for k in set(state["config"]) | set(self.cfg.resolved) if state["config"].get(k) != self.cfg.resolved.get(k)
        }
        if changed - {"checkpoint", "training"}:
            log.warning("resuming with a config that differs from the checkpoint's in %s", sorted(changed))
        log.info("resumed from %s at step %d (epoch %d)", folder, self.step, self.epoch)

    def _end_of_epoch(self, epochs_done: int) -> None:
        t, c = self.cfg.training, self.cfg.checkpoint
        if t.val_every_epochs and epochs_done % t.val_every_epochs == 0:
            self._validate_and_keep_best()
        if c.every_epochs and epochs_done % c.every_epochs == 0:
            self.save_checkpoint(f"epoch_{epochs_done:04d}")

    def _end_of_training(self) -> None:
        self._validate_and_keep_best()
        self.save_checkpoint("last")

    def _validate_and_keep_best(self) -> None:
        if not self.validation_enabled:
            return
        metrics = self.validate()
        c = self.cfg.checkpoint
        value = metrics.get(c.best_metric)
        if value is None or not math.isfinite(value):
            return
        better = self.best_value is None or (value < self.best_value if c.best_mode == "min" else value > self.best_value)
        if better:
            self.best_value = value
            self.save_checkpoint("best")

    def _progress_bar(self):
        if not (self.ctx.is_main and self.cfg.logging.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _open_loggers(self) -> None:
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        if self.cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, drop events a crashed run logged after the checkpoint's step
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        if self.cfg.logging.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError("logging.wandb=true needs the wandb package: pip install 'amt[wandb]'") from exc
            self._wandb = wandb.init(
                project=self.cfg.logging.wandb_project,
                name=self.cfg.experiment_name,
                dir=str(self.run_dir),
                mode=self.cfg.logging.wandb_mode,
                config=self.cfg.resolved,
                resume="allow",
            )

    def _close_loggers(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _write_scalars(self, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, self.step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=self.step)

    def _log_step(self, info: StepInfo) -> None:
        values = {"loss": info.loss, **{f"loss/{k}": v for k, v in info.terms.items()}}
        if info.spread is not None:
            values["spread"] = info.spread
        values = all_reduce_mean(values, self.ctx)
        if not self.ctx.is_main:
            return
        scalars = {f"train/{k}": v for k, v in values.items()}
        for g in self.optimizer.param_groups:
            scalars[f"lr/{g.get('name', 'group')}"] = g["lr"]
        if info.grad_norm is not None:
            scalars["train/grad_norm"] = info.grad_norm
        scalars["train/skipped_steps"] = self.skipped_steps
        scalars["train/stage"] = self.stages.index(info.step - 1)
        self._write_scalars(scalars)
        spread = values.get("spread")
        if spread is not None and spread < self.cfg.training.collapse_threshold:
            log.warning(
                "step %d: prediction spread %.3f < %.3f (std of predicted root-relative joints / GT std): "
                "the hand head may be collapsing to a mean pose",
                info.step, spread, self.cfg.training.collapse_threshold,
            )  # fmt: skip
        log.info("step %d: loss %.5f lr %.2e grad_norm %s", info.step, info.loss, info.lr, info.grad_norm)

    @staticmethod
    def _summary(metrics: dict[str, float], limit: int = 6) -> str:
        keys = [k for k in metrics if k.startswith("hand.") and k.endswith(".mpjpe")] or list(metrics)
        return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys[:limit])


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
