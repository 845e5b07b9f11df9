"""Fixtures for the trainer tests: a 16-sample fake DexYCB root with its 112-px cache, and a
factory of tiny run configs training on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from amt.data.cache import build_cache
from amt.data.testing import write_fake_dexycb
from amt.training.config import RunConfig, load_run_config

TRAIN_SPLIT = "s1_val"  # subject 6 only: 2 sequences x 8 serials x 1 frame = 16 samples
IMAGE_SIZE = 112


@pytest.fixture(scope="session")
def tiny_train_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only DexYCB-layout root whose split `s1_val` (16 samples) has its cache built."""
    root = write_fake_dexycb(
        tmp_path_factory.mktemp("train_data"), subjects=[6], sequences_per_subject=2, serials=8, frames=1, seed=0
    )
    build_cache(
        root, TRAIN_SPLIT, root / "cache" / f"{TRAIN_SPLIT}_{IMAGE_SIZE}", size=IMAGE_SIZE, workers=1, progress=False
    )
    return root


@pytest.fixture
def tiny_run_config(tiny_train_root: Path) -> Callable[..., RunConfig]:
    """`make(output_dir, *overrides)` -> RunConfig of the tiny preset at 112 px on the 16 samples,
    CPU, no validation, no TensorBoard, no progress bar."""

    def make(output_dir: Path, *overrides: str) -> RunConfig:
        base = [
            f"data.root={tiny_train_root}",
            f"data.split={TRAIN_SPLIT}",
            "data.val_split=null",
            f"data.image_size={IMAGE_SIZE}",
            f"model.image_size={IMAGE_SIZE}",
            "training.device=cpu",
            f"training.output_dir={output_dir}",
            "checkpoint.every_epochs=0",
            "logging.tensorboard=false",
            "logging.progress=false",
        ]
        return load_run_config("tiny", base + list(overrides))

    return make
