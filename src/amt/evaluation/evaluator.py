"""Run a model over a cached split and compute every number of the evaluation report.

Two steps, usable separately:

* `collect_predictions(model, dataset, ...)` runs the model (no augmentation, inference mode)
  and gathers predictions and ground truth of the whole split as numpy arrays (`Predictions`).
* `compute_metrics(predictions, object_models, ...)` turns them into the report dict
  (docs/metrics.md): hand, objects, contacts, collapse ratio and,
  given the training split, the two honest baselines.

Objects are scored by the BOP protocol (`amt.evaluation.objects`): per image and object id the
model's top-scoring estimates; the ground truth never chooses which prediction is scored.

`evaluate(...)` does both. Data-parallel validation collects shards (`Subset`s) on each rank,
joins them with `concat_predictions` and scores them with `report_from_predictions`.
Units: metres in the arrays, millimetres in reported errors.

The cache keeps 3D labels in the original camera frame (a crop only changes K), and the model
lifts its 3D outputs with the crop K into that same frame. A left hand is cached as its mirror
image (a right hand, `is_left` True; docs/data.md, "Handedness"): its predictions and labels are
mirrored back (`unmirror_rows`) as they are collected, so every metric and submission file is in
the original, unmirrored camera frame with the dataset's own (unmirrored) object meshes, as the
DexYCB toolkit computes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from amt.data.cache import open_cache
from amt.data.loaders import batch_to_device, collate
from amt.data.object_models import ObjectModels
from amt.data.symmetry import ObjectSymmetries
from amt.data.transforms import mirror_crop_K, mirror_crop_pixels, mirror_points, mirror_rotations
from amt.evaluation import metrics
from amt.evaluation.objects import centre_positions, object_instances_with, object_metrics
from amt.geometry.hand_skeleton import JOINT_NAMES
from amt.geometry.rotations import quat_wxyz_to_matrix

log = logging.getLogger(__name__)

ALIGNMENTS = metrics.ALIGNMENTS
FORCES_NOTE = (
    "contact forces have no ground truth (DexYCB ships none); they are trained only through "
    "the physics loss terms and are not evaluated"
)
# Batch keys the evaluator gathers as ground truth (batch contract, docs/architecture.md).
_GT_KEYS = (
    "K", "joints_3d", "joints_2d", "hand_valid", "obj_R", "obj_t", "obj_class", "obj_valid",
    "grasped", "contact_points", "contact_valid",
)  # fmt: skip


@dataclass
class Predictions:
    """Predictions and ground truth of a whole split (N samples, Q queries, M GT slots).

    Prediction arrays: `joints_3d` (N,21,3) m; `joint_conf` (N,21); `obj_t` (N,Q,3) m;
    `obj_R` (N,Q,3,3); `obj_prob` (N,Q,C+1) softmax, last = no object; `contact_points`
    (N,Q,3) m; `contact_prob` (N,Q). Ground truth under `gt` with the batch-contract names
    (`joints_3d`, `hand_valid`, `obj_R`, `obj_t`, `obj_class`, `obj_valid`, `grasped`,
    `contact_points`, `contact_valid`, `K`, `joints_2d`, and `is_left`: the sample is a left hand,
    already mirrored back: every array is in the unmirrored camera frame). `index`: the split's sample index
    (toolkit image_id); `position`: position in the evaluated dataset; `meta`: per-sample
    metadata dicts.
    """

    index: np.ndarray
    position: np.ndarray
    meta: list[dict[str, Any]]
    joints_3d: np.ndarray
    joint_conf: np.ndarray
    obj_t: np.ndarray
    obj_R: np.ndarray
    obj_prob: np.ndarray
    contact_points: np.ndarray
    contact_prob: np.ndarray
    gt: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class TrainingStatistics:
    """What the baselines predict: the training split's mean root-relative pose (21,3) m, mean
    object position (3,) m over valid object slots, and mean position (3,) m of the grasped
    objects alone (None when the split has no grasp). Positions are symmetry centres (the
    translation for asymmetric classes; `training_statistics`)."""

    mean_root_relative_joints: np.ndarray
    mean_object_translation: np.ndarray
    num_hands: int
    num_objects: int
    mean_grasped_translation: np.ndarray | None = None
    num_grasped: int = 0


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


# collected arrays (predictions and "gt_" labels) that live in the camera frame / crop pixels
_POINT_KEYS = ("joints_3d", "obj_t", "contact_points", "gt_joints_3d", "gt_obj_t", "gt_contact_points")


def unmirror_rows(arrays: dict[str, np.ndarray], left: np.ndarray, size: int) -> None:
    """Mirror rows `left` (B,) bool of collected batch arrays back to the left hand's own frame,
    in place: points x -> -x, rotations R -> M R M, crop K and 2D labels flipped in a crop of
    side `size` px (`amt.data.transforms`; every map is its own inverse)."""
    for key, value in arrays.items():
        if key in _POINT_KEYS:
            value[left] = mirror_points(value[left])
        elif key in ("obj_R", "gt_obj_R"):
            value[left] = mirror_rotations(value[left])
        elif key == "gt_K":
            value[left] = mirror_crop_K(value[left], size)
        elif key == "gt_joints_2d":
            value[left] = mirror_crop_pixels(value[left], size)


@torch.inference_mode()
def collect_predictions(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> Predictions:
    """Run `model` over every sample of `dataset` (batch-contract samples) in order.

    The model gets the batch's tensors on `device` (it reads `image` and `K`); nothing is
    augmented. Returns a `Predictions` in dataset order.
    """
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    parts: dict[str, list[np.ndarray]] = {}
    meta: list[dict[str, Any]] = []
    index: list[np.ndarray] = []
    start = 0
    for batch in loader:
        outputs = model(batch_to_device(batch, device))
        bsz = batch["image"].shape[0]
        probs = outputs["obj_logits"].float().softmax(-1)
        values = {
            "joints_3d": outputs["joints_3d"],
            "joint_conf": outputs["joint_conf"],
            "obj_t": outputs["obj_t"],
            "obj_R": quat_wxyz_to_matrix(outputs["obj_quat"].float()),
            "obj_prob": probs,
            "contact_points": outputs["contact_points"],
            "contact_prob": outputs["contact_prob"],
        }
        for key in _GT_KEYS:
            values["gt_" + key] = batch[key]
        arrays = {key: np.array(_numpy(value)) for key, value in values.items()}  # copies: unmirrored in place
        left = np.zeros(bsz, dtype=bool)
        if "is_left" in batch:  # a left hand ran mirrored (a right hand): mirror it back
            left = np.asarray(_numpy(batch["is_left"]), dtype=bool).reshape(bsz)
            unmirror_rows(arrays, left, int(batch["image"].shape[-1]))
        arrays["gt_is_left"] = left
        for key, value in arrays.items():
            parts.setdefault(key, []).append(value)
        sample_index = batch.get("image_id", batch.get("index"))
        if sample_index is None:
            raise KeyError("evaluator: dataset samples need an 'image_id' or 'index' key (the split's sample index)")
        index.append(np.asarray(sample_index, dtype=np.int64).reshape(-1))
        meta.extend(batch.get("meta", [{}] * bsz))
        start += bsz
    if start == 0:
        raise ValueError("evaluator: the dataset to evaluate is empty")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    gt = {k[3:]: arrays.pop(k) for k in list(arrays) if k.startswith("gt_")}
    gt["hand_valid"] = gt["hand_valid"].astype(bool)
    gt["obj_valid"] = gt["obj_valid"].astype(bool)
    gt["contact_valid"] = gt["contact_valid"].astype(bool)
    return Predictions(index=np.concatenate(index), position=np.arange(start), meta=meta, gt=gt, **arrays)


def concat_predictions(parts: Sequence[Predictions]) -> Predictions:
    """The `Predictions` of consecutive pieces of a dataset (in order), as one: arrays and
    metadata concatenated, `position` renumbered 0..N-1."""
    if not parts:
        raise ValueError("evaluator: no predictions to concatenate")
    arrays = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(Predictions)
        if f.name not in ("meta", "gt", "position")
    }
    gt = {k: np.concatenate([p.gt[k] for p in parts]) for k in parts[0].gt}
    meta = [m for p in parts for m in p.meta]
    return Predictions(position=np.arange(len(arrays["index"])), meta=meta, gt=gt, **arrays)


def training_statistics(train: Dataset | str | Path, symmetries: ObjectSymmetries | None = None) -> TrainingStatistics:
    """Mean root-relative hand pose and mean object position of a training split.

    train: a cache folder, a `CachedDataset` (its label arrays are read without decoding
    images), or any dataset of batch-contract samples (iterated). Object positions are the
    symmetry centres t + R c of `symmetries` (None: the fallback, c = 0: translations), the
    quantity the evaluator's translation error compares.
    """
    sym = symmetries or ObjectSymmetries.from_tables()
    keys = ("joints_3d", "hand_valid", "obj_t", "obj_R", "obj_class", "obj_valid", "grasped")
    if isinstance(train, (str, Path)):
        labels = {k: open_cache(train).labels[k] for k in keys}
    elif hasattr(train, "folder") and hasattr(train, "indices"):
        cache = open_cache(train.folder)
        labels = {k: np.asarray(cache.labels[k])[train.indices] for k in keys}
    else:
        rows = [{k: np.asarray(train[i][k]) for k in keys} for i in range(len(train))]
        labels = {k: np.stack([r[k] for r in rows]) for k in keys}
    joints = np.asarray(labels["joints_3d"], dtype=np.float64)
    hand_valid = np.asarray(labels["hand_valid"], dtype=bool)
    obj_valid = np.asarray(labels["obj_valid"], dtype=bool)
    obj_t = np.zeros(obj_valid.shape + (3,))
    obj_t[obj_valid] = centre_positions(
        np.asarray(labels["obj_R"])[obj_valid], np.asarray(labels["obj_t"])[obj_valid],
        np.asarray(labels["obj_class"])[obj_valid], sym,
    )  # fmt: skip
    if not hand_valid.any() or not obj_valid.any():
        raise ValueError("evaluator: the training split has no valid hand or no valid object for the baselines")
    rr = joints[hand_valid] - joints[hand_valid][:, :1]
    grasped = np.asarray(labels["grasped"], dtype=np.int64).reshape(-1)
    rows = np.nonzero(grasped >= 0)[0]
    rows = rows[obj_valid[rows, grasped[rows]]]
    return TrainingStatistics(
        mean_root_relative_joints=rr.mean(axis=0),
        mean_object_translation=obj_t[obj_valid].mean(axis=0),
        num_hands=int(hand_valid.sum()),
        num_objects=int(obj_valid.sum()),
        mean_grasped_translation=obj_t[rows, grasped[rows]].mean(axis=0) if len(rows) else None,
        num_grasped=len(rows),
    )


def joints_mm(joints_m: np.ndarray) -> np.ndarray:
    """Metres -> float64 millimetres the way the toolkit converts its ground truth (x 1000 in
    float32), applied to predictions too so that identical joints score exactly 0."""
    return (np.asarray(joints_m, np.float32) * np.float32(1000)).astype(np.float64)


def _hand_metrics(pred: Predictions, pck_threshold_mm: float) -> tuple[dict, dict]:
    valid = pred.gt["hand_valid"]
    if not valid.any():
        raise ValueError("evaluator: no sample of the split has a valid hand annotation")
    pred_mm = joints_mm(pred.joints_3d[valid])
    gt_mm = joints_mm(pred.gt["joints_3d"][valid])
    table = metrics.hpe_metrics(pred_mm, gt_mm, units="mm")
    errors = {a: metrics.joint_errors(pred_mm, gt_mm, a, units="mm") for a in ALIGNMENTS}
    details = {
        "num_samples": int(valid.sum()),
        f"pck@{pck_threshold_mm:g}mm": {a: float(metrics.pck(errors[a], pck_threshold_mm)) for a in ALIGNMENTS},
        "per_joint_mpjpe_mm": {
            a: {name: float(e) for name, e in zip(JOINT_NAMES, errors[a].mean(axis=0))} for a in ALIGNMENTS
        },
        "pck_curves": {
            "thresholds_mm": metrics.PCK_THRESHOLDS_MM.tolist(),
            **{a: metrics.pck_curve(errors[a]).tolist() for a in ALIGNMENTS},
        },
    }
    return table, details


def _contact_metrics(pred: Predictions, inst: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """Contacts of the evaluated estimates (detected GT objects) against their labels."""
    detected = inst["detected"]
    n, m, q = inst["sample"][detected], inst["slot"][detected], inst["query"][detected]
    label = pred.gt["contact_valid"][n, m]
    guess = pred.contact_prob[n, q] >= threshold
    tp, fp = int((guess & label).sum()), int((guess & ~label).sum())
    fn = int((~guess & label).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    positive_rate = float(label.mean()) if label.size else 0.0
    point_err = np.linalg.norm(pred.contact_points[n, q] - pred.gt["contact_points"][n, m], axis=-1)[label]
    return {
        "num_objects": int(label.size),
        "threshold": threshold,
        "accuracy": float((guess == label).mean()) if label.size else None,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "positive_rate": positive_rate,
        "majority_class_rate": max(positive_rate, 1.0 - positive_rate),
        "contact_point_error_mm": float(point_err.mean() * 1000) if point_err.size else None,
        "forces": FORCES_NOTE,
    }


def _baselines(
    pred: Predictions, inst: dict[str, np.ndarray], stats: TrainingStatistics, sym: ObjectSymmetries
) -> dict[str, Any]:
    valid = pred.gt["hand_valid"]
    gt_mm = pred.gt["joints_3d"][valid].astype(np.float64) * 1000
    mean_pose_mm = np.broadcast_to(stats.mean_root_relative_joints * 1000, gt_mm.shape)
    hand = metrics.hpe_metrics(mean_pose_mm, gt_mm, units="mm")["root-relative"]["mpjpe"]
    n, m, det = inst["sample"], inst["slot"], inst["detected"]
    gt_pos = centre_positions(pred.gt["obj_R"][n, m], pred.gt["obj_t"][n, m], inst["class"], sym)
    err = np.linalg.norm(gt_pos - stats.mean_object_translation, axis=-1)
    grasped = inst["grasped"].astype(bool)
    g_err = None
    if stats.mean_grasped_translation is not None:
        g_err = np.linalg.norm(gt_pos - stats.mean_grasped_translation, axis=-1)

    def mean_mm(values: np.ndarray | None, rows: np.ndarray) -> float | None:
        return float(values[rows].mean() * 1000) if values is not None and rows.any() else None

    return {
        "hand_root_relative_mpjpe": float(hand),
        "object_translation_error": mean_mm(err, np.ones_like(det)),
        "object_translation_error_grasped": mean_mm(g_err, grasped),
        "object_translation_error_detected": mean_mm(err, det),
        "object_translation_error_grasped_detected": mean_mm(g_err, grasped & det),
        "description": (
            "hand: the training split's mean root-relative pose predicted for every sample "
            f"({stats.num_hands} training hands); objects: the training split's mean object position "
            f"({stats.num_objects} training objects) predicted for every GT object; grasped: the mean "
            f"position of the training split's grasped objects ({stats.num_grasped}) for every grasped GT "
            "object; '_detected': the same over the GT objects the model detected, the instances its own "
            "translation error is averaged over (compare the model with these); positions are symmetry "
            "centres (model origins for asymmetric classes), as in the model's error; mm"
        ),
    }


def compute_metrics(
    pred: Predictions,
    object_models: ObjectModels,
    train_stats: TrainingStatistics | None = None,
    contact_threshold: float = 0.5,
    pck_threshold_mm: float = 20.0,
    num_model_points: int = 1024,
    symmetries: ObjectSymmetries | None = None,
) -> dict[str, Any]:
    """The report's numbers from collected predictions (see the module docstring).

    symmetries: the objects' symmetries (None: computed from `object_models`); `train_stats`
    must have been computed with the same ones (`training_statistics(..., symmetries)`).
    """
    sym = symmetries or ObjectSymmetries.from_models(object_models)
    hand, hand_details = _hand_metrics(pred, pck_threshold_mm)
    inst = object_instances_with(pred, object_models, num_model_points, sym)
    valid = pred.gt["hand_valid"]
    result: dict[str, Any] = {
        "num_samples": len(pred),
        "hand": hand,
        "hand_details": hand_details,
        "objects": object_metrics(pred, inst),
        "contacts": _contact_metrics(pred, inst, contact_threshold),
        "collapse_ratio": metrics.collapse_ratio(pred.joints_3d[valid], pred.gt["joints_3d"][valid]),
        "baselines": _baselines(pred, inst, train_stats, sym) if train_stats is not None else None,
    }
    result["model_vs_baselines"] = {
        "hand_root_relative_mpjpe": hand["root-relative"]["mpjpe"],
        "object_translation_error": result["objects"]["all"]["translation_error_mm"],
        "object_translation_error_grasped": result["objects"]["grasped"]["translation_error_mm"],
    }
    return result


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    models_dir: str | Path,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    train_dataset: Dataset | None = None,
    num_workers: int = 0,
    contact_threshold: float = 0.5,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset` (a cached split); returns the report dict.

    models_dir: the dataset's `models/` folder (object meshes for ADD/ADD-S and diameters).
    train_dataset: the training split's cache, for the baselines (None: no baselines).
    The returned dict also holds `predictions` (a `Predictions`, not JSON) for the
    submission files and overlays.
    """
    pred = collect_predictions(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers)
    return report_from_predictions(pred, models_dir, train_dataset, contact_threshold)


def report_from_predictions(
    pred: Predictions,
    models_dir: str | Path,
    train_dataset: Dataset | None = None,
    contact_threshold: float = 0.5,
) -> dict[str, Any]:
    """`evaluate`'s report from already collected predictions (e.g. gathered from the shards a
    data-parallel validation collected, `concat_predictions`)."""
    object_models = ObjectModels(models_dir)
    sym = ObjectSymmetries.from_models(object_models)
    stats = training_statistics(train_dataset, sym) if train_dataset is not None else None
    result = compute_metrics(pred, object_models, stats, contact_threshold=contact_threshold, symmetries=sym)
    result["predictions"] = pred
    log.info(
        "evaluated %d samples: root-relative MPJPE %.2f mm, collapse ratio %.3f",
        len(pred),
        result["hand"]["root-relative"]["mpjpe"],
        result["collapse_ratio"],
    )
    return result
