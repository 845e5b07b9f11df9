"""Typed configuration of a training run, and its composition with Hydra.

`load_run_config(name, overrides)` composes `amt.config/<name>.yaml` (groups data/, training/,
experiment/, and model/, which is generated from the presets of `amt.models.config`) with
Hydra's compose API, validates it against the dataclasses below and returns a `RunConfig`: an
unknown key or a value of the wrong type (`model.hidden_dim=abc`) is an error that names the key
(`LOAD_ERRORS`; `load_error_text` turns one into the line `amt train` prints).
The sections reuse the dataclasses their owners define, so that they cannot drift:

- `model`: every field of `amt.models.config.ModelConfig` (with its type), default `None`
  meaning "the preset's value"; `RunConfig.model` is `make_config(preset, **non-None fields)`.
- `loss`: `amt.training.losses.LossConfig`; `data.augment_params`: `amt.data.augment.AugmentConfig`.

Batch size semantics: `training.batch_size` is the GLOBAL batch of one optimizer step; it is
split over the processes of a distributed run and the gradient-accumulation micro-steps, so
the same config trains the same way on 1 or N devices.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from amt.data.augment import AugmentConfig
from amt.data.transforms import MIN_CROP_SIZE
from amt.errors import ConfigError, finite_number, require
from amt.models.config import PRESETS, VARIANTS, ModelConfig, make_config, named_config_fields
from amt.training.losses import LossConfig

CONFIG_MODULE = "amt.config"


@dataclass
class DataConfig:
    """Where training data comes from. Caches are built on first use when missing."""

    root: str | None = None  # dataset root (real or `amt synth` output), read as `format`
    # how `root` is read (amt.data.dataset.open_dataset): dexycb | ho3d | folder | python:module.Class
    format: str = "dexycb"
    split: str = "s0_train"
    val_split: str | None = "s0_val"  # None: no validation
    cache_dir: str | None = None  # default <root>/cache/<split>_<image_size> (as `amt cache`)
    val_cache_dir: str | None = None
    image_size: int = 224
    loader: str = "auto"  # auto (gpu on CUDA, else dataset) | gpu | dataset
    # gpu loader: the most one rank's cache shard may occupy on its device, in GB (null: this
    # fraction of the device's free memory); a shard over it is read from pinned host memory with
    # asynchronous prefetch instead (amt.training.data.TrainBatches)
    gpu_cache_max_gb: float | None = None
    gpu_cache_fraction: float = 0.5
    cache_mode: str = "memmap"  # CachedDataset mode: disk | memmap | ram
    num_workers: int = 0  # DataLoader workers for the CachedDataset path
    cache_workers: int = 2  # processes used to build a missing cache
    augment: bool = True
    augment_params: AugmentConfig = field(default_factory=AugmentConfig)
    # >= 2: train on clips of K consecutive frames of one sequence and camera (temporal loss on;
    # amt.training.sequence)
    sequence_length: int = 1

    def __post_init__(self) -> None:
        require(self.image_size >= MIN_CROP_SIZE, "data.image_size", self.image_size, f">= {MIN_CROP_SIZE} pixels")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        require(self.cache_workers >= 1, "data.cache_workers", self.cache_workers, ">= 1")
        gb = self.gpu_cache_max_gb
        require(gb is None or finite_number(gb) and gb >= 0, "data.gpu_cache_max_gb", gb, "a size in GB >= 0, or null")
        require(self.sequence_length >= 1, "data.sequence_length", self.sequence_length, ">= 1 (1: single frames)")


@dataclass
class StageConfig:
    """One training stage. `start` is a fraction of the total steps; the stage lasts until the
    next one starts. `loss_multipliers` scale the loss weights by term name (missing = 1.0);
    over the first `ramp` (fraction of total steps) of the stage, multipliers and `lr_mult`
    move linearly from the previous stage's values to these."""

    name: str = "main"
    start: float = 0.0
    lr_mult: float = 1.0
    ramp: float = 0.0
    loss_multipliers: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = f"training.stages[{self.name}]"  # the order of starts is checked by StageSchedule
        require(finite_number(self.start) and 0 <= self.start < 1, f"{key}.start", self.start, "a fraction in [0, 1)")
        require(finite_number(self.lr_mult) and self.lr_mult >= 0, f"{key}.lr_mult", self.lr_mult, "a number >= 0")
        require(finite_number(self.ramp) and 0 <= self.ramp <= 1, f"{key}.ramp", self.ramp, "a fraction in [0, 1]")
        for term, value in self.loss_multipliers.items():
            require(finite_number(value) and value >= 0, f"{key}.loss_multipliers.{term}", value, "a number >= 0")


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True  # effective decay min(decay, (1 + n) / (10 + n)) after n updates

    def __post_init__(self) -> None:  # above 1 the average diverges; below 0 it oscillates
        require(
            finite_number(self.decay) and 0 <= self.decay <= 1, "training.ema.decay", self.decay, "a number in [0, 1]"
        )


