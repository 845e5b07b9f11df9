"""Object scoring by the BOP protocol (docs/metrics.md "Objects"): which estimates are scored,
their ADD / ADD-S / ADD(-S), symmetry-aware position and rotation errors, and the report's
object section. `amt.evaluation.evaluator` calls it on collected `Predictions`.

Every query whose most probable class is an object is an estimate of that class, scored by that
class probability; per image and object id the top-scoring estimates, as many as that id has
instances, are evaluated. Ground-truth poses never choose which prediction is scored (they only
pair an already chosen estimate with one of several instances of its id, lowest error first, as
BOP does). Units: metres in the arrays, millimetres and degrees in the summaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amt.data.object_models import ObjectModels
from amt.data.symmetry import ObjectSymmetries, symmetric_pose_error, symmetry_centre_position
from amt.data.ycb import SYMMETRIC_IDS, YCB_CLASSES
from amt.evaluation import metrics

if TYPE_CHECKING:
    from amt.evaluation.evaluator import Predictions


def _pose_error_summary(errors: np.ndarray, diameters: np.ndarray) -> dict[str, float | None]:
    """errors (n,) metres with inf for misses -> mean (mm, over detected), AUC, <10% diameter."""
    finite = np.isfinite(errors)
    return {
        "mean_mm": float(errors[finite].mean() * 1000) if finite.any() else None,
        "auc": float(metrics.add_auc(errors, max_threshold=0.1)),
        "acc_10pct_diameter": float(metrics.accuracy_within_diameter(errors, diameters, fraction=0.1)),
    }


def object_estimates(pred: Predictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's object estimates: (N, Q) label (YCB id, 0 where the query's most probable class
    is "no object"), (N, Q) score (that class's softmax probability; NaN scores count as -inf)
    and (N, Q) bool `claimed` (label > 0). One estimate per query, as the BOP CSV writes them."""
    top = pred.obj_prob.argmax(-1)
    none = pred.obj_prob.shape[-1] - 1
    claimed = top != none
    score = np.take_along_axis(pred.obj_prob, top[..., None], -1)[..., 0].astype(np.float64)
    score = np.where(np.isfinite(score), score, -np.inf)
    return np.where(claimed, top + 1, 0), score, claimed


def select_estimates(pred: Predictions, pair_error: Callable[[int, int, int], float] | None = None) -> np.ndarray:
    """(N, M) query evaluated for each GT slot, -1 for padding and misses (the BOP protocol).

    Per image and object id, the estimates of that id (`object_estimates`) are sorted by score
    and the top n kept, n = the number of GT instances of that id in the image; ties keep the
    lower query index. Each kept estimate, in score order, is paired with the not-yet-paired GT
    instance of its id with the lowest `pair_error(n, slot, query)` (BOP's rule; only consulted
    when an id occurs more than once, never to choose the estimate). No ground truth decides
    which estimate is scored.
    """
    label, score, _ = object_estimates(pred)
    valid, classes = pred.gt["obj_valid"], pred.gt["obj_class"]
    chosen = np.full(valid.shape, -1, dtype=np.int64)
    for n in np.nonzero(valid.any(axis=1))[0]:
        slots = np.nonzero(valid[n])[0]
        for cid in np.unique(classes[n, slots]):
            inst = [int(m) for m in slots if classes[n, m] == cid]
            queries = np.nonzero(label[n] == cid)[0]
            queries = queries[np.argsort(-score[n, queries], kind="stable")][: len(inst)]
            for q in queries:
                if len(inst) > 1 and pair_error is not None:
                    m = min(inst, key=lambda slot, q=q: pair_error(n, slot, int(q)))
                else:
                    m = inst[0]
                chosen[n, m] = q
                inst.remove(m)
    return chosen


def object_instances_with(
    pred: Predictions, object_models: ObjectModels, num_points: int, symmetries: ObjectSymmetries | None = None
) -> dict[str, np.ndarray]:
    """One row per valid GT object: sample, slot, evaluated query (-1: missed, or an estimate with
    a non-finite pose), class, grasped,
    detected, errors in metres (`add`, `add_s`, `add(-s)`, `t_err`: symmetry-centre position
    error; inf when missed), `r_err_deg` (symmetry-aware; inf when missed), `diameter` (m)."""
    gt = pred.gt
    sym = symmetries or ObjectSymmetries.from_models(object_models)

    def points(cid: int) -> np.ndarray:
        return object_models.points(cid, n=num_points).astype(np.float64)

    def add_minus_s(n: int, m: int, q: int) -> float:
        cid = int(gt["obj_class"][n, m])
        fn = metrics.add_s if cid in SYMMETRIC_IDS else metrics.add
        return fn(pred.obj_R[n, q], pred.obj_t[n, q], gt["obj_R"][n, m], gt["obj_t"][n, m], points(cid))

    chosen = select_estimates(pred, add_minus_s)
    n, m = np.nonzero(gt["obj_valid"])
    q = chosen[n, m]
    qs = np.where(q >= 0, q, 0)
    cls = gt["obj_class"][n, m].astype(np.int64)
    R, t = pred.obj_R[n, qs].astype(np.float64), pred.obj_t[n, qs].astype(np.float64)
    # an estimate with a non-finite pose counts as a miss (infinite error), never as a crash
    detected = (q >= 0) & np.isfinite(R).all(axis=(-1, -2)) & np.isfinite(t).all(axis=-1)
    q = np.where(detected, q, -1)
    gt_R, gt_t = gt["obj_R"][n, m].astype(np.float64), gt["obj_t"][n, m].astype(np.float64)
    r_err, t_err = (
        e.numpy()
        for e in symmetric_pose_error(
            *(torch.from_numpy(a) for a in (R, t, gt_R, gt_t, cls)), sym.to(dtype=torch.float64)
        )
    )
    add, add_s = np.full(len(n), np.inf), np.full(len(n), np.inf)
    for k in np.nonzero(detected)[0]:
        pts = points(int(cls[k]))
        add[k] = metrics.add(R[k], t[k], gt_R[k], gt_t[k], pts)
        add_s[k] = metrics.add_s(R[k], t[k], gt_R[k], gt_t[k], pts)
    return {
        "sample": n, "slot": m, "query": q, "class": cls, "grasped": gt["grasped"][n] == m, "detected": detected,
        "add": add, "add_s": add_s, "add(-s)": np.where(np.isin(cls, list(SYMMETRIC_IDS)), add_s, add),
        "t_err": np.where(detected, t_err, np.inf),
        "r_err_deg": np.where(detected, np.degrees(r_err), np.inf),
        "diameter": np.array([object_models.diameter(int(c)) for c in cls]),
    }  # fmt: skip


