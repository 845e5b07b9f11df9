"""HO-3D metrics and the official submission (docs/datasets.md "HO-3D").

Metrics follow the conventions of HO-3D's scorer (`eval.py` of the HO-3D challenge, itself
FreiHAND's), computed per sample and averaged over the set:

- joint error: mean Euclidean distance over the 21 joints (HO-3D order), unaligned, after
  scale-translation alignment (the prediction scaled so that its joint-0-to-joint-4 bone has the
  ground truth's length, then moved so that joint 0 coincides) and after Procrustes alignment
  (similarity transform with scale, reflections allowed: `amt.geometry.procrustes`);
- mesh error: the same over the 778 MANO vertices, unaligned and Procrustes-aligned;
- F-scores at 5 and 15 mm between the vertex sets (a point counts when its nearest neighbour
  in the other set is strictly closer than the threshold), unaligned and aligned;
- AUC of the per-keypoint PCK curve over 100 thresholds from 0 to 50 mm, normalised to [0, 1].

Inputs are metres; errors are reported in mm. Every metric is invariant under the OpenGL/OpenCV
flip (a rotation by 180 degrees about x), so prediction and ground truth may be in either frame
as long as they share it.

The submission (`write_ho3d_submission`) is `pred.json` = [joints list, vertices list], one
(21, 3) and one (778, 3) list per line of `evaluation.txt`, in that order, metres, HO-3D joint
order, OpenGL frame (z < 0), zipped into `pred.zip` as the challenge expects.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from amt.data.folder import from_dexycb_order
from amt.data.ho3d import HO3D, opencv_to_opengl
from amt.data.loaders import CachedDataset
from amt.data.synth.mano_hand import ManoFitter
from amt.evaluation.evaluator import collect_predictions
from amt.geometry.procrustes import procrustes_align

AUC_MAX_M = 0.05  # the scorer's PCK thresholds: linspace(0, 0.05, 100) metres
AUC_STEPS = 100
F_THRESHOLDS_M = (0.005, 0.015)
NUM_VERTICES = 778
SUBMISSION_FILE = "pred.json"
SUBMISSION_ZIP = "pred.zip"


class HO3DSubmissionError(ValueError):
    """A submission cannot be written or read as the benchmark expects; the message says why."""


def align_scale_translation(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 21, 3) HO-3D-order predictions scaled to the ground truth's joint-0-to-4 length and
    moved so that joint 0 coincides (the scorer's `align_sc_tr`; a zero-length bone is left
    unscaled before the ground-truth scale is applied, as there)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    s = np.linalg.norm(pred[:, 4] - pred[:, 0], axis=-1)[:, None, None]
    s_gt = np.linalg.norm(gt[:, 4] - gt[:, 0], axis=-1)[:, None, None]
    scaled = np.where(s > 0, pred / np.where(s > 0, s, 1.0), pred) * s_gt
    return scaled - scaled[:, :1] + gt[:, :1]


def pck_auc(errors: np.ndarray) -> float:
    """Area under the per-keypoint PCK curve (errors (N, K) metres, PCK = share <= threshold) over
    linspace(0, 50 mm, 100), averaged over keypoints and normalised to [0, 1]."""
    thresholds = np.linspace(0.0, AUC_MAX_M, AUC_STEPS)
    pck = (np.asarray(errors)[None] <= thresholds[:, None, None]).mean(axis=1)  # (T, K)
    return float((np.trapezoid(pck, thresholds, axis=0) / np.trapezoid(np.ones_like(thresholds), thresholds)).mean())


def _errors(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)  # (N, K) metres
    return {"mean_mm": float(err.mean(0).mean() * 1000.0), "auc": pck_auc(err)}


def f_score(gt: np.ndarray, pred: np.ndarray, threshold: float) -> float:
    """F-score of two point sets (P, 3) / (Q, 3) metres at `threshold` metres (strict <)."""
    d_gt = cKDTree(pred).query(gt)[0]  # each ground-truth point to the prediction
    d_pred = cKDTree(gt).query(pred)[0]
    precision, recall = float((d_gt < threshold).mean()), float((d_pred < threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ho3d_metrics(
    pred_joints: Any, gt_joints: Any, pred_vertices: Any | None = None, gt_vertices: Any | None = None
) -> dict[str, Any]:
    """HO-3D's scores (module docstring). joints (N, 21, 3) HO-3D order, vertices (N, 778, 3),
    metres, one frame for both. Returns {"joints": {"mean_mm", "auc", "procrustes": {...},
    "scale_translation": {...}}, and with vertices "mesh": {"mean_mm", "auc", "procrustes"} and
    "f_score": {"5mm", "15mm", "aligned_5mm", "aligned_15mm"}}."""
    pj, gj = np.asarray(pred_joints, np.float64), np.asarray(gt_joints, np.float64)
    if pj.shape != gj.shape or pj.ndim != 3 or pj.shape[1:] != (21, 3):
        raise ValueError(f"joints must both be (N, 21, 3), got {pj.shape} and {gj.shape}")
    out: dict[str, Any] = {"joints": _errors(pj, gj)}
    out["joints"]["procrustes"] = _errors(procrustes_align(pj, gj), gj)
    out["joints"]["scale_translation"] = _errors(align_scale_translation(pj, gj), gj)
    if pred_vertices is None or gt_vertices is None:
        return out
    pv, gv = np.asarray(pred_vertices, np.float64), np.asarray(gt_vertices, np.float64)
    if pv.shape != gv.shape or pv.shape[1:] != (NUM_VERTICES, 3):
        raise ValueError(f"vertices must both be (N, {NUM_VERTICES}, 3), got {pv.shape} and {gv.shape}")
    aligned = procrustes_align(pv, gv)
    out["mesh"] = _errors(pv, gv)
    out["mesh"]["procrustes"] = _errors(aligned, gv)
    scores: dict[str, float] = {}
    for t in F_THRESHOLDS_M:
        mm = f"{round(t * 1000)}mm"
        scores[mm] = float(np.mean([f_score(g, p, t) for g, p in zip(gv, pv, strict=True)]))
        scores[f"aligned_{mm}"] = float(np.mean([f_score(g, p, t) for g, p in zip(gv, aligned, strict=True)]))
    out["f_score"] = scores
    return out


def read_evaluation_list(root: str | Path) -> list[str]:
    """The "SEQUENCE/FRAME" lines of ROOT/evaluation.txt, in order."""
    path = Path(root) / "evaluation.txt"
    if not path.is_file():
        raise HO3DSubmissionError(f"{path}: file not found (is {root} an HO-3D root?)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def mano_vertices_for(joints: np.ndarray, mano_file: str | Path, betas: np.ndarray | None = None) -> np.ndarray:
    """(N, 778, 3) vertices of right MANO hands fitted to (N, 21, 3) DexYCB-order joints (metres,
    any frame) with `betas` (N, 10) (default zeros): `amt.data.synth.mano_hand.ManoFitter`."""
    path = Path(mano_file)
    if not path.is_file():
        raise HO3DSubmissionError(f"{path}: MANO file not found (MANO_RIGHT.pkl from mano.is.tue.mpg.de)")
    fitter = ManoFitter(path, "right")
    betas = np.zeros((len(joints), 10)) if betas is None else np.asarray(betas, np.float64)
    return np.stack([fitter.fit(np.asarray(j, np.float64), b).vertices for j, b in zip(joints, betas, strict=True)])


def write_ho3d_submission(
    out_dir: str | Path,
    names: Sequence[str],
    joints_3d: Any,
    evaluation_list: Sequence[str],
    vertices: Any | None = None,
    mano_file: str | Path | None = None,
    betas: Any | None = None,
    roots: Any | None = None,
) -> Path:
    """Write `pred.json` and `pred.zip` for the HO-3D challenge into `out_dir`; returns the zip.

    names: "SEQUENCE/FRAME" of each prediction; joints_3d: (N, 21, 3) metres, OpenCV camera
    frame, DexYCB order (the model's output); evaluation_list: `read_evaluation_list(root)`,
    whose order the file follows (every line needs a prediction). vertices: (N, 778, 3) metres,
    OpenCV; otherwise `mano_file` (MANO_RIGHT.pkl) fits a MANO hand (with `betas` (N, 10)) to
    each skeleton. roots: (N, 3) OpenCV root joints the benchmark provides (evaluation meta
    `handJoints3D`); when given, each hand is moved so that its wrist is there.
    """
    joints = np.asarray(joints_3d, np.float64)
    if joints.shape != (len(names), 21, 3):
        raise HO3DSubmissionError(f"joints_3d must be ({len(names)}, 21, 3), got {joints.shape}")
    if vertices is None and mano_file is None:
        raise HO3DSubmissionError(
            f"the HO-3D benchmark scores {NUM_VERTICES} MANO vertices per frame: pass vertices or a MANO file "
            "(MANO_RIGHT.pkl) to fit them to the predicted joints"
        )
    verts = mano_vertices_for(joints, mano_file, betas) if vertices is None else np.asarray(vertices, np.float64)
    if verts.shape != (len(names), NUM_VERTICES, 3):
        raise HO3DSubmissionError(f"vertices must be ({len(names)}, {NUM_VERTICES}, 3), got {verts.shape}")
    if roots is not None:
        shift = np.asarray(roots, np.float64).reshape(len(names), 1, 3) - joints[:, :1]
        joints, verts = joints + shift, verts + shift
    position = {name: k for k, name in enumerate(names)}
    missing = [name for name in evaluation_list if name not in position]
    if missing:
        raise HO3DSubmissionError(f"{len(missing)} evaluation frame(s) have no prediction, first {missing[0]!r}")
    order = [position[name] for name in evaluation_list]
    ho3d_joints = opencv_to_opengl(from_dexycb_order(joints[order], "ho3d"))
    gl_verts = opencv_to_opengl(verts[order])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = out / SUBMISSION_FILE
    pred.write_text(json.dumps([ho3d_joints.tolist(), gl_verts.tolist()]))
    archive = out / SUBMISSION_ZIP
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(pred, arcname=SUBMISSION_FILE)  # at the top level, as `zip -j`
    return archive


def read_ho3d_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(joints (N, 21, 3), vertices (N, V, 3)) of a `pred.json` or `pred.zip`, as stored."""
    path = Path(path)
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                data = json.loads(zf.read(SUBMISSION_FILE))
        else:
            data = json.loads(path.read_text())
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise HO3DSubmissionError(f"{path}: not a readable HO-3D submission ({exc})") from exc
    if not isinstance(data, list) or len(data) != 2 or len(data[0]) != len(data[1]):
        raise HO3DSubmissionError(f"{path}: expected [joints list, vertices list] of equal length")
    return np.asarray(data[0], np.float64), np.asarray(data[1], np.float64)


def predict_ho3d_submission(
    model: Any,
    root: str | Path,
    cache: str | Path,
    out_dir: str | Path,
    mano_file: str | Path | None = None,
    use_root: bool = True,
    split: str = "evaluation",
    batch_size: int = 32,
    device: str = "cpu",
) -> Path:
    """Run `model` on the cache of an HO-3D split and write its `pred.zip` (returns it).

    cache: the split's cache folder (`amt.data.cache.ensure_cache(..., format="ho3d")`);
    use_root: move each predicted hand onto the root joint the evaluation meta provides (the
    benchmark gives it with the images); mano_file: MANO_RIGHT.pkl for the vertices.
    """
    pred = collect_predictions(model, CachedDataset(cache, mode="memmap"), batch_size, device)
    reader = HO3D(root, split, load_image=False)
    names = [reader.names[int(i)] for i in pred.index]
    roots = None
    if use_root:
        given = [reader[int(i)]["root_joint"] for i in pred.index]
        roots = np.stack([p[0] if r is None else r for r, p in zip(given, pred.joints_3d, strict=True)])
    order = read_evaluation_list(root) if split == "evaluation" else reader.names
    return write_ho3d_submission(out_dir, names, pred.joints_3d, order, mano_file=mano_file, roots=roots)