@dataclass
class TrainingConfig:
    output_dir: str = "runs/${experiment_name}"
    overwrite: bool = False  # allow writing into an existing non-empty output_dir (never deletes it)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    # global batch per optimizer step (all ranks, all accumulation steps), or "auto": the largest
    # that fits in GPU memory, searched up to auto_batch_max (amt.training.batch_size)
    batch_size: Any = 64
    auto_batch_max: int = 1024
    auto_batch_fallback: int = 16  # used by batch_size=auto when there is no GPU to measure
    grad_accum_steps: int = 1
    epochs: int = 30
    max_steps: int | None = None  # if set, the run length in optimizer steps (overrides epochs)
    learning_rate: float = 1e-4  # heads
    backbone_lr_mult: float = 0.1  # trainable backbone blocks get learning_rate * this
    weight_decay: float = 0.05  # not applied to biases, norms and other 1-D parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of the peak
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    ema: EMAConfig = field(default_factory=EMAConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    val_every_epochs: int = 1
    log_every_steps: int = 10
    collapse_threshold: float = 0.2  # warn when prediction spread / GT spread falls below
    monitor_grad_norm: bool = True
    # training aids (amt.diagnostics.callbacks): per-module grad norms to TensorBoard every N
    # steps (0: off), and skipping steps whose loss exceeds factor x the running median (0: off)
    grad_monitor_every: int = 0
    grad_monitor_depth: int = 2
    loss_spike_factor: float = 0.0
    loss_spike_window: int = 50
    # torch.compile the model's forward in the training step (amt.training.step; the first steps
    # compile; the loss stays eager: host-side matching and data-dependent shapes)
    compile: bool = False
    # with several ranks, each validates a disjoint shard of the validation split with the
    # default evaluator and rank 0 scores the gathered predictions (false: rank 0 validates alone)
    shard_validation: bool = True

    def __post_init__(self) -> None:
        # why here: each of these fails late otherwise (a ZeroDivisionError, torch's "Invalid learning
        # rate" traceback), runs zero steps, or with a negative batch never ends; one line instead
        b = self.batch_size
        require(b == "auto" or isinstance(b, int) and not isinstance(b, bool) and b >= 1,
                "training.batch_size", b, "a whole number >= 1 or auto")  # fmt: skip
        for key in ("grad_accum_steps", "epochs", "auto_batch_max", "auto_batch_fallback", "log_every_steps"):
            require(getattr(self, key) >= 1, f"training.{key}", getattr(self, key), ">= 1")
        require(self.max_steps is None or self.max_steps >= 1, "training.max_steps", self.max_steps, ">= 1 or null")
        require(self.val_every_epochs >= 0, "training.val_every_epochs", self.val_every_epochs, ">= 0 (0: never)")
        require(finite_number(self.learning_rate) and self.learning_rate > 0, "training.learning_rate", self.learning_rate,
                "a number > 0")  # fmt: skip
        for key in ("backbone_lr_mult", "weight_decay", "grad_clip"):
            value = getattr(self, key)
            require(finite_number(value) and value >= 0, f"training.{key}", value, "a number >= 0")
        require(len(self.betas) == 2 and all(finite_number(v) and 0 <= v < 1 for v in self.betas), "training.betas",
                list(self.betas), "two numbers in [0, 1)")  # fmt: skip
        require(finite_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, "training.warmup_fraction",
                self.warmup_fraction, "a fraction in [0, 1)")  # fmt: skip
        require(finite_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "training.min_lr_ratio",
                self.min_lr_ratio, "a fraction in [0, 1]")  # fmt: skip
        require(self.precision in ("auto", "bf16", "fp32"), "training.precision", self.precision, "auto, bf16 or fp32")
        require(self.grad_monitor_every >= 0, "training.grad_monitor_every", self.grad_monitor_every, ">= 0 (0: off)")
        require(self.grad_monitor_depth >= 1, "training.grad_monitor_depth", self.grad_monitor_depth, ">= 1")
        f = self.loss_spike_factor
        require(finite_number(f) and (f == 0 or f > 1), "training.loss_spike_factor", f, "> 1 (or 0 to disable)")
        require(self.loss_spike_window >= 1, "training.loss_spike_window", self.loss_spike_window, ">= 1")
        c = self.collapse_threshold
        require(finite_number(c) and c >= 0, "training.collapse_threshold", c, "a number >= 0 (0: off)")


@dataclass
class CheckpointConfig:
    # auto: continue the run folder's newest complete checkpoint if there is one (else a fresh run);
    # a checkpoint or run folder: resume from it; null: never resume (amt.training.checkpointing)
    resume_from: str | None = "auto"
    every_epochs: int = 1  # periodic checkpoints, kept (0: only last/best)
    every_steps: int = 0  # additional periodic checkpoints by step, kept (0: off)
    # the periodic checkpoints kept: the newest keep_last, plus those `best` and `last` name (0: all)
    keep_last: int = 2
    # also save (as `last`, replaced by the next) when this long has passed since the last save,
    # which bounds the work a hard kill loses (0: off)
    every_minutes: float = 30.0
    best_metric: str = "hand.root-relative.mpjpe"  # dotted key into the evaluator's result
    best_mode: str = "min"  # min | max

    def __post_init__(self) -> None:
        for key in ("every_epochs", "every_steps", "keep_last"):
            require(getattr(self, key) >= 0, f"checkpoint.{key}", getattr(self, key), ">= 0 (0: off)")
        require(finite_number(self.every_minutes) and self.every_minutes >= 0, "checkpoint.every_minutes",
                self.every_minutes, "a number >= 0 (0: off)")  # fmt: skip
        require(self.best_mode in ("min", "max"), "checkpoint.best_mode", self.best_mode, "min or max")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "amt"
    wandb_mode: str = "offline"
    progress: bool = True  # tqdm bar with ETA (rank 0)


def _model_section_type() -> type:
    """Dataclass with every ModelConfig field, its type made optional, defaulting to None ("the
    preset's value"), and `preset`."""
    hints = typing.get_type_hints(ModelConfig)
    spec: list[tuple[str, Any, Any]] = [("preset", str, field(default="tiny"))]
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "preset"]
    spec += [(name, hints[name] | None, field(default=None)) for name in names]
    return dataclasses.make_dataclass("ModelSection", spec)


