"""The crop margin travels with the model: the trainer records its training cache's margin in the
model config (so in every checkpoint), `amt predict` frames new crops with it, and `amt eval` /
`amt debug` refuse a cache framed with another margin instead of reporting wrong numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amt.checkpoint import load_model
from amt.data.cache import build_cache, cache_crop_margin, ensure_cache
from amt.data.cache_format import CacheError
from amt.data.testing import write_fake_dexycb
from amt.data.transforms import CropConfig
from amt.inference.predictor import Predictor
from amt.models.amt import build_model
from amt.training.config import DataConfig
from amt.training.data import resolve_cache
from amt.training.distributed import DistContext
from amt.training.trainer import record_crop_margin

SPLIT, SIZE = "s0_val", 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_dexycb(tmp_path_factory.mktemp("margin_tree"), subjects=2, frames=[0, 0, 0, 0, 4] * 2, seed=3)


def _cache(tree: Path, out: Path, margin: float) -> Path:
    return build_cache(tree, SPLIT, out, size=SIZE, workers=1, progress=False, margin=margin)


def test_the_trained_margin_is_recorded_saved_and_used_to_crop(tree: Path, tmp_path: Path) -> None:
    model = build_model("tiny", load_backbone_weights=False, image_size=SIZE)
    assert model.config.crop_margin is None  # nothing recorded before training
    folder = _cache(tree, tmp_path / "m2", margin=2.0)
    record_crop_margin(model, cache_crop_margin(folder), folder)
    assert model.config.crop_margin == 2.0
    model.save_pretrained(tmp_path / "ckpt")
    assert load_model(tmp_path / "ckpt").config.crop_margin == 2.0
    assert Predictor.from_checkpoint(tmp_path / "ckpt").crop.margin == 2.0  # the model's by default
    assert Predictor.from_checkpoint(tmp_path / "ckpt", crop=CropConfig(margin=1.25)).crop.margin == 1.25
    # a model that records none (an older checkpoint) keeps the default
    assert (
        Predictor(build_model("tiny", load_backbone_weights=False, image_size=SIZE)).crop.margin == CropConfig().margin
    )


def test_a_cache_framed_with_another_margin_is_refused_naming_the_folder(tree: Path, tmp_path: Path) -> None:
    default = _cache(tree, tmp_path / "m15", margin=CropConfig().margin)
    assert ensure_cache(tree, SPLIT, SIZE, default, workers=1, progress=False) == default  # no requirement
    assert ensure_cache(tree, SPLIT, SIZE, default, workers=1, progress=False, margin=1.5) == default
    with pytest.raises(CacheError, match=re.escape(f"{default}: built with crop margin 1.5") + ".*margin 2"):
        ensure_cache(tree, SPLIT, SIZE, default, workers=1, progress=False, margin=2.0)
    # a missing cache is built with the margin asked for
    built = ensure_cache(tree, SPLIT, SIZE, tmp_path / "new", workers=1, progress=False, margin=2.0)
    assert ensure_cache(tree, SPLIT, SIZE, built, workers=1, progress=False, margin=2.0) == built


def test_the_validation_cache_is_framed_like_the_training_cache(tree: Path, tmp_path: Path) -> None:
    """The trainer asks `resolve_cache` for the validation split at the training cache's margin."""
    data = DataConfig(root=str(tree), image_size=SIZE, cache_workers=1)
    other = _cache(tree, tmp_path / "val15", margin=1.5)
    with pytest.raises(CacheError, match=re.escape(str(other))):
        resolve_cache(data, SPLIT, str(other), DistContext(), optional=True, margin=2.0)
    built = resolve_cache(data, SPLIT, str(tmp_path / "val2"), DistContext(), optional=True, margin=2.0)
    assert built is not None and cache_crop_margin(built) == 2.0
