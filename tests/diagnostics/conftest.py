"""Fixtures for the diagnostics tests: a tiny AMT at 56 px, random batches, a 8-sample cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from amt.data.cache import build_cache, cache_folder
from amt.data.testing import write_fake_dexycb
from amt.models import AMT, build_model
from amt.testing import random_batch as fake_batch

SIZE = 56
SPLIT = "s1_val"  # subject 6: 1 sequence x 8 serials x 1 frame = 8 samples


@pytest.fixture(scope="session")
def tiny56() -> Callable[[], AMT]:
    """Factory of fresh tiny models at 56 px (same seed, so identical weights)."""

    def make() -> AMT:
        torch.manual_seed(0)
        return build_model("tiny", image_size=SIZE).eval()

    return make


@pytest.fixture(scope="session")
def random_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """`random_batch(batch_size, seed)`: random normalised images and a crop K (fx = 175 px)."""

    def make(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
        return fake_batch(batch_size, SIZE, seed=seed, labels=False)

    return make


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only DexYCB-layout root with the 56-px cache of `s1_val` (8 samples) built."""
    root = write_fake_dexycb(tmp_path_factory.mktemp("debug_data"), subjects=[6], sequences_per_subject=1, serials=8)
    build_cache(root, SPLIT, cache_folder(root, SPLIT, SIZE), size=SIZE, workers=1, progress=False)
    return root
