"""`amt train` with a validation split that has no samples in data.root (issue 14): validation is
skipped with one logged warning naming the split, and training runs; no traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.training.conftest import IMAGE_SIZE, TRAIN_SPLIT

from amt.cli import main as amt_main
from amt.data.testing import write_fake_dexycb


def test_an_empty_validation_split_is_skipped_with_a_warning(
    tiny_train_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # s0_val selects sequence position 4 of subjects 0-1; this root has one sequence per subject
    root = write_fake_dexycb(tmp_path / "data", subjects=2, sequences_per_subject=1, serials=8, labels=False,
                             images=False, models=False)  # fmt: skip
    out = tmp_path / "run"
    args = [
        "train", "--config-name", "tiny", f"data.root={root}", "data.val_split=s0_val",
        f"data.cache_dir={tiny_train_root / 'cache' / f'{TRAIN_SPLIT}_{IMAGE_SIZE}'}",
        f"data.image_size={IMAGE_SIZE}", f"model.image_size={IMAGE_SIZE}", "training.device=cpu",
        f"training.output_dir={out}", "training.max_steps=1", "training.batch_size=4", "checkpoint.every_epochs=0",
        "logging.tensorboard=false", "logging.progress=false",
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert amt_main(args) == 0
    assert any("s0_val" in r.getMessage() and "validation is skipped" in r.getMessage() for r in caplog.records)
