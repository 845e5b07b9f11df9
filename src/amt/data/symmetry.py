"""Pose symmetries of the YCB objects about their symmetry centres: the one implementation that the
loss (`amt.training.losses`), the matching cost (`amt.models.matching`) and the evaluator's
rotation and position errors (`amt.evaluation.evaluator`) all use (docs/losses.md "Symmetry").

A symmetry of an object is a rigid motion of its model frame that maps its surface onto itself:
a rotation `S` about the symmetry centre `c` (model frame, metres), x -> S (x - c) + c. The pose
(R, t) therefore looks exactly like every pose

    (R S, t + R (I - S) c)

and the point that every such pose puts in the same place is the centre, `t + R c`. So:

* rotation error = min over the class's discrete rotations S_k of the geodesic angle between the
  predicted R' and R S_k; for a continuous symmetry about the unit axis a (through c), the angle
  between R' a and R a (the exact minimum over all rotations about a);
* position error = || (t' + R' c) - (t + R c) ||, the distance between the predicted and the true
  symmetry centre: zero for every visually identical pose, and the plain translation error for
  asymmetric classes, whose c is 0 (their model origin).

The rotations S_k and the continuous axes' model-frame directions are the tables below
(`SYMMETRY_ROTATIONS`, `CONTINUOUS_SYMMETRY_AXIS`; `symmetry_mismatch` checks them on a dataset's
meshes); the centre `c` (and the continuous axis' direction) is computed from the object meshes
(`ObjectSymmetries.from_models`): the area-weighted centroid of the surface, the point that every
symmetry of the surface leaves in place (so it lies on every symmetry axis), and for a continuous
symmetry the principal axis of the surface's second moments whose moment differs
from the other two. Meshes of different sources sit in different model frames (the YCB google-16k
meshes of the demo have the wood block's centre 0.10 m above the origin; DexYCB's YCB-Video
meshes are nearly centred), which is why the centres are computed, never tabulated. Without a
models folder `ObjectSymmetries.from_tables()` is the documented fallback: c = 0 (rotations about
the model origin) and the tables' axes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import roma
import torch
from scipy.spatial import cKDTree

from amt.data.object_models import ObjectModels
from amt.data.ycb import NUM_CLASSES
from amt.geometry.rotations import rotation_about_z

log = logging.getLogger(__name__)

# Discrete symmetries of the YCB objects in their model frames, as rotations about the object's
# centre (checked against each dataset's meshes by `symmetry_mismatch`, `amt.data.object_tables`):
# 4-fold about z plus the flips for the square wood block, the three 180 deg flips for the foam
# brick, the flip about the long axis for the clamps (y for 19, x for 20). The bowl (13) is
# continuous about z (`CONTINUOUS_SYMMETRY_AXIS`). Every other class has the identity only: the
# cans and boxes are symmetric in shape but not in texture, and the loss must see the label.
_X180, _Y180 = torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
_Z_TURNS = rotation_about_z(torch.arange(4) * (math.pi / 2))  # 0, 90, 180, 270 deg
SYMMETRY_ROTATIONS: dict[int, torch.Tensor] = {
    16: torch.cat([_Z_TURNS, _X180 @ _Z_TURNS]),
    19: torch.stack([torch.eye(3), _Y180]),
    20: torch.stack([torch.eye(3), _X180]),
    21: torch.stack([torch.eye(3), _X180, _Y180, _Z_TURNS[2]]),
}
CONTINUOUS_SYMMETRY_AXIS: dict[int, int] = {13: 2}  # class id -> model axis (0 x, 1 y, 2 z)
# A tabled symmetry fits a mesh when it moves the surface by less than this fraction of the
# bounding-box diagonal (mean nearest-neighbour distance): the YCB scans give 0.01-0.03 for their
# symmetries and 0.07-0.12 for a 90 deg turn that is none.
SYMMETRY_MISMATCH_MAX = 0.04
_CONTINUOUS_CHECK_ANGLES = (0.5, 1.0, 2.0, 3.0)  # radians: turns about a continuous axis checked


def symmetry_table() -> torch.Tensor:
    """(NUM_CLASSES + 1, S, 3, 3): each class id's symmetry rotations, padded with the identity."""
    size = max(len(r) for r in SYMMETRY_ROTATIONS.values())
    table = torch.eye(3).expand(NUM_CLASSES + 1, size, 3, 3).clone()
    for class_id, rotations in SYMMETRY_ROTATIONS.items():
        table[class_id, : len(rotations)] = rotations
    return table


