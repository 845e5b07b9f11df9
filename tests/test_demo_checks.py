"""The demo's learning checks (issue 16) on synthetic predictions, no training: a model that
detects nothing and predicts no contact fails the object and contact checks, a model that gets
the objects and contacts right passes them, and naming a bystander fails the class accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from amt.data.object_models import ObjectModels
from amt.data.ycb import NUM_CLASSES
from amt.demo import checks_table, learning_checks
from amt.evaluation.evaluator import Predictions, TrainingStatistics, compute_metrics

N, SLOTS, QUERIES = 40, 2, 5
OBJECT_CHECKS = {"grasped-object recall", "grasped-object class accuracy", "grasped-object translation error (mm)"}


def _truth(seed: int = 0) -> dict[str, np.ndarray]:
    """N images, two objects of distinct classes each, slot 0 grasped and in contact."""
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 0.04, (N, 21, 3)) + [0, 0, 0.6]
    contact = np.zeros((N, SLOTS), bool)
    contact[:, 0] = True
    return {
        "obj_class": np.stack([rng.choice(np.arange(1, NUM_CLASSES + 1), SLOTS, replace=False) for _ in range(N)]),
        "obj_t": np.array([0.0, 0.0, 0.6]) + rng.normal(0, 0.1, (N, SLOTS, 3)),
        "obj_R": Rotation.random(N * SLOTS, random_state=seed).as_matrix().reshape(N, SLOTS, 3, 3),
        "obj_valid": np.ones((N, SLOTS), bool),
        "grasped": np.zeros(N, np.int64),
        "contact_valid": contact,
        "contact_points": np.zeros((N, SLOTS, 3)),
        "hand_valid": np.ones(N, bool),
        "joints_3d": joints,
    }


def _predictions(gt: dict, obj_prob: np.ndarray, contact_prob: np.ndarray) -> Predictions:
    """The hand exact; objects: query m at slot m's pose (queries >= SLOTS at the origin)."""
    obj_t = np.zeros((N, QUERIES, 3))
    obj_R = np.broadcast_to(np.eye(3), (N, QUERIES, 3, 3)).copy()
    obj_t[:, :SLOTS], obj_R[:, :SLOTS] = gt["obj_t"], gt["obj_R"]
    return Predictions(
        index=np.arange(N), position=np.arange(N), meta=[{}] * N, joints_3d=gt["joints_3d"].copy(),
        joint_conf=np.ones((N, 21)), obj_t=obj_t, obj_R=obj_R, obj_prob=obj_prob,
        contact_points=np.zeros((N, QUERIES, 3)), contact_prob=contact_prob, gt=gt,
    )  # fmt: skip


def _report(object_models: ObjectModels, pred: Predictions) -> dict:
    gt = pred.gt
    train_t = gt["obj_t"].reshape(-1, 3)
    stats = TrainingStatistics(
        (gt["joints_3d"] - gt["joints_3d"][:, :1]).mean(axis=0), train_t.mean(axis=0), N, len(train_t),
        gt["obj_t"][:, 0].mean(axis=0), N,
    )  # fmt: skip
    return compute_metrics(pred, object_models, stats, num_model_points=64)


def _one_hot(classes: np.ndarray) -> np.ndarray:
    """(N, QUERIES, C+1): query m names slot m's class (ids are 1-based), the rest "no object"."""
    prob = np.zeros((N, QUERIES, NUM_CLASSES + 1))
    prob[..., NUM_CLASSES] = 1.0
    for m in range(SLOTS):
        prob[np.arange(N), m] = 0.0
        prob[np.arange(N), m, classes[:, m] - 1] = 1.0
    return prob


def _verdicts(result: dict) -> dict[str, bool]:
    return {c.name: c.passed for c in learning_checks(result)}


def test_no_object_no_contact_fails_the_object_and_contact_checks(object_models: ObjectModels) -> None:
    gt = _truth()
    nothing = np.zeros((N, QUERIES, NUM_CLASSES + 1))
    nothing[..., NUM_CLASSES] = 1.0  # every query: "no object"
    result = _report(object_models, _predictions(gt, nothing, np.zeros((N, QUERIES))))
    verdicts = _verdicts(result)
    assert verdicts["root-relative MPJPE (mm)"] and verdicts["collapse ratio"]  # the hand is exact
    assert not any(verdicts[name] for name in OBJECT_CHECKS)
    assert not verdicts["contact F1"]
    assert result["objects"]["grasped"]["recall"] == 0.0
    assert result["objects"]["grasped"]["class_accuracy"] == 0.0
    assert "FAIL" in checks_table(learning_checks(result), result)  # missing numbers print, not crash


def test_detecting_but_never_touching_fails_the_contact_check(object_models: ObjectModels) -> None:
    """Objects right, contacts "no" everywhere: the contact accuracy equals the majority rate
    (passing the old check), the F1 is 0."""
    gt = _truth()
    result = _report(object_models, _predictions(gt, _one_hot(gt["obj_class"]), np.zeros((N, QUERIES))))
    verdicts = _verdicts(result)
    assert all(verdicts[name] for name in OBJECT_CHECKS)
    assert result["contacts"]["accuracy"] == pytest.approx(result["contacts"]["majority_class_rate"])
    assert not verdicts["contact F1"]


def test_a_model_right_on_every_head_passes_every_check(object_models: ObjectModels) -> None:
    gt = _truth()
    contact = np.zeros((N, QUERIES))
    contact[:, 0] = 0.9  # the grasped slot's query
    result = _report(object_models, _predictions(gt, _one_hot(gt["obj_class"]), contact))
    assert all(_verdicts(result).values()), checks_table(learning_checks(result), result)
    assert result["objects"]["grasped"]["class_accuracy"] == 1.0


def test_class_accuracy_counts_the_estimate_the_model_says_is_touched(object_models: ObjectModels) -> None:
    """Both objects detected, but the bystander (slot 1) has the highest contact probability: the
    model names the wrong object as grasped, so the class accuracy is 0 while the recall is 1."""
    gt = _truth()
    contact = np.zeros((N, QUERIES))
    contact[:, 1] = 0.9
    result = _report(object_models, _predictions(gt, _one_hot(gt["obj_class"]), contact))
    assert result["objects"]["grasped"]["recall"] == 1.0
    assert result["objects"]["grasped"]["class_accuracy"] == 0.0
    assert not _verdicts(result)["grasped-object class accuracy"]
