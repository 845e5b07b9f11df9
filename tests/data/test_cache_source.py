"""A complete cache is reused only while it is still a cache of its dataset: data changed after
the build (other labels, frames added) stop `ensure_cache`, `resolve_cache` and `amt eval` with the
command that rebuilds it, and that command does."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from amt.cli import main as amt_main
from amt.data.cache import META_FILE, CacheError, build_cache, cache_folder, ensure_cache
from amt.data.cache_source import SOURCE_KEY, probe_indices
from amt.data.testing import write_fake_dexycb
from amt.training.config import DataConfig
from amt.training.data import resolve_cache
from amt.training.distributed import DistContext

SPLIT, SIZE = "s0_val", 32
FRAMES = [0, 0, 0, 0, 2] * 2  # 2 subjects: s0_val is the fifth sequence of each, 2 frames x 8 serials


def _tree(root: Path, seed: int = 1, frames: list[int] = FRAMES) -> Path:
    return write_fake_dexycb(root, subjects=2, frames=frames, seed=seed)


def _ensure(root: Path) -> Path:
    return ensure_cache(root, SPLIT, SIZE, workers=1, progress=False)


def test_probe_indices_spread_over_the_split() -> None:
    assert probe_indices(0) == []
    assert probe_indices(1) == [0]
    assert probe_indices(5) == [0, 1, 2, 3, 4]
    many = probe_indices(1000)
    assert len(many) == 16 and many[0] == 0 and many[-1] == 999


def test_changed_labels_stop_reuse_with_a_command_that_rebuilds(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    folder = _ensure(root)
    assert _ensure(root) == folder  # unchanged data: reused
    params = json.loads((folder / META_FILE).read_text())["params"]
    assert params[SOURCE_KEY]["num_samples"] == 32 and len(params[SOURCE_KEY]["labels_sha256"]) == 64

    _tree(root, seed=2)  # same frames, other labels
    with pytest.raises(CacheError, match="as many samples, but their labels changed") as err:
        _ensure(root)
    message = str(err.value)
    assert str(folder) in message and "--force" in message
    command = shlex.split(message.split("rebuild it: `")[1].rstrip("`"))
    assert command[0] == "amt" and amt_main(command[1:] + ["--workers", "1"]) == 0
    assert _ensure(root) == folder  # rebuilt from the data as they are


def test_added_frames_stop_training_and_evaluation(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    folder = build_cache(root, SPLIT, cache_folder(root, SPLIT, SIZE), size=SIZE, workers=1, progress=False)
    _tree(root, frames=[0, 0, 0, 0, 3] * 2)
    data = DataConfig(root=str(root), image_size=SIZE)
    with pytest.raises(CacheError, match="had 32 samples then and has 48 now"):
        resolve_cache(data, SPLIT, None, DistContext())
    # an explicit cache folder is the user's choice: not compared with data.root
    assert resolve_cache(data, SPLIT, str(folder), DistContext()) == folder


def test_a_cache_without_a_fingerprint_is_reused(tmp_path: Path) -> None:
    """Caches built before the check record no source: reused as before."""
    root = _tree(tmp_path / "data")
    folder = _ensure(root)
    meta = json.loads((folder / META_FILE).read_text())
    del meta["params"][SOURCE_KEY]
    (folder / META_FILE).write_text(json.dumps(meta))
    _tree(root, seed=2)
    assert _ensure(root) == folder
