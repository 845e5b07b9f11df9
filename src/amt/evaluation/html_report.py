"""`amt eval ... --report html`: one self-contained HTML file (report.html).

Every plot and picture is an inline PNG data URI and the styles are inline: the file references
nothing outside itself, so it can be mailed or archived alone. Sections: provenance (checkpoint
and its SHA-256, config, data, machine, date) with a synthetic-data label when it applies; hand
(the toolkit table, PCK@20 mm, per-joint MPJPE, PCK curves with AUC); objects (ADD / ADD-S /
ADD(-S) table, per-object ADD and ADD-S accuracy curves to 0.1 m with their AUC); contacts
(accuracy, precision, recall, F1, point error); collapse ratio and baselines; a gallery of the
worst samples by root-relative MPJPE (ground truth left, prediction right).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from PIL import Image
from tabulate import tabulate

from amt.data.object_models import ObjectModels
from amt.data.transforms import denormalize_images
from amt.data.ycb import SYMMETRIC_IDS, YCB_CLASSES
from amt.evaluation import metrics
from amt.evaluation.evaluator import ALIGNMENTS, Predictions, joints_mm
from amt.evaluation.objects import object_instances
from amt.evaluation.report import overlay_pair

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
ADD_THRESHOLDS_M = np.linspace(0.0, 0.1, 101)
_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child { text-align: left; }
.synthetic { background: #c62828; color: white; padding: 0.6em 1em; font-weight: bold; }
img { max-width: 100%; } .gallery img { margin: 4px; border: 1px solid #999; }
pre { background: #f5f5f5; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
"""


def png_data_uri(image: Image.Image | Figure) -> str:
    """A PIL image or a matplotlib `Figure` as a `data:image/png;base64` URI."""
    buf = io.BytesIO()
    if isinstance(image, Image.Image):
        image.save(buf, format="PNG")
    else:
        image.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_sha256(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="html", floatfmt=".4g", missingval="-")


def _f(x: float | None, scale: float = 1.0) -> float | None:
    return None if x is None else x * scale


# --- plots --------------------------------------------------------------------------------------


def pck_figure(hand: dict[str, Any], details: dict[str, Any]) -> Figure:
    curves = details["pck_curves"]
    fig = Figure(figsize=(5, 3.6), dpi=100)
    ax = fig.subplots()
    for a in ALIGNMENTS:
        ax.plot(curves["thresholds_mm"], curves[a], label=f"{a} (AUC {hand[a]['auc']:.3f})")
    ax.set(xlabel="threshold (mm)", ylabel="3D PCK", xlim=(0, 50), ylim=(0, 1), title="hand: PCK")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_curve(errors: np.ndarray, thresholds: np.ndarray = ADD_THRESHOLDS_M) -> np.ndarray:
    """Share of instances with error <= each threshold (misses are inf), (T,)."""
    e = np.asarray(errors, dtype=np.float64).reshape(-1, 1)
    return (e <= thresholds[None]).mean(0) if e.size else np.zeros_like(thresholds)


