"""The evaluation report: JSON, markdown tables, PCK plot, submission files, overlay pictures.

`write_report(result, out_dir, provenance)` writes, under `out_dir`:

    report.json          every number of `evaluate(...)` plus provenance
    report.md            the tables (hand table exactly like the DexYCB toolkit's)
    pck_curves.png       PCK curves of the three alignments
    hpe_submission.txt   the official HPE submission (index + 63 values in mm per line)
    bop_results.csv      BOP-2019 CSV of the object predictions (t in mm)

Plots are matplotlib `Figure` objects saved directly (no pyplot: importing this module leaves the
global backend alone); pictures are drawn with PIL.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from tabulate import tabulate

from amt.evaluation import metrics, submission
from amt.evaluation.evaluator import ALIGNMENTS, Predictions, joints_mm
from amt.geometry.hand_skeleton import BONES, FINGER_JOINTS
from amt.jsonio import write_json

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PCK_PLOT = "pck_curves.png"
HPE_SUBMISSION = "hpe_submission.txt"
BOP_CSV = "bop_results.csv"


def provenance(
    checkpoint: str | Path | None,
    config: Any,
    data_root: str | Path | None,
    split: str | None,
    synthetic_data: bool,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Where the numbers come from: checkpoint, config, data, machine, date (UTC)."""
    return {
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "config": config,
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "split": split,
        "synthetic_data": bool(synthetic_data),
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(device),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --- tables ----------------------------------------------------------------------------------


def hand_table(hand: dict[str, dict[str, float]]) -> str:
    """The toolkit's markdown table: `alignment | MPJPE (mm) | AUC`, 4 decimals."""
    return metrics.hpe_table(hand)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def object_table(objects: dict[str, Any]) -> str:
    """Per group: instances, misses, recall (%), then ADD / ADD-S / ADD(-S): mean (mm, detected
    only), AUC (x100), <10% diameter (%); position and rotation errors of the detected (BOP
    protocol, docs/metrics.md "Objects")."""
    rows = []
    groups = [("all", objects["all"]), ("grasped", objects["grasped"])]
    groups += [(name, g) for name, g in objects["per_object"].items()]
    for name, g in groups:
        recall = g.get("recall")
        row = [name, g["num_instances"], g["num_missed"], _fmt(None if recall is None else 100 * recall, 1)]
        for key in ("add", "add_s", "add(-s)"):
            row += [_fmt(g[key]["mean_mm"]), _fmt(100 * g[key]["auc"]), _fmt(100 * g[key]["acc_10pct_diameter"])]
        row += [_fmt(g["translation_error_mm"]), _fmt(g["rotation_error_deg"])]
        rows.append(row)
    headers = ["object", "n", "missed", "recall %"]
    for key in ("ADD", "ADD-S", "ADD(-S)"):
        headers += [f"{key} (mm)", f"{key} AUC", f"{key} <10%d"]
    headers += ["t err (mm)", "R err (deg)"]
    return tabulate(rows, headers=headers, tablefmt="pipe", stralign="left", numalign="right")


def _detection_line(objects: dict[str, Any]) -> str:
    """One line: the claimed estimates' detection precision and recall, and the protocol."""
    det = objects["all"].get("detection") or {}
    precision, recall = det.get("precision"), det.get("recall")
    return (
        f"Detection: {det.get('num_estimates', '-')} estimates, precision "
        f"{_fmt(None if precision is None else 100 * precision, 1)}%, recall "
        f"{_fmt(None if recall is None else 100 * recall, 1)}%. Protocol: {objects.get('protocol', '-')}."
    )


def contact_table(contacts: dict[str, Any]) -> str:
    keys = ("accuracy", "precision", "recall", "f1", "majority_class_rate")
    rows = [[k, _fmt(contacts[k], 4)] for k in keys]
    rows.append(["contact point error (mm)", _fmt(contacts["contact_point_error_mm"])])
    return tabulate(rows, headers=["contact", "value"], tablefmt="pipe", numalign="right")


def baseline_rows(result: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, model, baseline) pairs in mm for the hand and object baselines; the object
    baselines over the same (detected) objects as the model's errors (BOP protocol)."""
    base = result.get("baselines") or {}
    return [
        ("root-relative MPJPE (mm)", result["hand"]["root-relative"]["mpjpe"], base.get("hand_root_relative_mpjpe")),
        (
            "object translation error (mm)",
            result["objects"]["all"]["translation_error_mm"],
            base.get("object_translation_error_detected", base.get("object_translation_error")),
        ),
        (
            "grasped-object translation error (mm)",
            result["objects"]["grasped"]["translation_error_mm"],
            base.get("object_translation_error_grasped_detected", base.get("object_translation_error_grasped")),
        ),
    ]


def baseline_table(result: dict[str, Any]) -> str:
    rows = []
    for name, model, base in baseline_rows(result):
        ratio = model / base if model is not None and base else None
        rows.append([name, _fmt(model), _fmt(base), _fmt(ratio, 3)])
    return tabulate(rows, headers=["metric", "model", "baseline", "model / baseline"], tablefmt="pipe")


def format_tables(result: dict[str, Any]) -> str:
    """All tables of the report as markdown (what `amt eval` prints)."""
    d = result["hand_details"]
    pck_key = next(k for k in d if k.startswith("pck@"))
    pck_line = ", ".join(f"{a} {100 * d[pck_key][a]:.2f}%" for a in ALIGNMENTS)
    parts = [
        f"## Hand ({d['num_samples']} samples)",
        hand_table(result["hand"]),
        f"{pck_key.upper()}: {pck_line}",
        f"collapse ratio (std of predicted / GT root-relative joints): {result['collapse_ratio']:.3f}",
        "## Objects",
        object_table(result["objects"]),
        _detection_line(result["objects"]),
        "## Contacts",
        contact_table(result["contacts"]),
        f"Forces: {result['contacts']['forces']}.",
    ]
    if result.get("baselines"):
        parts += ["## Baselines", baseline_table(result)]
    return "\n\n".join(parts) + "\n"


# --- plots -------------------------------------------------------------------------------------


def plot_pck_curves(hand: dict[str, Any], hand_details: dict[str, Any], path: str | Path) -> Path:
    """PCK over 0-50 mm for the three alignments, AUC in the legend."""
    curves = hand_details["pck_curves"]
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.subplots()
    for a in ALIGNMENTS:
        ax.plot(curves["thresholds_mm"], curves[a], label=f"{a} (AUC {hand[a]['auc']:.3f})")
    ax.set(xlabel="threshold (mm)", ylabel="PCK", xlim=(0, 50), ylim=(0, 1), title="3D PCK")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# The learned task weighting's objective (Kendall et al.: 0.5 exp(-s) w L + 0.5 s per term) goes
# negative as the log-variances s fall, so it is drawn apart, on a linear scale.
TOTAL_CURVE = "total"


def plot_training_curves(history: dict[str, Sequence[tuple[int, float]]], path: str | Path) -> Path:
    """Save `training_curves_figure(history)` to `path` (PNG)."""
    training_curves_figure(history).savefig(path)
    return Path(path)


def training_curves_figure(history: dict[str, Sequence[tuple[int, float]]]) -> Figure:
    """Loss curves, one panel per loss term so each is readable at its own scale.

    history: name -> (step, value) pairs; "total" is the optimised objective (drawn first, linear
    y: with the learned task weighting it goes negative), every other name a loss term, and
    "term/part" names (e.g. "physics/penetration") are drawn in their term's panel. A panel is
    log-scale when all its values are positive. Curves that stay at 0 (terms inactive in the run,
    e.g. temporal without sequences) are left out.
    """
    panels: dict[str, dict[str, tuple[Sequence[int], Sequence[float]]]] = {}
    for name, points in history.items():
        if not points or all(v == 0 for _, v in points):
            continue
        steps, values = zip(*points)
        panels.setdefault(name.split("/")[0], {})[name] = (steps, values)
    order = sorted(panels, key=lambda k: k != TOTAL_CURVE)  # stable: the terms keep their order
    cols = min(3, max(1, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, panel in zip(axes, order):
        curves = panels[panel]
        for name, (steps, values) in curves.items():
            ax.plot(steps, values, label=name.split("/", 1)[-1] if "/" in name else name, linewidth=1)
        positive = all(min(v) > 0 for _, v in curves.values())
        if panel != TOTAL_CURVE and positive:
            ax.set_yscale("log")
        title = "total (learned weighting, may be < 0)" if panel == TOTAL_CURVE else panel
        ax.set_title(title, fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=6)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    for ax in axes[: len(order)][-cols:]:
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle("training losses (one panel per term)", fontsize=10)
    fig.tight_layout()
    return fig


# --- overlays ------------------------------------------------------------------------------------

_FINGER_COLOURS = ((230, 60, 60), (240, 160, 40), (60, 180, 75), (50, 130, 240), (170, 80, 220))
_AXIS_COLOURS = ((255, 0, 0), (0, 220, 0), (40, 80, 255))


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """points (N, 3) metres, camera frame; K (3, 3) -> (N, 2) pixels (depth clamped at 1 mm)."""
    uvw = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-3)


def _bone_colour(child: int) -> tuple[int, int, int]:
    for i, joints in enumerate(FINGER_JOINTS.values()):
        if child in joints:
            return _FINGER_COLOURS[i]
    return (255, 255, 255)


def draw_hand_objects(
    image: np.ndarray,
    K: np.ndarray,
    joints_3d: np.ndarray | None,
    objects: Sequence[tuple[np.ndarray, np.ndarray]],
    axis_length: float = 0.05,
    scale: int = 1,
) -> Image.Image:
    """Draw a 2D skeleton and object centres + axes on an image.

    image: (H, W, 3) uint8 RGB crop; K: (3, 3) its intrinsics; joints_3d: (21, 3) metres or
    None; objects: (R (3,3), t (3,)) per object, camera frame, metres; axes of `axis_length` m
    drawn red/green/blue for x/y/z. scale: integer upsampling of the picture (K follows it).
    """
    pil = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.BILINEAR)
        # Pixel centres: u' = s (u + 0.5) - 0.5.
        K = np.array([[scale, 0, (scale - 1) / 2], [0, scale, (scale - 1) / 2], [0, 0, 1]]) @ np.asarray(K)
    draw = ImageDraw.Draw(pil)
    r = max(2, pil.width // 112)
    for R, t in objects:
        ends = np.asarray(t)[None] + axis_length * np.asarray(R).T
        uv = _project(np.vstack([t, ends]), K)
        for k in range(3):
            draw.line([tuple(uv[0]), tuple(uv[k + 1])], fill=_AXIS_COLOURS[k], width=2)
        cx, cy = uv[0]
        draw.ellipse([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], outline=(255, 255, 0), width=2)
    if joints_3d is not None:
        uv = _project(joints_3d, K)
        for parent, child in BONES:
            draw.line([tuple(uv[parent]), tuple(uv[child])], fill=_bone_colour(child), width=2)
        for x, y in uv:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return pil


def overlay_pair(
    image: np.ndarray, pred: Predictions, i: int, min_score: float = 0.5, min_size: int = 224
) -> Image.Image:
    """Ground truth (left) next to the prediction (right) for sample `i` of `pred`, each side
    labelled in a strip above it.

    image: (H, W, 3) uint8 crop of that sample, upsampled to at least `min_size` pixels.
    Predicted objects: queries whose best class is not "no object" with probability >= min_score.
    """
    scale = max(1, math.ceil(min_size / image.shape[1]))
    gt, K = pred.gt, pred.gt["K"][i]
    gt_objects = [(gt["obj_R"][i, m], gt["obj_t"][i, m]) for m in np.nonzero(gt["obj_valid"][i])[0]]
    probs = pred.obj_prob[i]
    none = probs.shape[-1] - 1
    keep = [q for q in range(len(probs)) if probs[q].argmax() != none and probs[q].max() >= min_score]
    pred_objects = [(pred.obj_R[i, q], pred.obj_t[i, q]) for q in keep]
    left = draw_hand_objects(image, K, gt["joints_3d"][i] if gt["hand_valid"][i] else None, gt_objects, scale=scale)
    right = draw_hand_objects(image, K, pred.joints_3d[i], pred_objects, scale=scale)
    header = 14  # a label strip above each side, so nobody has to guess which side is which
    pair = Image.new("RGB", (left.width * 2 + 4, left.height + header), (255, 255, 255))
    pair.paste(left, (0, header))
    pair.paste(right, (left.width + 4, header))
    draw = ImageDraw.Draw(pair)
    draw.text((2, 1), "ground truth", fill=(0, 0, 0))
    draw.text((left.width + 6, 1), f"prediction (objects p >= {min_score:g})", fill=(0, 0, 0))
    return pair


# --- files ----------------------------------------------------------------------------------------


def write_hpe_submission(pred: Predictions, path: str | Path) -> Path:
    """Official HPE submission: every evaluated sample, joints in mm, split index first."""
    return submission.write_hpe_submission(path, pred.index, joints_mm(pred.joints_3d), units="mm")


def write_bop_csv(
    pred: Predictions,
    path: str | Path,
    bop_ids: Sequence[tuple[int, int]] | None,
    min_score: float = 0.0,
) -> Path | None:
    """BOP-2019 CSV of the predicted objects (class != none, score = class probability), in the
    frame bop_toolkit reads (t in mm, DexYCB -> BOP model offset applied).

    bop_ids: (scene_id, im_id) per evaluated sample (from the DexYCB reader); None writes nothing.
    """
    if bop_ids is None:
        return None
    rows = []
    none = pred.obj_prob.shape[-1] - 1
    for i, (scene_id, im_id) in enumerate(bop_ids):
        for q in range(pred.obj_prob.shape[1]):
            cls = int(pred.obj_prob[i, q].argmax())
            score = float(pred.obj_prob[i, q, cls])
            if cls == none or score < min_score:
                continue
            rows.append(
                submission.BopEstimate(int(scene_id), int(im_id), cls + 1, score, pred.obj_R[i, q], pred.obj_t[i, q])
            )
    return submission.write_bop_csv(path, rows, bop_frame=True)


def write_report(
    result: dict[str, Any],
    out_dir: str | Path,
    provenance_info: dict[str, Any],
    bop_ids: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Path]:
    """Write every report file under `out_dir` (created); returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred: Predictions | None = result.get("predictions")
    numbers = {k: v for k, v in result.items() if k != "predictions"}
    report = {**numbers, "provenance": provenance_info, "synthetic_data": provenance_info["synthetic_data"]}
    paths = {"json": out / REPORT_JSON, "markdown": out / REPORT_MD}
    write_json(paths["json"], report)
    header = f"# AMT evaluation\n\nsplit {provenance_info['split']} of {provenance_info['data_root']}"
    if provenance_info["synthetic_data"]:
        header += " (SYNTHETIC data)"
    paths["markdown"].write_text(header + "\n\n" + format_tables(numbers))
    paths["pck_plot"] = plot_pck_curves(result["hand"], result["hand_details"], out / PCK_PLOT)
    if pred is not None:
        paths["hpe_submission"] = write_hpe_submission(pred, out / HPE_SUBMISSION)
        bop = write_bop_csv(pred, out / BOP_CSV, bop_ids)
        if bop is not None:
            paths["bop_csv"] = bop
    log.info("report written to %s", out)
    return paths
