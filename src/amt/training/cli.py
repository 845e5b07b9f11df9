"""`amt train [--config-name NAME] [overrides...]` (also under `torchrun --nproc_per_node=N -m amt train`)."""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf

from amt.checkpoint import CheckpointError
from amt.data.cache_format import CacheError
from amt.data.dataset import READER_ERRORS, DatasetError
from amt.data.loaders import CacheBudgetError
from amt.errors import ConfigError
from amt.locks import FolderLockedError
from amt.models.amt import ModelFileError
from amt.models.backbone import BackboneWeightsError
from amt.training.config import LOAD_ERRORS, load_error_text, load_run_config
from amt.training.distributed import cleanup, init_distributed
from amt.training.preemption import EXIT_PREEMPTED, TrainingPreempted
from amt.training.step import CompileUnavailable
from amt.training.trainer import train

log = logging.getLogger(__name__)

EPILOG = """\
configs (src/amt/config): `config` (default: the paper setup, ViT-L/14 on DexYCB) and `tiny`
(CPU-sized), selected with --config-name. Groups: data/, model/, training/, experiment/.
Overrides use Hydra syntax and are passed verbatim, e.g.

  amt train data.root=/data/dexycb training.batch_size=64 training.learning_rate=5e-4
  amt train experiment=paper data.root=$DEX_YCB_DIR
  amt train --config-name tiny data.root=runs/synth training.max_steps=200
  amt train model.hidden_dim=768 checkpoint.resume_from=runs/other/checkpoints/best
  torchrun --nproc_per_node=4 --max-restarts=3 -m amt train data.root=... training.batch_size=256
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
      --rdzv-id=JOB --max-restarts=3 -m amt train ...      # on every node
  amt train @runs/sweeps/NAME/best_overrides.txt training.output_dir=runs/best   # arguments from a file

training.batch_size is the global batch of one optimizer step (split over processes and
gradient-accumulation steps).

Resume: checkpoint.resume_from=auto (the default) continues training.output_dir's newest complete
checkpoint, so rerunning the same command (or torchrun --max-restarts) resumes a killed run; any
other existing non-empty folder is refused unless training.overwrite=true. SIGTERM or SIGUSR1:
every rank saves at the next step boundary, then the command exits with code 75 (resume with the
same command); checkpoint.every_minutes (default 30) bounds what a hard kill loses.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amt train",
        description="Train an AMT model (Hydra config composition).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fromfile_prefix_chars="@",  # `amt train @FILE`: arguments one per line (e.g. amt sweep's best_overrides.txt)
    )
    p.add_argument("--config-name", default="config", help="top-level config: config (paper, default) or tiny")
    p.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. training.batch_size=64")
    return p


def train_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_run_config(args.config_name, args.overrides)
    except LOAD_ERRORS as exc:  # a typo in an override, an unknown preset: one line, no traceback
        print(f"amt train: {load_error_text(exc)}", file=sys.stderr)
        return 2
    if args.cfg:
        print(cfg.to_yaml(), end="")
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx = init_distributed(cfg.training.device)
    except ConfigError as exc:  # DeviceConfigError, or a device this machine lacks
        print(f"amt train: {exc}", file=sys.stderr)
        return 2
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        if ctx.is_main:
            print(f"# amt train --config-name {args.config_name} {' '.join(args.overrides)}")
            print(OmegaConf.to_yaml(OmegaConf.create(cfg.resolved)), end="", flush=True)
        trainer = train(cfg, ctx)
        done = f"finished {trainer.step} steps ({trainer.skipped_steps} skipped); run folder {trainer.run_dir}"
        # Free the DDP reducer while the process group lives: freed after destroy_process_group,
        # gloo's destructor joins a worker thread that waits for the GIL we hold (a hang at exit).
        del trainer
        if ctx.is_main:
            print(done)
    except TrainingPreempted as exc:
        if ctx.is_main:
            print(f"amt train: stopped by {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    # refused folder, no weights, no compiler, a setting that cannot work, bad data: one line
    except (
        CheckpointError,
        FolderLockedError,
        FileExistsError,
        BackboneWeightsError,
        CompileUnavailable,
        ConfigError,
        ModelFileError,
        CacheError,
        CacheBudgetError,
        DatasetError,
        *READER_ERRORS,
    ) as exc:
        print(f"amt train: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main(sys.argv[1:]))