def add_figure(inst: dict[str, np.ndarray], key: str, title: str) -> Figure:
    """Per-object accuracy-threshold curves of `inst[key]` (m), AUC (official) in the legend."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for cid in sorted(set(inst["class"].tolist())):
        e = inst[key][inst["class"] == cid]
        ax.plot(ADD_THRESHOLDS_M * 100, accuracy_curve(e), label=f"{YCB_CLASSES[cid]} ({100 * metrics.add_auc(e):.1f})")
    everything = inst[key]
    ax.plot(
        ADD_THRESHOLDS_M * 100,
        accuracy_curve(everything),
        "k--",
        lw=2,
        label=f"all ({100 * metrics.add_auc(everything):.1f})",
    )
    ax.set(xlabel="threshold (cm)", ylabel="accuracy", xlim=(0, 10), ylim=(0, 1), title=f"{title} (AUC x100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


# --- sections -----------------------------------------------------------------------------------


def _provenance_section(info: dict[str, Any]) -> str:
    ckpt = info.get("checkpoint")
    sha = file_sha256(Path(ckpt) / "model.safetensors") if ckpt else None
    rows = [
        ["checkpoint", ckpt], ["model.safetensors SHA-256", sha], ["data", info.get("data_root")],
        ["split", info.get("split")], ["synthetic data", "yes" if info.get("synthetic_data") else "no"],
        ["date (UTC)", info.get("date")],
        *[[f"machine: {k}", v] for k, v in (info.get("machine") or {}).items()],
    ]  # fmt: skip
    config = yaml.safe_dump(info.get("config"), sort_keys=False) if info.get("config") is not None else "-"
    return (
        "<h2>Provenance</h2>" + _table(rows, ["", "value"])
        + f"<details><summary>config</summary><pre>{html.escape(config)}</pre></details>"
    )  # fmt: skip


def _hand_section(result: dict[str, Any]) -> str:
    hand, d = result["hand"], result["hand_details"]
    pck_key = next(k for k in d if k.startswith("pck@"))
    rows = [[a, hand[a]["mpjpe"], hand[a]["auc"], 100 * d[pck_key][a]] for a in ALIGNMENTS]
    joints = list(d["per_joint_mpjpe_mm"][ALIGNMENTS[0]])
    per_joint = [[j, *[d["per_joint_mpjpe_mm"][a][j] for a in ALIGNMENTS]] for j in joints]
    return (
        f"<h2>Hand ({d['num_samples']} samples)</h2>"
        + _table(rows, ["alignment", "MPJPE (mm)", "AUC", f"{pck_key} (%)"])
        + _img(png_data_uri(pck_figure(hand, d)), "PCK curves")
        + "<details><summary>per-joint MPJPE (mm)</summary>" + _table(per_joint, ["joint", *ALIGNMENTS]) + "</details>"
        + f"<p>Collapse ratio (std of predicted / GT root-relative joints): {result['collapse_ratio']:.3f}</p>"
    )  # fmt: skip


def _objects_section(objects: dict[str, Any], inst: dict[str, np.ndarray] | None) -> str:
    groups = [("all", objects["all"]), ("grasped", objects["grasped"]), *objects["per_object"].items()]
    rows = []
    for name, g in groups:
        row = [name, g["num_instances"], g["num_missed"], _f(g.get("recall"), 100)]
        for key in ("add", "add_s", "add(-s)"):
            row += [g[key]["mean_mm"], _f(g[key]["auc"], 100), _f(g[key]["acc_10pct_diameter"], 100)]
        rows.append(row + [g["translation_error_mm"], g["rotation_error_deg"]])
    headers = ["object", "n", "missed", "recall (%)"]
    for key in ("ADD", "ADD-S", "ADD(-S)"):
        headers += [f"{key} (mm)", f"{key} AUC", f"{key} <10%d (%)"]
    out = "<h2>Objects</h2>" + _table(rows, headers + ["t err (mm)", "R err (deg)"])
    out += f"<p>Symmetric objects (ADD-S in ADD(-S)): {sorted(SYMMETRIC_IDS)}. {html.escape(objects['miss_rule'])}.</p>"
    det = objects["all"].get("detection") or {}
    out += (
        f"<p>Detection: {det.get('num_estimates')} estimates, precision {_f(det.get('precision'), 100)} %, "
        f"recall {_f(det.get('recall'), 100)} %. Protocol: {html.escape(objects.get('protocol', '-'))}.</p>"
    )
    if inst is not None and len(inst["class"]):
        out += _img(png_data_uri(add_figure(inst, "add", "ADD")), "ADD curves")
        out += _img(png_data_uri(add_figure(inst, "add_s", "ADD-S")), "ADD-S curves")
    return out


def _contacts_section(c: dict[str, Any]) -> str:
    keys = ("accuracy", "precision", "recall", "f1", "majority_class_rate", "contact_point_error_mm")
    rows = [[k, c[k]] for k in keys]
    return (
        f"<h2>Contacts ({c['num_objects']} detected objects)</h2>"
        + _table(rows, ["contact", "value"])
        + f"<p>{html.escape(c['forces'])}.</p>"
    )


def _baselines_section(result: dict[str, Any]) -> str:
    base = result.get("baselines")
    if not base:
        return "<h2>Baselines</h2><p>Not computed (no training-split cache).</p>"
    mvb = result["model_vs_baselines"]
    rows = [
        ["root-relative MPJPE (mm)", mvb["hand_root_relative_mpjpe"], base["hand_root_relative_mpjpe"]],
        [
            "object translation error (mm)",
            mvb["object_translation_error"],
            base.get("object_translation_error_detected"),
        ],
        [
            "grasped-object translation error (mm)",
            mvb.get("object_translation_error_grasped"),
            base.get("object_translation_error_grasped_detected"),
        ],
    ]
    return (
        "<h2>Baselines</h2>"
        + _table(rows, ["metric", "model", "baseline"])
        + f"<p>{html.escape(base['description'])}</p>"
    )


def _sample_image(dataset: Any, position: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB crop of dataset sample `position`."""
    image = dataset[int(position)]["image"]
    if image.is_floating_point():
        image = (denormalize_images(image[None].float())[0].clamp(0, 1) * 255).round().byte()
    return image.permute(1, 2, 0).numpy()


