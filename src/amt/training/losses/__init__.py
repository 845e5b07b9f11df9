"""The AMT training losses: `LossConfig` (config.py), the term functions (terms.py) and the
eleven-term `AMTLoss` (loss.py). Object and hand tables live with the data they describe
(`amt.data.object_tables`, `amt.geometry.hand_skeleton`) and are re-exported here."""

from amt.data.object_tables import CONTINUOUS_SYMMETRY_AXIS, OBJECT_CORE_RADIUS_M, SYMMETRY_ROTATIONS, symmetry_table
from amt.geometry.hand_skeleton import BEND_LIMIT_DEG, BONE_RANGE, NOMINAL_BONE_LENGTH_M
from amt.training.losses.config import TERM_NAMES, LossConfig
from amt.training.losses.loss import MIN_DEPTH_M, AMTLoss
from amt.training.losses.terms import (
    bend_angles,
    bone_lengths,
    bone_vectors,
    focal_bce,
    hand_joint_loss,
    heatmap_kl,
    joint_weights,
    rotation_error,
)

__all__ = [
    "BEND_LIMIT_DEG",
    "BONE_RANGE",
    "CONTINUOUS_SYMMETRY_AXIS",
    "MIN_DEPTH_M",
    "NOMINAL_BONE_LENGTH_M",
    "OBJECT_CORE_RADIUS_M",
    "SYMMETRY_ROTATIONS",
    "TERM_NAMES",
    "AMTLoss",
    "LossConfig",
    "bend_angles",
    "bone_lengths",
    "bone_vectors",
    "focal_bce",
    "hand_joint_loss",
    "heatmap_kl",
    "joint_weights",
    "rotation_error",
    "symmetry_table",
]
