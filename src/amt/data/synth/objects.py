"""Object models for the synthetic generator: YCB meshes or textured stand-in primitives.

`find_models_dir` resolves a DexYCB-style `models/` folder; `ObjectLibrary` loads meshes
(metres, model frame) with their textures and a signed-distance query used for grasping;
`write_models` puts the models actually used into `<out>/models/<name>/textured_simple.obj`
so every consumer reads objects from the dataset root.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial import cKDTree

from amt.data.ycb import YCB_CLASSES

log = logging.getLogger(__name__)

MODEL_FILE = "textured_simple.obj"
ENV_MODELS = "AMT_YCB_MODELS"
SDF_SAMPLES = 20000
TEXTURE_SIZE = 256

# Stand-in primitives with YCB-like sizes (metres), bottom at z = 0 like the YCB scans:
# ("box", (x, y, z)) or ("cylinder", (diameter, length, axis)) with axis "z" (upright) or "y".
PRIMITIVES: dict[int, tuple[str, tuple]] = {
    1: ("cylinder", (0.102, 0.140, "z")), 2: ("box", (0.072, 0.164, 0.213)),
    3: ("box", (0.049, 0.094, 0.176)), 4: ("cylinder", (0.068, 0.102, "z")),
    5: ("box", (0.097, 0.067, 0.191)), 6: ("cylinder", (0.086, 0.033, "z")),
    7: ("box", (0.110, 0.089, 0.036)), 8: ("box", (0.089, 0.073, 0.030)),
    9: ("box", (0.102, 0.060, 0.083)), 10: ("cylinder", (0.036, 0.180, "y")),
    11: ("cylinder", (0.150, 0.240, "z")), 12: ("box", (0.103, 0.068, 0.250)),
    13: ("cylinder", (0.160, 0.055, "z")), 14: ("cylinder", (0.090, 0.082, "z")),
    15: ("box", (0.184, 0.187, 0.057)), 16: ("box", (0.091, 0.090, 0.206)),
    17: ("box", (0.096, 0.202, 0.015)), 18: ("cylinder", (0.020, 0.121, "y")),
    19: ("box", (0.120, 0.171, 0.039)), 20: ("box", (0.210, 0.164, 0.036)),
    21: ("box", (0.053, 0.078, 0.051)),
}  # fmt: skip


def find_models_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The YCB models folder to use, or None for primitives.

    Order: `explicit` (must exist), $AMT_YCB_MODELS, then `shared/data/ycb_models` in the
    current directory or any parent, and the same relative to this package's source tree.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise FileNotFoundError(f"--models {path}: not a folder (expected <name>/{MODEL_FILE} inside)")
        return path
    env = os.environ.get(ENV_MODELS)
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(f"${ENV_MODELS}={env}: not a folder")
        return Path(env)
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for parent in [start, *start.parents]:
            for candidate in (parent / "shared" / "data" / "ycb_models", parent / "data" / "ycb_models"):
                if (candidate / YCB_CLASSES[1] / MODEL_FILE).is_file():
                    return candidate
    return None


def _primitive_texture(class_id: int) -> np.ndarray:
    """A deterministic label-like texture per class: base colour, bands and noise. (S, S, 3) uint8."""
    rng = np.random.default_rng(1000 + class_id)
    base, band, ink = rng.uniform(0.1, 0.95, size=(3, 3))
    v = np.linspace(0, 1, TEXTURE_SIZE)[:, None, None]
    u = np.linspace(0, 1, TEXTURE_SIZE)[None, :, None]
    lo, hi = np.sort(rng.uniform(0.2, 0.8, size=2))
    img = np.where((v > lo) & (v < hi), band, base) * np.ones_like(u)
    freq = rng.integers(2, 9)
    img = np.where((np.sin(u * np.pi * 2 * freq) > 0.85) & (v > lo) & (v < hi), ink, img)
    img = img + rng.normal(0, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _primitive_mesh(class_id: int) -> trimesh.Trimesh:
    """Primitive of `PRIMITIVES[class_id]` with cylindrical UVs and its texture (metres)."""
    kind, dims = PRIMITIVES[class_id]
    if kind == "box":
        mesh = trimesh.creation.box(extents=dims)
        mesh = mesh.subdivide().subdivide()
        mesh.apply_translation([0, 0, dims[2] / 2])
    else:
        diameter, length, axis = dims
        mesh = trimesh.creation.cylinder(radius=diameter / 2, height=length, sections=32)
        if axis == "y":
            mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
            mesh.apply_translation([0, 0, diameter / 2])
        else:
            mesh.apply_translation([0, 0, length / 2])
    v = mesh.vertices
    span = np.ptp(v, axis=0) + 1e-9
    uv = np.stack([0.5 + np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi), (v[:, 2] - v[:, 2].min()) / span[2]], 1)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(_primitive_texture(class_id)))
    return mesh


@dataclass
class ObjectModel:
    """One object class: a render soup and a signed-distance query, model frame, metres."""

    class_id: int
    mesh: trimesh.Trimesh
    texture: np.ndarray  # (H, W, 3) uint8
    surface_points: np.ndarray  # (S, 3) samples of the surface
    surface_normals: np.ndarray  # (S, 3) outward unit normals at the samples
    tree: cKDTree
    source_dir: Path | None  # folder copied into the output, None for a primitive

    @property
    def name(self) -> str:
        return YCB_CLASSES[self.class_id]

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) model-frame points -> (...,) metres, negative inside.

        Nearest surface sample; within 3 mm the distance is point-to-plane along that
        sample's normal (sub-millimetre accurate on the dense sampling), beyond it the
        Euclidean distance with the sign of the normal side.
        """
        flat = points.reshape(-1, 3)
        dist, idx = self.tree.query(flat)
        along = np.einsum("ij,ij->i", flat - self.surface_points[idx], self.surface_normals[idx])
        sd = np.where(dist < 0.003, along, np.sign(along) * dist)
        return sd.reshape(points.shape[:-1])

    def render_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Indexed mesh: positions (V, 3), smooth normals (V, 3), uv (V, 2), faces (F, 3)."""
        uv = getattr(self.mesh.visual, "uv", None)
        uv = np.zeros((len(self.mesh.vertices), 2)) if uv is None else np.asarray(uv)
        return np.asarray(self.mesh.vertices), np.asarray(self.mesh.vertex_normals), uv, np.asarray(self.mesh.faces)


class ObjectLibrary:
    """Lazily loaded object models from a YCB `models/` folder, or primitives when it is None."""

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = models_dir
        self._cache: dict[int, ObjectModel] = {}

    def preload(self, class_ids: list[int]) -> dict[int, ObjectModel]:
        """Load the given classes now; returns the loaded models (picklable, for worker processes)."""
        return {c: self.get(c) for c in sorted(set(class_ids))}

    def add(self, models: dict[int, ObjectModel]) -> None:
        """Adopt models loaded elsewhere (by `preload` in another process)."""
        self._cache.update(models)

    def get(self, class_id: int) -> ObjectModel:
        if class_id not in self._cache:
            self._cache[class_id] = self._load(class_id)
        return self._cache[class_id]

    def _load(self, class_id: int) -> ObjectModel:
        name = YCB_CLASSES[class_id]
        if self.models_dir is None:
            mesh, source = _primitive_mesh(class_id), None
        else:
            source = self.models_dir / name
            path = source / MODEL_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing model for class {class_id} ({name})")
            loaded = trimesh.load(path, process=False)
            if isinstance(loaded, trimesh.Scene):  # one geometry; taken as is (force="mesh" deep-copies)
                if len(loaded.geometry) != 1:
                    raise ValueError(f"{path}: expected one mesh, found {len(loaded.geometry)} geometries")
                loaded = next(iter(loaded.geometry.values()))
            mesh = loaded
        image = getattr(getattr(mesh.visual, "material", None), "image", None)
        texture = np.asarray(image.convert("RGB")) if image is not None else _primitive_texture(class_id)
        points, face_idx = trimesh.sample.sample_surface(mesh, SDF_SAMPLES, seed=class_id)
        normals = mesh.face_normals[face_idx]
        return ObjectModel(class_id, mesh, texture, points, normals, cKDTree(points), source)


def write_models(models_dir: Path | None, class_ids: list[int], out_models: Path) -> None:
    """Write `<out_models>/<name>/textured_simple.obj` (+ material, texture) for each class.

    YCB model folders are copied from `models_dir`; with None the primitives are exported.
    """
    for class_id in sorted(set(class_ids)):
        name = YCB_CLASSES[class_id]
        dest = out_models / name
        if (dest / MODEL_FILE).is_file():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        if models_dir is not None:
            for item in (models_dir / name).iterdir():
                if item.is_file():
                    shutil.copy2(item, dest / item.name)
        else:
            _primitive_mesh(class_id).export(dest / MODEL_FILE)