SYMMETRIC_CLASSES: tuple[int, ...] = tuple(sorted(set(SYMMETRY_ROTATIONS) | set(CONTINUOUS_SYMMETRY_AXIS)))
# roma's clamp below 1 keeps the gradient finite for 180-degree errors (the angle saturates
# 2.8e-3 rad below pi); exact at and near 0, where a correct prediction sits.
_ASIN_CLAMP = 1.0 - 1e-6


@dataclass(frozen=True)
class ObjectSymmetries:
    """Per-class symmetry tables, indexed by YCB id (row 0: no object).

    rotations: (C+1, S, 3, 3) discrete symmetry rotations (identity-padded; the identity only for
    asymmetric classes); centres: (C+1, 3) symmetry centre c in the model frame, metres (0 for
    asymmetric classes); axes: (C+1, 3) unit model-frame axis of a continuous symmetry, 0 where
    the class has none; source: where the centres came from ("tables" or the models folder).
    """

    rotations: torch.Tensor
    centres: torch.Tensor
    axes: torch.Tensor
    source: str = "tables"

    @classmethod
    def from_tables(cls) -> ObjectSymmetries:
        """The fallback without meshes: the tables' rotations and axes about the model origin (c = 0)."""
        axes = torch.zeros(NUM_CLASSES + 1, 3)
        for class_id, axis in CONTINUOUS_SYMMETRY_AXIS.items():
            axes[class_id, axis] = 1.0
        return cls(symmetry_table(), torch.zeros(NUM_CLASSES + 1, 3), axes, "tables")

    @classmethod
    def from_models(cls, models: ObjectModels | str | Path | None, num_points: int = 8192) -> ObjectSymmetries:
        """Centres (and continuous axes) computed from the meshes of a `models/` folder.

        models: an `ObjectModels`, its folder, or None (then `from_tables()`). A symmetric class
        without a mesh in the folder keeps the fallback (c = 0, the table's axis) with a warning.
        """
        if models is None:
            return cls.from_tables()
        models = models if isinstance(models, ObjectModels) else ObjectModels(models)
        base = cls.from_tables()
        centres, axes = base.centres.clone(), base.axes.clone()
        available = set(models.available())
        for class_id in SYMMETRIC_CLASSES:
            if class_id not in available:
                log.info("%s: no mesh for symmetric class %d: its symmetry centre falls back to the model origin",
                            models.models_dir, class_id)  # fmt: skip
                continue
            centre, axis = surface_centre_and_axis(models, class_id, axes[class_id].numpy(), num_points)
            centres[class_id] = torch.from_numpy(centre).float()
            if class_id in CONTINUOUS_SYMMETRY_AXIS:
                axes[class_id] = torch.from_numpy(axis).float()
        return cls(base.rotations, centres, axes, str(models.models_dir))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ObjectSymmetries:
        """A copy with the tables on `device` / in `dtype`."""

        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype)

        return ObjectSymmetries(move(self.rotations), move(self.centres), move(self.axes), self.source)


def surface_centre_and_axis(
    models: ObjectModels, class_id: int, reference_axis: np.ndarray, num_points: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(3,) area-weighted surface centroid (metres, model frame) and (3,) unit principal axis of
    the surface's second moments closest to `reference_axis` (sign aligned with it; the reference
    itself when it is 0), from the class's mesh."""
    mesh = models.mesh(class_id)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    centroids = np.asarray(mesh.triangles_center, dtype=np.float64)
    centre = (centroids * area[:, None]).sum(0) / area.sum()
    reference = np.asarray(reference_axis, dtype=np.float64)
    if not np.any(reference):
        return centre, reference
    points = models.points(class_id, n=num_points).astype(np.float64) - centre
    _, vectors = np.linalg.eigh(points.T @ points / len(points))
    axis = vectors[:, int(np.argmax(np.abs(vectors.T @ reference)))]
    return centre, axis * np.sign(axis @ reference)


