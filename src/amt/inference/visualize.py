"""Drawings of a `FramePrediction`: 2D overlay on the input image and an optional 3D view.

Overlay: the crop box (grey), the hand skeleton (bones coloured per finger, joints coloured by
confidence from red = 0 to green = 1), each detected object's axes (x red, y green, z blue) and
3D box projected with the full-image K, its class and score, and contact points (circle radius
grows with the contact probability; filled when prob >= 0.5) with the force direction.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from amt.geometry.hand_skeleton import BONES, FINGER_JOINTS, FINGERS
from amt.geometry.rotations import quat_wxyz_to_matrix
from amt.inference.predictor import FramePrediction, ObjectPrediction, project_points

FINGER_COLOURS = {
    "thumb": (255, 80, 80),
    "index": (255, 200, 0),
    "middle": (80, 220, 80),
    "ring": (0, 180, 255),
    "little": (200, 90, 255),
}
AXIS_COLOURS = ((255, 40, 40), (40, 220, 40), (60, 120, 255))
NOMINAL_HALF_EXTENT_M = 0.05  # cube drawn when the object's model bounds are unknown
AXIS_LENGTH_M = 0.05
CONTACT_THRESHOLD = 0.5
MIN_DEPTH_M = 1e-3

_NOMINAL_BOUNDS = np.array([[-NOMINAL_HALF_EXTENT_M] * 3, [NOMINAL_HALF_EXTENT_M] * 3])
_JOINT_FINGER = {j: f for f in FINGERS for j in FINGER_JOINTS[f]}
_BOX_EDGES = ((0, 1), (1, 3), (3, 2), (2, 0), (4, 5), (5, 7), (7, 6), (6, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> (3, 3) rotation (numpy; for drawing only)."""
    return quat_wxyz_to_matrix(torch.as_tensor(q, dtype=torch.float64)[None])[0].numpy()


def _box_corners(bounds: np.ndarray) -> np.ndarray:
    """(2, 3) min/max corners of an axis-aligned box -> its (8, 3) corners."""
    lo, hi = bounds
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _conf_colour(c: float) -> tuple[int, int, int]:
    c = float(np.clip(c, 0.0, 1.0))
    return int(255 * (1 - c)), int(255 * c), 40


def _draw_object(draw: ImageDraw.ImageDraw, obj: ObjectPrediction, K: np.ndarray, bounds: np.ndarray, lw: int) -> None:
    R = _quat_to_matrix(obj.quat_wxyz)
    t = np.asarray(obj.translation, dtype=np.float64)
    if t[2] <= MIN_DEPTH_M:
        return
    corners = _box_corners(bounds) @ R.T + t
    if (corners[:, 2] > MIN_DEPTH_M).all():
        uv = project_points(corners, K)
        for a, b in _BOX_EDGES:
            draw.line([tuple(uv[a]), tuple(uv[b])], fill=(255, 255, 255), width=max(1, lw // 2))
    ends = t + R.T * AXIS_LENGTH_M  # row i: tip of the object's axis i (column i of R)
    uv = project_points(np.vstack([t, ends]), K)
    for i in range(3):
        if ends[i, 2] > MIN_DEPTH_M:
            draw.line([tuple(uv[0]), tuple(uv[i + 1])], fill=AXIS_COLOURS[i], width=lw)
    draw.text((float(uv[0, 0]) + 3, float(uv[0, 1]) + 3), f"{obj.class_name} {obj.score:.2f}", fill=(255, 255, 255))


def draw_overlay(
    image: np.ndarray, pred: FramePrediction, model_bounds: dict[int, np.ndarray] | None = None
) -> Image.Image:
    """(H, W, 3) uint8 RGB + prediction -> overlay image.

    model_bounds: optional class id -> (2, 3) min/max corners (metres, model frame) of the
    object's mesh; objects without one get a cube of half side NOMINAL_HALF_EXTENT_M.
    """
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    lw = max(1, round(min(w, h) / 240))
    r = max(1, round(min(w, h) / 160))
    x0, y0, side = pred.crop_box
    draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], outline=(160, 160, 160), width=lw)
    for obj in pred.objects:
        bounds = (model_bounds or {}).get(obj.class_id, _NOMINAL_BOUNDS)
        _draw_object(draw, obj, pred.K, np.asarray(bounds, dtype=np.float64), lw)
    visible = pred.joints_3d[:, 2] > MIN_DEPTH_M
    uv = pred.joints_2d
    for a, b in BONES:
        if visible[a] and visible[b]:
            draw.line([tuple(uv[a]), tuple(uv[b])], fill=FINGER_COLOURS[_JOINT_FINGER[b]], width=lw + 1)
    for j in np.flatnonzero(visible):
        x, y = uv[j]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_conf_colour(pred.joint_conf[j]))
    for c in pred.contacts:
        if c.point[2] <= MIN_DEPTH_M:
            continue
        x, y = c.point_2d
        rc = r + round(2 * r * c.prob)
        fill = (255, 0, 255) if c.prob >= CONTACT_THRESHOLD else None
        draw.ellipse([x - rc, y - rc, x + rc, y + rc], outline=(255, 0, 255), fill=fill, width=lw)
        norm = float(np.linalg.norm(c.force))
        if norm > 1e-9:
            tip = c.point + c.force / norm * AXIS_LENGTH_M * min(norm, 1.0)
            if tip[2] > MIN_DEPTH_M:
                end = project_points(tip[None], pred.K)[0]
                draw.line([(x, y), tuple(end)], fill=(255, 0, 255), width=lw)
    return canvas


