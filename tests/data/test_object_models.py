"""Tests for amt.data.object_models.ObjectModels."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial.distance import cdist

from amt.data.object_models import ObjectModels
from amt.data.ycb import YCB_CLASSES


def _brute_force_diameter(vertices: np.ndarray) -> float:
    return max(float(cdist(vertices[s : s + 1024], vertices).max()) for s in range(0, len(vertices), 1024))


def _write_box(models_dir, class_id, extents):
    folder = models_dir / YCB_CLASSES[class_id]
    folder.mkdir(parents=True)
    trimesh.creation.box(extents=extents).export(folder / "textured_simple.obj")


def test_box_points_lie_on_surface_and_diameter_is_space_diagonal(tmp_path):
    extents = np.array([0.04, 0.1, 0.16])
    _write_box(tmp_path, 7, extents)
    models = ObjectModels(tmp_path)
    pts = models.points(7, n=500)
    assert pts.shape == (500, 3) and pts.dtype == np.float32
    assert np.all(np.abs(pts) <= extents / 2 + 1e-6)
    on_face = np.isclose(np.abs(pts), extents / 2, atol=1e-6).any(axis=1)
    assert on_face.all()
    assert models.diameter(7) == pytest.approx(np.linalg.norm(extents), abs=1e-9)
    assert models.available() == [7]


def test_points_are_deterministic_cached_and_copied(tmp_path):
    _write_box(tmp_path, 3, [0.05, 0.05, 0.2])
    a = ObjectModels(tmp_path).points(3, n=64)
    models = ObjectModels(tmp_path)
    b = models.points(3, n=64)
    np.testing.assert_array_equal(a, b)
    b[:] = 0
    np.testing.assert_array_equal(models.points(3, n=64), a)
    assert models.points(3, n=32).shape == (32, 3)


def test_missing_class_error_names_the_folder(tmp_path):
    _write_box(tmp_path, 1, [0.1, 0.1, 0.1])
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*{YCB_CLASSES[21]}"):
        ObjectModels(tmp_path).mesh(21)
    with pytest.raises(FileNotFoundError, match="missing_models"):
        ObjectModels(tmp_path / "missing_models")


def test_real_ycb_meshes_diameter_matches_brute_force(shared_data):
    models = ObjectModels(shared_data / "ycb_models")
    assert models.available() == sorted(YCB_CLASSES)
    vertices = np.asarray(models.mesh(21).vertices)  # foam brick: one of the smallest meshes
    assert models.diameter(21) == pytest.approx(_brute_force_diameter(vertices), abs=1e-9)
    pts = models.points(21, n=256)
    assert np.all(pts >= vertices.min(0) - 1e-6) and np.all(pts <= vertices.max(0) + 1e-6)