def object_instances(pred: Predictions, object_models: ObjectModels, num_points: int = 1024) -> dict[str, np.ndarray]:
    """Per-GT-object rows behind the object metrics (see `object_instances_with`): for curves and
    galleries (`amt.evaluation.html_report`); symmetries computed from `object_models`."""
    return object_instances_with(pred, object_models, num_points)


def _detection(pred: Predictions, inst: dict[str, np.ndarray], class_id: int | None = None) -> dict[str, Any]:
    """Detection precision / recall of the claimed estimates (all, or those labelled `class_id`):
    true positives are the evaluated estimates (one per GT instance at most)."""
    label, _, claimed = object_estimates(pred)
    rows = inst["class"] == class_id if class_id is not None else np.ones(len(inst["class"]), dtype=bool)
    estimates = int((claimed & (label == class_id)).sum() if class_id is not None else claimed.sum())
    tp, n = int(inst["detected"][rows].sum()), int(rows.sum())
    return {
        "num_estimates": estimates,
        "true_positives": tp,
        "precision": tp / estimates if estimates else None,
        "recall": tp / n if n else None,
    }


def _object_group(inst: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    detected = mask & inst["detected"]
    diam = inst["diameter"][mask]
    return {
        "num_instances": int(mask.sum()),
        "num_missed": int((mask & ~inst["detected"]).sum()),
        "recall": float(detected.sum() / mask.sum()) if mask.any() else None,
        "add": _pose_error_summary(inst["add"][mask], diam),
        "add_s": _pose_error_summary(inst["add_s"][mask], diam),
        "add(-s)": _pose_error_summary(inst["add(-s)"][mask], diam),
        "translation_error_mm": float(inst["t_err"][detected].mean() * 1000) if detected.any() else None,
        "rotation_error_deg": float(inst["r_err_deg"][detected].mean()) if detected.any() else None,
    }


def grasp_class_accuracy(pred: Predictions, inst: dict[str, np.ndarray]) -> float | None:
    """Share of grasped GT objects whose class the model names as the one in the hand (None
    when nothing is grasped). The model's grasp estimate in an image is, among its object
    estimates (`object_estimates`), the one with the highest contact probability; an image with
    no estimate counts as wrong. The model chooses it, never the ground truth, and it has to
    both detect the object and single it out as the touched one: a model that claims no object,
    or names a bystander, scores 0 (docs/metrics.md "Objects")."""
    rows = inst["grasped"].astype(bool)
    if not rows.any():
        return None
    label, _, claimed = object_estimates(pred)
    contact = np.where(claimed & np.isfinite(pred.contact_prob), pred.contact_prob, -np.inf)
    best = contact.argmax(axis=1)  # (N,) query index; ties keep the lower index
    named = np.where(claimed.any(axis=1), label[np.arange(len(label)), best], 0)
    return float((named[inst["sample"][rows]] == inst["class"][rows]).mean())


def object_metrics(pred: Predictions, inst: dict[str, np.ndarray]) -> dict[str, Any]:
    everything = np.ones(len(inst["class"]), dtype=bool)
    per_object = {}
    for c in sorted(set(inst["class"].tolist())):
        per_object[YCB_CLASSES[c]] = {**_object_group(inst, inst["class"] == c), "detection": _detection(pred, inst, c)}
    return {
        "all": {**_object_group(inst, everything), "detection": _detection(pred, inst)},
        "grasped": {
            **_object_group(inst, inst["grasped"].astype(bool)),
            "class_accuracy": grasp_class_accuracy(pred, inst),
        },
        "per_object": per_object,
        "symmetric_ids": sorted(SYMMETRIC_IDS),
        "protocol": (
            "BOP: every query whose most probable class is an object is an estimate of that class, scored by "
            "its probability; per image and object id the top-scoring estimates (as many as instances of that "
            "id) are evaluated; ground truth never chooses the estimate"
        ),
        "miss_rule": "a GT object is missed when the model claims no estimate of its class in its image",
        "position": "translation_error_mm: distance between predicted and true symmetry centres (model origin "
        "for asymmetric classes); rotation_error_deg: symmetry-aware (amt.data.symmetry)",
    }


def centre_positions(R: np.ndarray, t: np.ndarray, cls: np.ndarray, sym: ObjectSymmetries) -> np.ndarray:
    """(n, 3) metres: camera-frame symmetry-centre positions t + R c (t for asymmetric classes)."""
    args = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (R, t))
    return symmetry_centre_position(
        *args, torch.from_numpy(np.asarray(cls, np.int64)), sym.to(dtype=torch.float64)
    ).numpy()
