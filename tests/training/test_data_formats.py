"""Issue 18 acceptance: the same tiny training run on the synthetic data written in the DexYCB
layout and in the plain-folder layout (`amt synth --format folder`) builds identical caches
(byte-for-byte labels and crops) and gives identical first-step losses; `data.format=ho3d` trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amt.data.cache import cache_folder, open_cache
from amt.data.synth.layout import is_synthetic
from amt.data.synthetic_cli import main as synth_main
from amt.data.testing_ho3d import write_fake_ho3d
from amt.training.callbacks import Callback, StepInfo
from amt.training.config import load_run_config
from amt.training.trainer import Trainer

IMAGE_SIZE = 112
SPLIT = "s0_train"


@pytest.fixture(scope="module")
def synth_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic dataset (16 images, half the sequences left hands), written twice."""
    base = tmp_path_factory.mktemp("synth_formats")
    common = ["--frames", "16", "--primitives", "--workers", "1", "--seed", "5", "--left-fraction", "0.5"]
    assert synth_main([str(base / "dexycb"), *common]) == 0
    assert synth_main([str(base / "folder"), *common, "--format", "folder"]) == 0
    return {"dexycb": base / "dexycb", "folder": base / "folder"}


def _first_step(root: Path, format: str, out: Path, split: str = SPLIT) -> StepInfo:
    cfg = load_run_config(
        "tiny",
        [
            f"data.root={root}",
            f"data.format={format}",
            f"data.split={split}",
            "data.val_split=null",
            f"data.image_size={IMAGE_SIZE}",
            f"model.image_size={IMAGE_SIZE}",
            "data.cache_workers=1",
            "training.device=cpu",
            "training.batch_size=4",
            "training.max_steps=1",
            f"training.output_dir={out}",
            "checkpoint.every_epochs=0",
            "logging.tensorboard=false",
            "logging.progress=false",
        ],
    )
    infos: list[StepInfo] = []

    class Record(Callback):
        def on_step_end(self, trainer, info):
            infos.append(info)

    trainer = Trainer(cfg, evaluator=None)
    trainer.callbacks.append(Record())
    trainer.fit()
    assert len(infos) == 1
    return infos[0]


def test_dexycb_and_folder_layouts_give_identical_caches_and_first_step_losses(synth_roots, tmp_path):
    steps = {fmt: _first_step(root, fmt, tmp_path / fmt) for fmt, root in synth_roots.items()}
    caches = {fmt: open_cache(cache_folder(root, SPLIT, IMAGE_SIZE)) for fmt, root in synth_roots.items()}
    a, b = caches["dexycb"], caches["folder"]
    assert len(a) == len(b) == 16
    assert a.params["format"] == "dexycb" and b.params["format"] == "folder"
    for key in a.labels:
        left, right = np.asarray(a.labels[key]), np.asarray(b.labels[key])
        assert left.dtype == right.dtype and left.tobytes() == right.tobytes(), key
    assert np.asarray(a.labels["is_left"]).any()  # both sides were exercised
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.meta == b.meta
    assert all(is_synthetic(root) for root in synth_roots.values())  # reports label both as synthetic
    assert steps["dexycb"].loss == steps["folder"].loss
    assert steps["dexycb"].terms == steps["folder"].terms
    assert np.isfinite(steps["dexycb"].loss)


def test_a_training_step_runs_on_an_ho3d_tree(tmp_path):
    root = tmp_path / "ho3d"
    write_fake_ho3d(root, "v2", frames=2)
    info = _first_step(root, "ho3d", tmp_path / "run", split="train")
    assert np.isfinite(info.loss) and not info.skipped
    assert open_cache(cache_folder(root, "train", IMAGE_SIZE)).params["format"] == "ho3d"
