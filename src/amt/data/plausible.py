"""Plausibility bounds that catch the common unit mistakes in hand-object labels (millimetres or
centimetres for metres, placeholder joints at one point) before anything trains on them; used by
the plain-folder reader and by the cache builder's check of every reader's samples."""

from __future__ import annotations

import numpy as np

# The largest distance between two joints of one hand, metres: adults ~0.17-0.22 m, a child's
# hand ~0.1 m; millimetres give ~200, placeholder zeros 0.
HAND_SPAN_M = (0.04, 0.5)
# The farthest an annotated object can sit from the camera, metres (millimetres give hundreds).
MAX_OBJECT_DISTANCE_M = 20.0


def hand_span_problem(joints: np.ndarray) -> str | None:
    """None when (21, 3) joints have a hand's size in metres, else what is wrong (for an error)."""
    span = float(np.linalg.norm(joints[:, None] - joints[None], axis=-1).max())
    if HAND_SPAN_M[0] <= span <= HAND_SPAN_M[1]:
        return None
    hint = " (millimetres? divide by 1000)" if span > HAND_SPAN_M[1] else ""
    return (
        f"spans {span:.4g} between its farthest joints, not a hand's {HAND_SPAN_M[0]:g}-{HAND_SPAN_M[1]:g}; "
        f"metres are expected{hint}"
    )


def object_distance_problem(translation: np.ndarray) -> str | None:
    """None when an object's (3,) translation is a plausible distance in metres, else what is wrong."""
    distance = float(np.linalg.norm(translation))
    if distance <= MAX_OBJECT_DISTANCE_M:
        return None
    return f"puts the object {distance:.4g} from the camera; metres are expected (millimetres? divide by 1000)"
