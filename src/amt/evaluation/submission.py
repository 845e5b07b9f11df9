"""Files the official toolkits score: the DexYCB HPE text file and BOP-2019 CSVs.

HPE (docs/metrics.md "Files for the official toolkits"): one line per sample, `index,x1,y1,z1,...,x21,y21,z21`,
millimetres, camera frame. BOP: `scene_id,im_id,obj_id,score,R,t,time`.

Two BOP flavours exist and must not be mixed up:
- `bop_frame=True` (default): what `bop_toolkit`'s `eval_bop19.py` reads, i.e. what the DexYCB
  evaluator produces internally: t in millimetres, object frame moved to the BOP YCB-V models,
  `t_bop = 1000 t - R o` with o = `amt.data.ycb.BOP_OFFSETS_MM`.
- `bop_frame=False`: the input of `dex_ycb_toolkit.bop_eval` (its example results): t in
  metres in the DexYCB model frame; that evaluator applies the conversion above itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amt.data.dexycb import DexYCB, read_labels
from amt.data.ycb import BOP_OFFSETS_MM
from amt.evaluation.ho3d import write_ho3d_submission
from amt.evaluation.metrics import hpe_metrics

logger = logging.getLogger(__name__)

BOP_HEADER = "scene_id,im_id,obj_id,score,R,t,time"


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def write_hpe_submission(path: str | Path, indices: Any, joints_3d: Any, units: str = "m", decimals: int = 6) -> Path:
    """Write the DexYCB HPE submission file.

    indices: (N,) split sample indices (`image_id`); joints_3d: (N, 21, 3) camera frame in
    `units` ("m" or "mm"); values are written in mm with `decimals` decimals.
    """
    if units not in ("m", "mm"):
        raise ValueError(f"units must be 'm' or 'mm', got {units!r}")
    idx = np.asarray(_np(indices), dtype=np.int64).reshape(-1)
    joints = _np(joints_3d) * (1000.0 if units == "m" else 1.0)
    if joints.shape != (len(idx), 21, 3):
        raise ValueError(f"joints_3d must have shape ({len(idx)}, 21, 3), got {joints.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = joints.reshape(len(idx), 63)
    with open(path, "w") as f:
        for i, row in zip(idx, rows, strict=True):
            f.write(f"{i}," + ",".join(f"{v:.{decimals}f}" for v in row) + "\n")
    return path


def read_hpe_submission(path: str | Path) -> dict[int, np.ndarray]:
    """Read an HPE submission: {index: (21, 3) float64 mm}. A repeated index keeps the last line.

    Raises ValueError naming the file and line when a line does not hold exactly 64
    comma-separated numbers (the first an integer index).
    """
    path = Path(path)
    results: dict[int, np.ndarray] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split(",")
            if len(fields) != 64:
                raise ValueError(f"{path}:{lineno}: expected 64 comma-separated numbers, found {len(fields)}")
            try:
                index = int(fields[0])
                values = np.array(fields[1:], dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a number ({exc})") from exc
            results[index] = values.reshape(21, 3)
    return results


def _ground_truth_mm(dataset_or_gt: DexYCB | Mapping[int, Any]) -> dict[int, np.ndarray]:
    """Valid hands only, as the toolkit: joint_3d metres float32 x 1000 in float32, then float64."""
    gt: dict[int, np.ndarray] = {}
    if isinstance(dataset_or_gt, DexYCB):
        items = (
            (
                i,
                read_labels(m.label_file, len(dataset_or_gt.sequences[dataset_or_gt.sequence_index[i]].ycb_ids))[
                    "joint_3d"
                ],
            )
            for i, m in enumerate(dataset_or_gt.records)
        )
    else:
        items = ((int(k), _np(v)) for k, v in dataset_or_gt.items())
    for i, joint_3d in items:
        joint_3d = np.asarray(joint_3d, dtype=np.float32).reshape(21, 3)
        if np.all(joint_3d == -1):
            continue
        gt[i] = (joint_3d * np.float32(1000)).astype(np.float64)
    return gt


def score_hpe_submission(path: str | Path, dataset_or_gt: DexYCB | Mapping[int, Any]) -> dict[str, dict[str, float]]:
    """Score a submission file like `hpe_eval.py`: returns `hpe_metrics`' dict.

    dataset_or_gt: the split's `DexYCB` (labels are read) or {index: joint_3d (21, 3) metres}.
    Samples whose joints are all -1 are skipped; every other one must be in the file.
    """
    pred = read_hpe_submission(path)
    gt = _ground_truth_mm(dataset_or_gt)
    missing = [i for i in gt if i not in pred]
    if missing:
        raise ValueError(f"{path}: {len(missing)} sample(s) with a valid hand are missing, first index {missing[0]}")
    if not gt:
        raise ValueError(f"{path}: the ground truth holds no sample with a valid hand")
    keys = list(gt)
    logger.info("scoring %s: %d valid samples (%d lines)", path, len(keys), len(pred))
    return hpe_metrics(np.stack([pred[k] for k in keys]), np.stack([gt[k] for k in keys]), units="mm")


def bop_ids(root: str | Path, split: str, indices: Iterable[int]) -> list[tuple[int, int]]:
    """(scene_id, im_id) of each split sample index: the BOP keys of `write_bop_csv` rows."""
    reader = DexYCB(root, split, load_image=False)
    return [(int(reader.scene_id[i]), int(reader.im_id[i])) for i in indices]


@dataclass(frozen=True)
class BopEstimate:
    """One object pose estimate; R (3, 3) and t (3,) metres take DexYCB model points to the camera."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray


def to_bop_pose(obj_id: int, R: Any, t_m: Any) -> tuple[np.ndarray, np.ndarray]:
    """DexYCB pose (t metres) -> BOP YCB-V pose: (R, t_bop mm) with t_bop = 1000 t - R o."""
    R = _np(R).reshape(3, 3)
    return R, _np(t_m).reshape(3) * 1000.0 - R @ np.asarray(BOP_OFFSETS_MM[obj_id])


def write_bop_csv(path: str | Path, estimates: Iterable[BopEstimate], bop_frame: bool = True) -> Path:
    """Write a BOP-2019 results CSV (R row-major, time -1); see the module docstring for
    `bop_frame` (True: mm + BOP offset for bop_toolkit; False: metres, DexYCB frame for
    dex_ycb_toolkit.bop_eval)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(BOP_HEADER + "\n")
        for e in estimates:
            if bop_frame:
                R, t = to_bop_pose(e.obj_id, e.R, e.t)
            else:
                R, t = _np(e.R).reshape(3, 3), _np(e.t).reshape(3)
            r_str = " ".join(repr(float(v)) for v in R.reshape(-1))
            t_str = " ".join(repr(float(v)) for v in t)
            f.write(f"{int(e.scene_id)},{int(e.im_id)},{int(e.obj_id)},{float(e.score)!r},{r_str},{t_str},-1\n")
    return path


def read_bop_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a BOP-2019 CSV as written: list of {scene_id, im_id, obj_id, score, R (3,3), t (3,), time},
    values as stored. Raises ValueError naming the file and line on a malformed row."""
    path = Path(path)
    rows = []
    with open(path) as f:
        header = f.readline().strip()
        if header != BOP_HEADER:
            raise ValueError(f"{path}:1: header {header!r}, expected {BOP_HEADER!r}")
        for lineno, line in enumerate(f, start=2):
            fields = line.strip().split(",")
            try:
                if len(fields) != 7:
                    raise ValueError(f"expected 7 fields, found {len(fields)}")
                R = np.array(fields[4].split(), dtype=np.float64)
                t = np.array(fields[5].split(), dtype=np.float64)
                if R.size != 9 or t.size != 3:
                    raise ValueError(f"R needs 9 values and t 3, found {R.size} and {t.size}")
                rows.append({
                    "scene_id": int(fields[0]), "im_id": int(fields[1]), "obj_id": int(fields[2]),
                    "score": float(fields[3]), "R": R.reshape(3, 3), "t": t, "time": float(fields[6]),
                })  # fmt: skip
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return rows


def submission_writer(format: str) -> Callable[..., Path]:
    """The benchmark-file writer of a dataset format (`amt.data.dataset.open_dataset` names):
    dexycb -> `write_hpe_submission` (HPE text file), ho3d -> `amt.evaluation.ho3d.
    write_ho3d_submission` (pred.json + pred.zip). Other formats have no benchmark: ValueError."""
    writers: dict[str, Callable[..., Path]] = {"dexycb": write_hpe_submission, "ho3d": write_ho3d_submission}
    if format not in writers:
        raise ValueError(f"data format {format!r} has no benchmark submission; formats with one: {sorted(writers)}")
    return writers[format]
