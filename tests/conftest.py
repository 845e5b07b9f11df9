"""Shared fixtures: the shared data folder (skipped when absent), a tiny fake DexYCB tree and box
object models for every class."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import trimesh

from amt.data.object_models import MESH_FILE, ObjectModels
from amt.data.testing import write_fake_dexycb
from amt.data.ycb import YCB_CLASSES


def _share_cores_between_xdist_workers() -> None:
    """Give each pytest-xdist worker, and the processes its tests start, cores / workers threads.
    With torch's default (every core per process) `pytest -n 2` on 2 cores ran 4 OpenMP threads:
    the suite took 717 s against 602 s with one thread per worker, back to back (2026-12-03).
    An OMP_NUM_THREADS the user set wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_cores_between_xdist_workers()

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
