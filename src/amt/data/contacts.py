"""Hand-object contact labels derived from poses (docs/data.md "Contact labels").

DexYCB ships no contacts. An object is in contact when the hand surface comes within a
threshold of the posed object surface; the contact point is the object-surface point closest
to the hand. The hand surface is MANO's vertices when the caller has them, otherwise the 21
joints plus points along the bones (`amt.geometry.hand_surface.skeleton_surface_points`).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from scipy.spatial import cKDTree

from amt.errors import ConfigError, finite_number
from amt.geometry.hand_surface import skeleton_surface_points

DEFAULT_THRESHOLD_MM = 10.0


@dataclass(frozen=True)
class ContactConfig:
    """threshold_mm: contact distance (millimetres); num_points: object surface samples."""

    threshold_mm: float = DEFAULT_THRESHOLD_MM
    num_points: int = 1024

    def __post_init__(self) -> None:
        if not (finite_number(self.threshold_mm) and self.threshold_mm > 0):
            raise ConfigError(f"contact threshold must be a positive number of millimetres, got {self.threshold_mm!r}")
        if not (isinstance(self.num_points, Integral) and self.num_points >= 1):
            raise ConfigError(f"contact num_points must be a whole number >= 1, got {self.num_points!r}")


@dataclass(frozen=True)
class ContactLabels:
    """Per-object contact labels for one frame (M objects).

    in_contact: (M,) bool; points: (M, 3) float32 metres, camera frame (zeros where not in
    contact); distance: (M,) float32 metres, smallest hand-object distance (inf when unknown).
    """

    in_contact: np.ndarray
    points: np.ndarray
    distance: np.ndarray


def hand_surface(joints_3d: np.ndarray, vertices: np.ndarray | None = None) -> np.ndarray:
    """Hand surface points (P, 3) metres: MANO `vertices` (778, 3) if given, else skeleton samples."""
    if vertices is not None:
        return np.asarray(vertices, dtype=np.float32)
    joints = torch.as_tensor(np.asarray(joints_3d, dtype=np.float32))
    return skeleton_surface_points(joints).numpy()


def pose_points(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Model points (N, 3) -> camera frame with x_cam = R x + t. R: (3, 3), t: (3,)."""
    return (np.asarray(points) @ np.asarray(R).T + np.asarray(t)).astype(np.float32)


def contact_labels(
    hand_points: np.ndarray,
    object_points: list[np.ndarray],
    threshold_mm: float = DEFAULT_THRESHOLD_MM,
) -> ContactLabels:
    """Contacts between one hand and M objects, all in the same frame (metres).

    hand_points: (P, 3); object_points: M arrays (N_m, 3) of posed object surface points (an
    empty array for an object without a pose). One KD-tree over the hand answers every object
    point's nearest-hand distance at once.
    """
    m = len(object_points)
    in_contact = np.zeros(m, dtype=bool)
    points = np.zeros((m, 3), dtype=np.float32)
    distance = np.full(m, np.inf, dtype=np.float32)
    sizes = [len(p) for p in object_points]
    if m == 0 or sum(sizes) == 0 or len(hand_points) == 0:
        return ContactLabels(in_contact, points, distance)
    all_points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in object_points])
    d, _ = cKDTree(np.asarray(hand_points, dtype=np.float64)).query(all_points, k=1)
    start = 0
    for i, n in enumerate(sizes):
        if n:
            j = int(np.argmin(d[start : start + n]))
            distance[i] = d[start + j]
            points[i] = all_points[start + j]
        start += n
    in_contact = distance <= threshold_mm / 1000.0
    points[~in_contact] = 0.0
    return ContactLabels(in_contact, points, distance)