def _gallery_section(pred: Predictions, dataset: Any, count: int) -> str:
    valid = np.flatnonzero(pred.gt["hand_valid"])
    if dataset is None or not len(valid):
        return ""
    err = metrics.joint_errors(
        joints_mm(pred.joints_3d[valid]), joints_mm(pred.gt["joints_3d"][valid]), "root-relative"
    )
    worst = valid[np.argsort(-err.mean(-1))[:count]]
    per_sample = dict(zip(valid.tolist(), err.mean(-1).tolist(), strict=True))
    tiles = []
    for i in worst.tolist():
        image = _sample_image(dataset, pred.position[i])
        if "is_left" in pred.gt and pred.gt["is_left"][i]:  # cached mirrored; `pred` is unmirrored
            image = np.ascontiguousarray(image[:, ::-1])
        pair = overlay_pair(image, pred, i)
        caption = f"index {int(pred.index[i])}: root-relative MPJPE {per_sample[i]:.1f} mm"
        tiles.append(
            f"<figure>{_img(png_data_uri(pair), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f"<h2>Worst {len(tiles)} samples (ground truth left, prediction right)</h2><div class=gallery>{''.join(tiles)}</div>"


def render_html(result: dict[str, Any], provenance_info: dict[str, Any], dataset: Any = None, gallery: int = 8) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    pred: Predictions | None = result.get("predictions")
    inst = None
    root = provenance_info.get("data_root")
    if pred is not None and root and (Path(root) / "models").is_dir():
        inst = object_instances(pred, ObjectModels(Path(root) / "models"))
    synthetic = provenance_info.get("synthetic_data")
    title = f"AMT evaluation: {provenance_info.get('split')}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if synthetic:
        body.append(
            '<p class="synthetic">SYNTHETIC DATA: these numbers are not comparable with results on real DexYCB.</p>'
        )
    body += [
        _hand_section(result),
        _objects_section(result["objects"], inst),
        _contacts_section(result["contacts"]),
        _baselines_section(result),
    ]
    if pred is not None:
        body.append(_gallery_section(pred, dataset, gallery))
    body.append(_provenance_section(provenance_info))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )  # fmt: skip


def write_html_report(
    result: dict[str, Any], out_dir: str | Path, provenance_info: dict[str, Any], dataset: Any = None
) -> Path:
    """Write `out_dir/report.html`; dataset (the evaluated `CachedDataset`) feeds the gallery."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_HTML
    path.write_text(render_html(result, provenance_info, dataset), encoding="utf-8")
    log.info("HTML report written to %s", path)
    return path
