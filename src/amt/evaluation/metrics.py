"""Official DexYCB / YCB-Video metrics (definitions and units: docs/metrics.md).

Inputs may be numpy arrays or torch tensors; everything is computed in float64 numpy. Hand
errors are reported in millimetres, object errors in the units of the model points given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.integrate import trapezoid
from scipy.spatial import cKDTree
from tabulate import tabulate

from amt.geometry.procrustes import procrustes_align

PCK_THRESHOLDS_MM = np.linspace(0.0, 50.0, 100)
ALIGNMENTS = ("absolute", "root-relative", "procrustes")
_UNIT_TO_MM = {"mm": 1.0, "m": 1000.0}


def _np(x: Any) -> np.ndarray:
    """numpy float64 copy of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _joints_mm(x: Any, units: str, name: str) -> np.ndarray:
    if units not in _UNIT_TO_MM:
        raise ValueError(f"units must be 'mm' or 'm', got {units!r}")
    arr = _np(x) * _UNIT_TO_MM[units]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, J, 3), got {arr.shape}")
    return arr


def joint_errors(pred: Any, gt: Any, alignment: str = "absolute", units: str = "mm") -> np.ndarray:
    """Per-joint Euclidean errors (N, J) in mm after one of the three official alignments.

    pred, gt: (N, J, 3) in `units`. "root-relative" subtracts joint 0 of each skeleton
    separately; "procrustes" maps pred onto gt by a similarity transform (reflections allowed).
    """
    p, g = _joints_mm(pred, units, "pred"), _joints_mm(gt, units, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    if alignment == "root-relative":
        p, g = p - p[:, :1], g - g[:, :1]
    elif alignment == "procrustes":
        p = procrustes_align(p, g)
    elif alignment != "absolute":
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return np.linalg.norm(p - g, axis=-1)


def pck(errors_mm: Any, threshold_mm: float) -> float:
    """Fraction of errors <= threshold (any shape)."""
    e = _np(errors_mm)
    return float(np.mean(e <= threshold_mm)) if e.size else float("nan")


def pck_curve(errors_mm: Any, thresholds_mm: Any = PCK_THRESHOLDS_MM) -> np.ndarray:
    """(T,) PCK at each threshold, pooling all errors."""
    e = _np(errors_mm).reshape(-1)
    t = _np(thresholds_mm)
    return (e[None, :] <= t[:, None]).mean(axis=1)


def _auc(curve: np.ndarray, thresholds: np.ndarray) -> float:
    return float(trapezoid(curve, thresholds) / (thresholds[-1] - thresholds[0]))


def per_joint_mpjpe(pred: Any, gt: Any, alignment: str = "absolute", units: str = "mm") -> np.ndarray:
    """(J,) mean error per joint over samples, mm."""
    return joint_errors(pred, gt, alignment, units).mean(axis=0)


def hpe_metrics(pred: Any, gt: Any, units: str = "mm") -> dict[str, dict[str, float]]:
    """The DexYCB hand pose evaluation (hpe_eval.py): for each alignment, MPJPE (mm; mean over
    joints of the per-joint mean) and AUC (fraction; per joint, trapezoid of PCK over
    `PCK_THRESHOLDS_MM` divided by 50, then the mean over joints).

    pred, gt: (N, 21, 3) in `units` ("mm" or "m"); only valid hands should be passed.
    """
    results = {}
    for alignment in ALIGNMENTS:
        err = joint_errors(pred, gt, alignment, units)
        aucs = [_auc(pck_curve(err[:, j]), PCK_THRESHOLDS_MM) for j in range(err.shape[1])]
        results[alignment] = {"mpjpe": float(err.mean(axis=0).mean()), "auc": float(np.mean(aucs))}
    return results


def hpe_table(results: dict[str, dict[str, float]]) -> str:
    """The toolkit's markdown table: `alignment | MPJPE (mm) | AUC`, 4 decimals."""
    rows = [[a, results[a]["mpjpe"], results[a]["auc"]] for a in ALIGNMENTS]
    return tabulate(rows, headers=["alignment", "MPJPE (mm)", "AUC"], tablefmt="pipe", floatfmt=".4f", numalign="right")


def _posed(R: Any, t: Any, points: np.ndarray) -> np.ndarray:
    return points @ _np(R).reshape(3, 3).T + _np(t).reshape(1, 3)


def add(pred_R: Any, pred_t: Any, gt_R: Any, gt_t: Any, points: Any) -> float:
    """ADD: mean distance between corresponding model points under the two poses.

    pred_R, gt_R: (3, 3); pred_t, gt_t: (3,); points: (P, 3). Units of points/t.
    """
    pts = _np(points)
    return float(np.linalg.norm(_posed(pred_R, pred_t, pts) - _posed(gt_R, gt_t, pts), axis=1).mean())


def add_s(pred_R: Any, pred_t: Any, gt_R: Any, gt_t: Any, points: Any) -> float:
    """ADD-S (ADI): mean over GT-posed points of the distance to the nearest predicted-posed point."""
    pts = _np(points)
    dist, _ = cKDTree(_posed(pred_R, pred_t, pts)).query(_posed(gt_R, gt_t, pts), k=1)
    return float(dist.mean())


def add_auc(errors: Any, max_threshold: float = 0.1) -> float:
    """PoseCNN / YCB-Video area under the accuracy-threshold curve up to `max_threshold`, as a
    fraction (papers print x100).

    errors: (n,) metres; inf (or any non-finite value) for missed instances. Errors above
    `max_threshold` count as misses. VOC-style accumulation (docs/metrics.md "Objects").
    """
    e = np.sort(_np(errors).reshape(-1))
    n = e.size
    if n == 0:
        return float("nan")
    e[~np.isfinite(e) | (e > max_threshold)] = np.inf
    accuracy = np.arange(1, n + 1) / n
    finite = np.isfinite(e)
    rec, prec = e[finite], accuracy[finite]
    if rec.size == 0:
        return 0.0
    mrec = np.concatenate([[0.0], rec, [max_threshold]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [prec[-1]]]))
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]) / max_threshold)


def accuracy_within_diameter(errors: Any, diameters: Any, fraction: float = 0.1) -> float:
    """Share of instances with error strictly below `fraction` x diameter (same units)."""
    e = _np(errors).reshape(-1)
    d = np.broadcast_to(_np(diameters), e.shape)
    return float(np.mean(e < fraction * d)) if e.size else float("nan")


def collapse_ratio(pred_joints: Any, gt_joints: Any) -> float:
    """Std of predicted root-relative joints across samples / the same for the ground truth.

    pred_joints, gt_joints: (N, 21, 3), any unit (the ratio has none), numpy or torch. Std per
    coordinate over N, averaged over coordinates, in float64. Near 0 means the model predicts
    (almost) the same hand for every image; NaN when the ground truth has no spread.
    """
    pred_joints, gt_joints = _np(pred_joints), _np(gt_joints)
    pred_rr = pred_joints - pred_joints[:, :1]
    gt_rr = gt_joints - gt_joints[:, :1]
    gt_std = float(gt_rr.std(axis=0).mean())
    return float(pred_rr.std(axis=0).mean()) / gt_std if gt_std > 0 else float("nan")
