"""Shared fixtures for the model tests: one tiny model per session, small batches."""

from __future__ import annotations

import pytest
import torch

from amt.models import AMT, build_model
from amt.testing import random_batch


def _make_batch(batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised images and a plausible crop K (fx = fy = 700 px, centre 112)."""
    return random_batch(batch_size, 224, seed=seed, labels=False)


@pytest.fixture(scope="session")
def tiny_model() -> AMT:
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def make_batch():
    """Factory: make_batch(batch_size, seed=0) -> {"image": (B,3,224,224), "K": (B,3,3)}."""
    return _make_batch
