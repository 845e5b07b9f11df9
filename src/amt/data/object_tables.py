"""Per-object tables that the losses and metrics use, for the objects of one dataset.

* core radius (m): the radius of the largest sphere about the object origin treated as certainly
  solid (the penetration term of the loss), half the smallest side of the mesh's axis-aligned
  bounding box in its model frame;
* pose symmetries (`amt.data.symmetry.ObjectSymmetries`): the tabled rotations about a symmetry
  centre and continuous axis computed from the mesh.

`ObjectTables.for_models_dir` computes both from a dataset's `models/` folder (DexYCB ships its own
YCB-Video meshes, which may sit in other model frames than the YCB google-16k scans of
`../shared/data`), caches them as JSON next to the data cache (`OBJECT_TABLES_FILE` in
`<root>/cache/`, keyed by the meshes' SHA-256) and checks them against the reference values below
(`compare_with_reference`: a warning naming every class that differs). Without a models folder the
reference values are the documented fallback (`ObjectTables.reference()`).

Class ids are the YCB ids of `amt.data.ycb` (1..21); rotations act in each object's model frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amt.data.cache_format import CACHE_SUBDIR, file_digest
from amt.data.object_models import ObjectModels
from amt.data.symmetry import (
    CONTINUOUS_SYMMETRY_AXIS,
    SYMMETRIC_CLASSES,
    SYMMETRY_MISMATCH_MAX,
    SYMMETRY_ROTATIONS,
    ObjectSymmetries,
    symmetry_mismatch,
    symmetry_table,
)
from amt.data.synth.layout import is_synthetic
from amt.data.ycb import NUM_CLASSES, YCB_CLASSES
from amt.jsonio import write_json_atomic

__all__ = [  # the symmetry tables are re-exported: the losses and older code import them from here
    "CONTINUOUS_SYMMETRY_AXIS",
    "CORE_RADIUS_TOLERANCE_M",
    "OBJECT_CORE_RADIUS_M",
    "OBJECT_TABLES_FILE",
    "SYMMETRY_ROTATIONS",
    "ObjectTables",
    "compare_with_reference",
    "models_digest",
    "core_radius_table",
    "object_tables_file",
    "symmetry_table",
]

log = logging.getLogger(__name__)

# The reference: half the smallest side of each YCB google-16k mesh's axis-aligned bounding box
# (the meshes of ../shared/data/ycb_models; tests/data/test_object_tables.py recomputes them).
OBJECT_CORE_RADIUS_M: dict[int, float] = {
    1: 0.0512, 2: 0.0359, 3: 0.0247, 4: 0.0339, 5: 0.0333, 6: 0.0168, 7: 0.0194,
    8: 0.0150, 9: 0.0301, 10: 0.0184, 11: 0.0724, 12: 0.0338, 13: 0.0275, 14: 0.0407,
    15: 0.0286, 16: 0.0450, 17: 0.0078, 18: 0.0094, 19: 0.0196, 20: 0.0182, 21: 0.0256,
}  # fmt: skip
# The reference values are rounded to 0.1 mm: a computed radius within this of one is the same.
CORE_RADIUS_TOLERANCE_M = 1e-4
OBJECT_TABLES_FILE = "object_tables.json"
_FORMAT, _VERSION = "amt-object-tables", 1


def core_radius_table() -> torch.Tensor:
    """(NUM_CLASSES + 1,) `OBJECT_CORE_RADIUS_M` indexed by YCB id (index 0, no object: 0 m)."""
    return torch.tensor([0.0] + [OBJECT_CORE_RADIUS_M[i] for i in range(1, NUM_CLASSES + 1)])


def object_tables_file(root: str | Path) -> Path:
    """Where the tables of a dataset root are cached: <root>/cache/object_tables.json, next to
    the split caches (`amt.data.cache.cache_folder`)."""
    return Path(root) / CACHE_SUBDIR / OBJECT_TABLES_FILE


def models_digest(models: ObjectModels) -> str:
    """SHA-256 over the (class id, mesh SHA-256) of every mesh in the folder: the cache key."""
    h = hashlib.sha256()
    for class_id in models.available():
        h.update(f"{class_id}:{file_digest(models.path(class_id))};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectTables:
    """The per-object tables of one dataset, indexed by YCB id (row 0: no object).

    symmetries: rotations (C+1, S, 3, 3), centres (C+1, 3) m, axes (C+1, 3); core_radius: (C+1,)
    metres; from_mesh: class ids whose values were computed from a mesh (the others keep the
    reference values); mismatch: {class id: `symmetry_mismatch`} of the symmetric classes with a
    mesh (fraction of the bounding-box diagonal); source: the models folder or "reference".
    """

    symmetries: ObjectSymmetries
    core_radius: torch.Tensor
    from_mesh: tuple[int, ...] = ()
    mismatch: dict[int, float] | None = None
    source: str = "reference"

    @classmethod
    def reference(cls) -> ObjectTables:
        """The built-in tables (google-16k core radii, symmetries about the model origins)."""
        return cls(ObjectSymmetries.from_tables(), core_radius_table())

    @classmethod
    def from_models(cls, models: ObjectModels | str | Path) -> ObjectTables:
        """Computed from the meshes of a `models/` folder; a class without a mesh keeps the
        reference core radius (and the symmetry fallback, c = 0)."""
        models = models if isinstance(models, ObjectModels) else ObjectModels(models)
        available = models.available()
        radius = core_radius_table()
        for class_id in available:
            vertices = np.asarray(models.mesh(class_id).vertices, dtype=np.float64)
            radius[class_id] = float((vertices.max(0) - vertices.min(0)).min() / 2)
        sym = ObjectSymmetries.from_models(models)
        mismatch = {c: symmetry_mismatch(models, c, sym) for c in SYMMETRIC_CLASSES if c in available}
        return cls(sym, radius, tuple(available), mismatch, str(models.models_dir))

    @classmethod
    def for_models_dir(
        cls, models_dir: str | Path | None, cache_file: str | Path | None = None, write: bool = True
    ) -> ObjectTables:
        """The tables of a dataset's models folder: read from `cache_file` when it holds the
        tables of these exact meshes, else computed (`from_models`) and written there (when
        `write`; an unwritable place only logs). Checked against the reference values
        (`compare_with_reference`, a warning per disagreement). No folder: `reference()`, logged."""
        folder = Path(models_dir) if models_dir is not None else None
        if folder is None or not folder.is_dir():
            log.warning("no object models folder (%s): reference object tables (google-16k core radii, "
                        "symmetries about the model origins)", folder)  # fmt: skip
            return cls.reference()
        models = ObjectModels(folder)
        digest = models_digest(models)
        tables = cls.read(cache_file, digest) if cache_file is not None else None
        if tables is None:
            tables = cls.from_models(models)
            if cache_file is not None and write:
                try:
                    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(Path(cache_file), tables.to_json(digest), indent=1)
                except OSError as exc:  # a read-only dataset: compute again next time
                    log.warning("%s: cannot cache the object tables (%s)", cache_file, exc)
        # `amt synth`'s stand-in meshes differ from the google-16k ones by design: said, not warned
        synthetic = is_synthetic(folder.parent)
        if synthetic:
            log.info("%s: a synthetic dataset's meshes; core radii computed from them", folder)
        for problem in compare_with_reference(tables, core_radii=not synthetic):
            log.warning("%s", problem)
        return tables

    @classmethod
    def for_root(cls, root: str | Path | None, write: bool = True) -> ObjectTables:
        """`for_models_dir(<root>/models, <root>/cache/object_tables.json)` of a dataset root."""
        if root is None:
            return cls.for_models_dir(None)
        return cls.for_models_dir(Path(root) / "models", object_tables_file(root), write)

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self, digest: str) -> dict[str, Any]:
        """The cache file's content (metres; `models_sha256` = `models_digest` of the folder)."""
        sym = self.symmetries
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "models_dir": self.source,
            "models_sha256": digest,
            "core_radius_m": {str(c): float(self.core_radius[c]) for c in range(1, NUM_CLASSES + 1)},
            "from_mesh": list(self.from_mesh),
            "symmetry": {
                str(c): {
                    "name": YCB_CLASSES[c],
                    "centre_m": [float(x) for x in sym.centres[c]],
                    "axis": [float(x) for x in sym.axes[c]],
                    "mismatch": (self.mismatch or {}).get(c),
                }
                for c in SYMMETRIC_CLASSES
            },
        }

    @classmethod
    def read(cls, path: str | Path, digest: str) -> ObjectTables | None:
        """The tables cached in `path` for meshes of SHA-256 `digest`; None when the file is
        absent, of another version or of other meshes, or unreadable (then logged: it is rebuilt)."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT or data.get("version") != _VERSION or data["models_sha256"] != digest:
                return None
            radius = torch.zeros(NUM_CLASSES + 1)
            for c in range(1, NUM_CLASSES + 1):
                radius[c] = float(data["core_radius_m"][str(c)])
            base = ObjectSymmetries.from_tables()
            centres, axes = base.centres.clone(), base.axes.clone()
            mismatch: dict[int, float] = {}
            for key, entry in data["symmetry"].items():
                centres[int(key)] = torch.tensor(entry["centre_m"], dtype=torch.float32)
                axes[int(key)] = torch.tensor(entry["axis"], dtype=torch.float32)
                if entry.get("mismatch") is not None:
                    mismatch[int(key)] = float(entry["mismatch"])
            sym = ObjectSymmetries(symmetry_table(), centres, axes, str(data["models_dir"]))
            from_mesh = tuple(int(c) for c in data["from_mesh"])
            return cls(sym, radius, from_mesh, mismatch, str(data["models_dir"]))
        except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            log.warning("%s: unreadable object tables (%s); computing them again", path, exc)
            return None


def compare_with_reference(
    tables: ObjectTables, tolerance_m: float = CORE_RADIUS_TOLERANCE_M, core_radii: bool = True
) -> list[str]:
    """One line per disagreement of computed tables with the reference (empty when they agree):
    core radii off the google-16k values by more than `tolerance_m` (expected when the dataset's
    meshes are other ones, e.g. DexYCB's YCB-Video models or primitives: the computed values are
    used), and tabled symmetries that do not map the dataset's mesh onto itself (mismatch over
    `SYMMETRY_MISMATCH_MAX`: its model frame differs, so the symmetry tables need adapting).
    core_radii=False leaves the core radii out (meshes known to be others)."""
    problems = []
    differ = [
        f"{c} ({YCB_CLASSES[c]}): {float(tables.core_radius[c]) * 1e3:.1f} mm vs {OBJECT_CORE_RADIUS_M[c] * 1e3:.1f} mm"
        for c in tables.from_mesh
        if core_radii and abs(float(tables.core_radius[c]) - OBJECT_CORE_RADIUS_M[c]) > tolerance_m
    ]
    if differ:
        problems.append(
            f"{tables.source}: the meshes differ from the YCB google-16k reference; core radii computed from them "
            f"are used: " + ", ".join(differ)
        )
    for c, value in sorted((tables.mismatch or {}).items()):
        if value > SYMMETRY_MISMATCH_MAX:
            problems.append(
                f"{tables.source}: the tabled symmetries of class {c} ({YCB_CLASSES[c]}) do not map its mesh onto "
                f"itself (mismatch {value:.3f} of the diagonal > {SYMMETRY_MISMATCH_MAX}): its model frame differs "
                f"from the reference; fix amt.data.symmetry.SYMMETRY_ROTATIONS / CONTINUOUS_SYMMETRY_AXIS for it"
            )
    return problems
