"""YCB object meshes of a DexYCB-layout root: `<models_dir>/<class_name>/textured_simple.obj`.

Meshes are in metres in the object (model) frame; points and diameters are cached per class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from amt.data.ycb import YCB_CLASSES

logger = logging.getLogger(__name__)

MESH_FILE = "textured_simple.obj"
SAMPLING_SEED = 0


class ObjectModels:
    """Lazy access to the object meshes of a `models/` folder.

    models_dir: folder with one sub-folder per class name (docs/data.md "Objects").
    """

    def __init__(self, models_dir: str | Path) -> None:
        self.models_dir = Path(models_dir)
        if not self.models_dir.is_dir():
            raise FileNotFoundError(f"{self.models_dir}: object models folder not found")
        self._meshes: dict[int, trimesh.Trimesh] = {}
        self._points: dict[tuple[int, int], np.ndarray] = {}
        self._diameters: dict[int, float] = {}

    def path(self, class_id: int) -> Path:
        """The mesh file of a YCB class id (1..21)."""
        if class_id not in YCB_CLASSES:
            raise KeyError(f"unknown YCB class id {class_id}; expected 1..{len(YCB_CLASSES)}")
        return self.models_dir / YCB_CLASSES[class_id] / MESH_FILE

    def available(self) -> list[int]:
        """Class ids whose mesh file exists."""
        return [c for c in YCB_CLASSES if self.path(c).is_file()]

    def mesh(self, class_id: int) -> trimesh.Trimesh:
        """The class's mesh (metres, model frame), loaded once and cached; do not modify it."""
        if class_id not in self._meshes:
            path = self.path(class_id)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.models_dir}: no mesh for class {class_id} ({YCB_CLASSES[class_id]}); expected {path}"
                )
            mesh = trimesh.load(path, force="mesh", process=False)
            if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
                raise ValueError(f"{path}: not a triangle mesh")
            self._meshes[class_id] = mesh
        return self._meshes[class_id]

    def points(self, class_id: int, n: int = 1024) -> np.ndarray:
        """(n, 3) float32 metres: area-uniform samples of the mesh surface, identical on every call
        (fixed seed), cached per (class, n). Returns a copy."""
        key = (class_id, n)
        if key not in self._points:
            mesh = self.mesh(class_id)
            pts, _ = trimesh.sample.sample_surface(mesh, n, seed=SAMPLING_SEED)
            self._points[key] = np.asarray(pts, dtype=np.float32)
        return self._points[key].copy()

    def diameter(self, class_id: int) -> float:
        """Largest distance between two mesh vertices, metres (BOP's definition)."""
        if class_id not in self._diameters:
            vertices = np.asarray(self.mesh(class_id).vertices, dtype=np.float64)
            try:
                candidates = vertices[ConvexHull(vertices).vertices]
            except Exception:  # noqa: BLE001 - qhull fails on flat/degenerate meshes; fall back to all vertices
                logger.debug("%s: convex hull failed, using all vertices", self.path(class_id))
                candidates = vertices
            self._diameters[class_id] = float(pdist(candidates).max()) if len(candidates) > 1 else 0.0
        return self._diameters[class_id]