def _geodesic(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    return roma.rotmat_geodesic_distance(R1, R2, clamping=_ASIN_CLAMP)


def _angle_between(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., 3) x2 -> (...,) radians, atan2(|u x v|, u . v): stable gradient everywhere but at 0."""
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def symmetric_rotation_error(
    pred_R: torch.Tensor, gt_R: torch.Tensor, class_id: torch.Tensor, sym: ObjectSymmetries
) -> torch.Tensor:
    """Radians (...,) from pred_R, gt_R (..., 3, 3) and YCB ids (...,) (broadcastable): see the
    module docstring. Rows with a continuous axis use the axis angle, the others the minimum over
    the discrete rotations (the identity only for asymmetric classes: the plain geodesic angle)."""
    S = sym.rotations.to(gt_R)[class_id]  # (..., S, 3, 3)
    discrete = _geodesic(pred_R.unsqueeze(-3), gt_R.unsqueeze(-3) @ S).amin(dim=-1)
    axis = sym.axes.to(gt_R)[class_id]  # (..., 3)
    continuous = axis.abs().sum(-1) > 0
    if not bool(continuous.any()):
        return discrete
    axis_angle = _angle_between((pred_R @ axis.unsqueeze(-1))[..., 0], (gt_R @ axis.unsqueeze(-1))[..., 0])
    return torch.where(continuous, axis_angle, discrete)


def symmetry_centre_position(
    R: torch.Tensor, t: torch.Tensor, class_id: torch.Tensor, sym: ObjectSymmetries
) -> torch.Tensor:
    """(..., 3) camera-frame position t + R c of the class's symmetry centre (metres); t itself
    for asymmetric classes. R (..., 3, 3), t (..., 3), class_id (...) broadcastable."""
    c = sym.centres.to(t)[class_id]
    return t + (R @ c.unsqueeze(-1))[..., 0]


def symmetric_pose_error(
    pred_R: torch.Tensor,
    pred_t: torch.Tensor,
    gt_R: torch.Tensor,
    gt_t: torch.Tensor,
    class_id: torch.Tensor,
    sym: ObjectSymmetries,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation error (...) radians, position error (...) metres) of predicted poses against
    ground-truth poses of classes `class_id`: zero for every visually identical pose
    (R S, t + R (I - S) c). Shapes broadcast: (..., 3, 3), (..., 3), (..., 3, 3), (..., 3), (...)."""
    rotation = symmetric_rotation_error(pred_R, gt_R, class_id, sym)
    pred_centre = symmetry_centre_position(pred_R, pred_t, class_id, sym)
    gt_centre = symmetry_centre_position(gt_R, gt_t, class_id, sym)
    return rotation, (pred_centre - gt_centre).norm(dim=-1)


def symmetry_mismatch(models: ObjectModels, class_id: int, sym: ObjectSymmetries, num_points: int = 2000) -> float:
    """How far the class's tabled symmetries are from mapping its mesh onto itself: the largest,
    over its non-identity rotations (or turns of 0.5-3 rad about its continuous axis) about the
    centre `sym.centres[class_id]`, of the mean distance from each turned surface sample to the
    nearest unturned one, as a fraction of the bounding-box diagonal (0 for asymmetric classes).
    Above `SYMMETRY_MISMATCH_MAX` the table does not fit these meshes (another model frame)."""
    points = models.points(class_id, n=num_points).astype(np.float64) - sym.centres[class_id].double().numpy()
    axis = sym.axes[class_id].double()
    if bool(axis.abs().sum() > 0):
        turns = roma.rotvec_to_rotmat(axis[None] * torch.tensor(_CONTINUOUS_CHECK_ANGLES, dtype=torch.float64)[:, None])
    elif class_id in SYMMETRY_ROTATIONS:
        turns = SYMMETRY_ROTATIONS[class_id][1:].double()
    else:
        return 0.0
    tree = cKDTree(points)
    diagonal = float(np.linalg.norm(points.max(0) - points.min(0))) or 1.0
    return max(float(tree.query(points @ R.numpy().T)[0].mean()) / diagonal for R in turns)
