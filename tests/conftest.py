"""Shared fixtures: the shared data folder (skipped when absent), a tiny fake DexYCB tree and box
object models for every class."""

from __future__ import annotations

from pathlib import Path

import pytest
import trimesh

from amt.data.object_models import MESH_FILE, ObjectModels
from amt.data.testing import write_fake_dexycb
from amt.data.ycb import YCB_CLASSES

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


@pytest.fixture(scope="session")
def object_models(tmp_path_factory: pytest.TempPathFactory) -> ObjectModels:
    """Centred 6 x 4 x 3 cm boxes for every class (for object metrics: ADD, diameters)."""
    root = tmp_path_factory.mktemp("models")
    for name in YCB_CLASSES.values():
        (root / name).mkdir()
        trimesh.creation.box(extents=(0.06, 0.04, 0.03)).export(root / name / MESH_FILE)
    return ObjectModels(root)
