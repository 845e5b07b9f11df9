"""The dataset's own object tables (issue 15, item 3): core radii and symmetries computed from the
`models/` folder of the data, cached as JSON next to the data cache, and checked against the
reference values where the meshes are the same (the YCB google-16k scans of ../shared/data)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import amt.data.object_tables as object_tables
from amt.data.object_models import MESH_FILE, ObjectModels
from amt.data.object_tables import (
    OBJECT_CORE_RADIUS_M,
    ObjectTables,
    compare_with_reference,
    core_radius_table,
    object_tables_file,
)
from amt.data.symmetry import SYMMETRIC_CLASSES, SYMMETRY_MISMATCH_MAX, ObjectSymmetries
from amt.data.synth.objects import PRIMITIVES, write_models
from amt.data.ycb import NUM_CLASSES, YCB_CLASSES
from amt.training.losses import AMTLoss

YCB_MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ycb_models"


@pytest.fixture(scope="module")
def primitive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root whose models/ holds the synthetic generator's primitives for every class."""
    root = tmp_path_factory.mktemp("primitives")
    write_models(None, list(YCB_CLASSES), root / "models")
    return root


def _primitive_core_radius(class_id: int) -> float:
    """Half the smallest bounding-box side of `PRIMITIVES[class_id]`, from its dimensions."""
    kind, dims = PRIMITIVES[class_id]
    return min(dims) / 2 if kind == "box" else min(dims[0], dims[1]) / 2


def test_tables_from_the_ycb_meshes_equal_the_reference() -> None:
    if not YCB_MODELS.is_dir():
        pytest.skip(f"{YCB_MODELS} not available (../shared/data is absent)")
    tables = ObjectTables.from_models(YCB_MODELS)
    assert set(tables.from_mesh) == set(range(1, NUM_CLASSES + 1))
    for class_id in range(1, NUM_CLASSES + 1):
        assert float(tables.core_radius[class_id]) == pytest.approx(OBJECT_CORE_RADIUS_M[class_id], abs=1e-4)
    assert compare_with_reference(tables) == []  # same meshes: no disagreement
    assert all(tables.mismatch[c] < SYMMETRY_MISMATCH_MAX for c in SYMMETRIC_CLASSES)
    torch.testing.assert_close(tables.symmetries.centres, ObjectSymmetries.from_models(YCB_MODELS).centres)


def test_tables_of_a_generated_models_folder_are_what_the_loss_uses(primitive_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="amt.data.object_tables"):
        tables = ObjectTables.for_root(primitive_root)
    want = torch.tensor([0.0] + [_primitive_core_radius(c) for c in range(1, NUM_CLASSES + 1)])
    torch.testing.assert_close(tables.core_radius, want, atol=1e-6, rtol=0)
    # other meshes than the reference: the disagreement is reported, naming a class that differs
    assert "core radii computed from them are used" in caplog.text and "019_pitcher_base" in caplog.text
    assert all(tables.mismatch[c] < SYMMETRY_MISMATCH_MAX for c in SYMMETRIC_CLASSES)  # boxes, cylinder
    loss = AMTLoss(symmetries=tables.symmetries, core_radius=tables.core_radius)
    torch.testing.assert_close(loss.core_radius, want, atol=1e-6, rtol=0)
    assert not torch.allclose(loss.core_radius, core_radius_table(), atol=1e-4)
    torch.testing.assert_close(loss.symmetries.centres, tables.symmetries.centres)
    torch.testing.assert_close(AMTLoss().core_radius, core_radius_table())  # no tables: the reference


def test_tables_are_cached_as_json_next_to_the_data_cache(primitive_root: Path, monkeypatch, tmp_path) -> None:
    computed = ObjectTables.for_root(primitive_root)
    path = object_tables_file(primitive_root)
    assert path == primitive_root / "cache" / "object_tables.json"
    data = json.loads(path.read_text())  # plain JSON, no pickle
    assert data["core_radius_m"]["1"] == pytest.approx(float(computed.core_radius[1]))

    def no_recompute(models):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(ObjectTables, "from_models", classmethod(lambda cls, models: no_recompute(models)))
    cached = ObjectTables.for_root(primitive_root)
    torch.testing.assert_close(cached.core_radius, computed.core_radius)
    torch.testing.assert_close(cached.symmetries.centres, computed.symmetries.centres)
    torch.testing.assert_close(cached.symmetries.axes, computed.symmetries.axes)
    torch.testing.assert_close(cached.symmetries.rotations, computed.symmetries.rotations)
    assert cached.mismatch == pytest.approx(computed.mismatch)
    monkeypatch.undo()

    # other meshes under the same path (a new dataset version): the cache no longer applies
    other = tmp_path / "root"
    write_models(None, list(YCB_CLASSES), other / "models")
    (other / "cache").mkdir()
    (other / "cache" / "object_tables.json").write_bytes(path.read_bytes())
    trimesh.creation.box(extents=(0.3, 0.2, 0.1)).export(other / "models" / YCB_CLASSES[1] / MESH_FILE)
    assert float(ObjectTables.for_root(other).core_radius[1]) == pytest.approx(0.05, abs=1e-6)
    # a damaged cache file is recomputed, with a warning, never a crash
    (other / "cache" / "object_tables.json").write_text("{not json")
    assert float(ObjectTables.for_root(other).core_radius[1]) == pytest.approx(0.05, abs=1e-6)


def test_a_tabled_symmetry_that_does_not_fit_the_mesh_is_reported(tmp_path: Path, caplog) -> None:
    """A wood block (16, 4-fold about z) that is not square in x-y: its table does not fit."""
    folder = tmp_path / "models" / YCB_CLASSES[16]
    folder.mkdir(parents=True)
    trimesh.creation.box(extents=(0.05, 0.12, 0.2)).subdivide().subdivide().export(folder / MESH_FILE)
    with caplog.at_level(logging.WARNING, logger="amt.data.object_tables"):
        tables = ObjectTables.for_root(tmp_path)
    assert tables.from_mesh == (16,) and tables.mismatch[16] > SYMMETRY_MISMATCH_MAX
    assert "class 16 (036_wood_block)" in caplog.text and "SYMMETRY_ROTATIONS" in caplog.text
    # classes without a mesh keep the reference values
    torch.testing.assert_close(tables.core_radius[1], core_radius_table()[1])


def test_no_models_folder_falls_back_to_the_reference(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="amt.data.object_tables"):
        tables = ObjectTables.for_root(tmp_path)
    assert "no object models folder" in caplog.text and tables.source == "reference"
    torch.testing.assert_close(tables.core_radius, core_radius_table())
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_place_only_logs(primitive_root: Path, monkeypatch, caplog) -> None:
    def refuse(path, value, indent=None):
        raise PermissionError(f"{path}: read-only file system")

    monkeypatch.setattr(object_tables, "write_json_atomic", refuse)
    models = ObjectModels(primitive_root / "models")
    with caplog.at_level(logging.WARNING, logger="amt.data.object_tables"):
        tables = ObjectTables.for_models_dir(models.models_dir, primitive_root / "elsewhere" / "tables.json")
    assert "cannot cache the object tables" in caplog.text
    assert np.isclose(float(tables.core_radius[16]), _primitive_core_radius(16))