ModelSection = _model_section_type()


@dataclass
class ConfigSchema:
    """The yaml layout of a run config; `RunConfig.from_omegaconf` turns it into the typed view."""

    experiment_name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)  # type: ignore[valid-type]
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def schema() -> DictConfig:
    """The full config schema (all sections, with defaults) as a structured DictConfig."""
    return OmegaConf.structured(ConfigSchema)


def register_configs() -> None:
    """Register the schema as `base_config` (config.yaml lists it first) and one `model` group
    option per preset and variant of `amt.models.config` in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=schema())
    for name in [*PRESETS, *VARIANTS]:
        store.store(group="model", name=name, node=named_config_fields(name))


def compose(config_name: str = "config", overrides: list[str] | None = None) -> DictConfig:
    """Compose `amt.config/<config_name>.yaml` with Hydra overrides (verbatim command-line form,
    e.g. "training.batch_size=64", "experiment=paper"); returns the validated, resolved config."""
    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg


@dataclass
class RunConfig:
    """The typed view of a composed config that the trainer consumes."""

    experiment_name: str
    data: DataConfig
    model: ModelConfig  # the preset with the fields set explicitly applied
    loss: LossConfig
    training: TrainingConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    resolved: dict[str, Any]  # the whole resolved config, as saved with checkpoints

    @classmethod
    def from_omegaconf(cls, cfg: DictConfig) -> RunConfig:
        cfg = OmegaConf.merge(schema(), cfg)
        OmegaConf.resolve(cfg)
        data = OmegaConf.to_object(cfg.data)  # its own checks first: the model's crop size comes from it
        model = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if v is not None}
        # the model's input is the cache's crop: model.image_size follows data.image_size unless set
        # (the resolved config keeps what the user wrote; this rule gives the same model from it)
        # (a different explicit one builds such a model; the trainer refuses to train it on this data)
        inherited = "image_size" not in model
        if inherited:
            model["image_size"] = cfg.data.image_size
        try:
            model_config = make_config(**model)
        except ConfigError as exc:
            if inherited and "model.image_size=" in str(exc):
                raise ConfigError(f"{exc} (model.image_size follows data.image_size)") from None
            raise
        return cls(
            experiment_name=cfg.experiment_name,
            data=data,
            model=model_config,
            loss=OmegaConf.to_object(cfg.loss),
            training=OmegaConf.to_object(cfg.training),
            checkpoint=OmegaConf.to_object(cfg.checkpoint),
            logging=OmegaConf.to_object(cfg.logging),
            resolved=OmegaConf.to_container(cfg),
        )

    @classmethod
    def from_resolved(cls, resolved: Mapping[str, Any]) -> RunConfig:
        """The typed view of a saved resolved config (a run's config.yaml / train_config.yaml)."""
        return cls.from_omegaconf(OmegaConf.create(dict(resolved)))

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.resolved))


