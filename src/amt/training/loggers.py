"""Run records: the run folder (never reused by accident) and its config.yaml, TensorBoard / W&B
scalars, the progress bar, the values logged.

`RunLoggers.log_scalars(scalars, step)` is the one way scalars leave a run (rank 0 only; the
other ranks hold no writers). TensorBoard events go to `<run>/tensorboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from amt.evaluation.metrics import collapse_ratio
from amt.extras import require
from amt.locks import LOCK_FILE

TENSORBOARD = "tensorboard"  # sub-folder of the run folder


def check_output_dir(folder: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into an existing non-empty run folder unless asked to (never deletes)."""
    if folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir()) and not (overwrite or resuming):
        raise FileExistsError(
            f"{folder}: training.output_dir exists and is not empty; choose another folder, resume with "
            f"checkpoint.resume_from=..., or set training.overwrite=true to write into it"
        )


def open_summary_writer(run_dir: Path, step: int, filename_suffix: str = "") -> Any:
    """A TensorBoard writer on `<run_dir>/tensorboard`; on resume (step > 0) it drops the events
    a crashed run logged after the checkpoint's step."""
    from torch.utils.tensorboard import SummaryWriter  # why: tensorboard is slow to import and often off

    return SummaryWriter(str(run_dir / TENSORBOARD), purge_step=step or None, filename_suffix=filename_suffix)


def prediction_spread(outputs: dict[str, Any], batch: dict[str, Any]) -> float | None:
    """Std of predicted root-relative joints across the batch / the same for the ground truth
    (valid hands only; None with fewer than 2). Near 0 means the model predicts one pose."""
    valid = batch["hand_valid"].bool()
    if int(valid.sum()) < 2:
        return None
    return collapse_ratio(outputs["joints_3d"].detach().float()[valid], batch["joints_3d"].float()[valid])


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


def summarize_metrics(metrics: dict[str, float], limit: int = 6) -> str:
    """A one-line summary of flat validation metrics for the log (hand MPJPEs first)."""
    keys = [k for k in metrics if k.startswith("hand.") and k.endswith(".mpjpe")] or list(metrics)
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys[:limit])


class RunLoggers:
    """The writers of one run. cfg: the `RunConfig` (`logging.*`); only rank 0 opens anything."""

    def __init__(self, cfg: Any, run_dir: Path, is_main: bool) -> None:
        self.cfg, self.run_dir, self.is_main = cfg, run_dir, is_main
        self._writer: Any = None
        self._wandb: Any = None

    def open(self, step: int) -> None:
        """Create the run folder, write its config.yaml, open TensorBoard / W&B as configured."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        if self.cfg.logging.tensorboard:
            self._writer = open_summary_writer(self.run_dir, step)
        if self.cfg.logging.wandb:
            wandb = require("wandb", "wandb", "logging.wandb=true")
            self._wandb = wandb.init(
                project=self.cfg.logging.wandb_project,
                name=self.cfg.experiment_name,
                dir=str(self.run_dir),
                mode=self.cfg.logging.wandb_mode,
                config=self.cfg.resolved,
                resume="allow",
            )

    def progress_bar(self, total: int, initial: int) -> Any:
        """A tqdm bar over the optimizer steps (rank 0 with `logging.progress`), else None."""
        if not (self.is_main and self.cfg.logging.progress):
            return None
        from tqdm import tqdm  # why: start-up time; only interactive runs draw a bar

        return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def log_scalars(self, scalars: dict[str, float | torch.Tensor], step: int) -> None:
        """Write `scalars` ({tag: value}) at `step` to every open writer."""
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
