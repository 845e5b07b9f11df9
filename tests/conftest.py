"""Shared fixtures: the shared data folder (skipped when absent) and a tiny fake DexYCB tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from amt.data.testing import write_fake_dexycb

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data relative to the repo root; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fake_dexycb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only tiny DexYCB tree: 10 subjects x 5 sequences x 8 serials x 1 frame (do not modify)."""
    return write_fake_dexycb(tmp_path_factory.mktemp("fake_dexycb"), seed=0)