def draw_3d_view(pred: FramePrediction, size_px: int = 480) -> Image.Image:
    """A matplotlib 3D view of joints, bones, object frames and contacts (camera frame, metres).

    Plotted as (x, z, -y) so that the camera's down (y) points down and depth goes into the page.
    """

    def pts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.atleast_2d(p)
        return p[:, 0], p[:, 2], -p[:, 1]

    fig = Figure(figsize=(size_px / 100, size_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    J = pred.joints_3d
    for a, b in BONES:
        ax.plot(*pts(J[[a, b]]), color=np.array(FINGER_COLOURS[_JOINT_FINGER[b]]) / 255, linewidth=2)
    ax.scatter(*pts(J), c=[np.array(_conf_colour(c)) / 255 for c in pred.joint_conf], s=12)
    for obj in pred.objects:
        R = _quat_to_matrix(obj.quat_wxyz)
        for i in range(3):
            seg = np.vstack([obj.translation, obj.translation + R[:, i] * AXIS_LENGTH_M])
            ax.plot(*pts(seg), color=np.array(AXIS_COLOURS[i]) / 255)
        ax.text(*(v[0] for v in pts(obj.translation)), obj.class_name, fontsize=7)
    if pred.contacts:
        P = np.stack([c.point for c in pred.contacts])
        ax.scatter(*pts(P), c="magenta", s=[10 + 40 * c.prob for c in pred.contacts], marker="x")
    everything = np.vstack([J, *(o.translation[None] for o in pred.objects)])
    centre, span = everything.mean(0), max(float(np.ptp(everything, axis=0).max()) / 2, 0.05)
    cx, cz, cy = (v[0] for v in pts(centre))
    ax.set_xlim(cx - span, cx + span)
    ax.set_ylim(cz - span, cz + span)
    ax.set_zlim(cy - span, cy + span)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z depth (m)")
    ax.set_zlabel("-y (m)")
    fig.tight_layout()
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def side_by_side(overlay: Image.Image, view: Image.Image) -> Image.Image:
    """Overlay and 3D view next to each other, the view resized to the overlay's height."""
    h = overlay.height
    view = view.resize((max(1, round(view.width * h / view.height)), h))
    out = Image.new("RGB", (overlay.width + view.width, h), (255, 255, 255))
    out.paste(overlay, (0, 0))
    out.paste(view, (overlay.width, 0))
    return out