def load_run_config(config_name: str = "config", overrides: list[str] | None = None) -> RunConfig:
    """The typed run config of `amt.config/<config_name>.yaml` with Hydra `overrides` (command-line
    form, e.g. ["training.batch_size=64", "model=tiny_conv"]); raises one of `LOAD_ERRORS` for a
    config that cannot be composed or validated."""
    return RunConfig.from_omegaconf(compose(config_name, overrides))


# What `load_run_config` raises for a user's mistake: Hydra (unknown config name or group option,
# unparsable override, unknown key, wrong type), OmegaConf (the same found while merging the
# schema), ConfigError (a value the model config refuses), KeyError (an unknown model preset).
LOAD_ERRORS: tuple[type[Exception], ...] = (HydraException, OmegaConfBaseException, ConfigError, KeyError)


def load_error_text(exc: BaseException) -> str:
    """One line for a `LOAD_ERRORS` error: Hydra's message without its config search path and its
    "+key" hint (the schema refuses new keys anyway), choices listed inline, then the first line
    of the OmegaConf error beneath it (which key, which type)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = text.split("\nConfig search path:")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith("To append to your config"))
    text = re.sub(r":\n\t", ": ", text.strip())  # "Available options in 'model':\n\ttiny\n\tvitl14"
    text = re.sub(r"\n\t", ", ", text)
    text = re.sub(r"\.?\n+", "; ", text)
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text = f"{text.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    return text
