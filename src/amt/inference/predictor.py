"""Single-image prediction: crop the hand, run the model, return camera-frame results.

`Predictor.predict(image, intrinsics, box)` takes a full (H, W, 3) uint8 RGB image, its
intrinsics and a hand box in image pixels (None: a centred square crop), crops and normalises
exactly as the training cache does (`amt.data.transforms`), runs the model with the crop's K,
and returns a `FramePrediction`: 3D results in the camera frame of the full image (metres;
cropping changes K, not 3D) and 2D results in full-image pixels (the projection of the 3D
joints with the full image's K).

`hand="left"`: the model is trained on right hands (the cache stores a left hand as its mirror
image), so the crop is flipped, its K mirrored, and the outputs mirrored back into the image's own
camera frame (`mirror_outputs`), exactly as the evaluator does for cached left hands.

The crop side and the normalisation come from the model's own config (`amt.inference.export.
InputSpec.of(model)`:
`image_size`, and `image_mean` / `image_std` when a config carries them, else ImageNet's, what
every AMT cache uses), so a 96-px checkpoint is fed 96-px crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amt.checkpoint import load_model
from amt.data.cache import MAX_CROP_FACTOR
from amt.data.transforms import CropConfig, crop_and_resize, crop_intrinsics_for_box, mirror_crop_K, square_box
from amt.data.ycb import NUM_CLASSES, YCB_CLASSES
from amt.geometry.camera import project
from amt.inference.export import InputSpec
from amt.inference.fastpath import FastPath, FastPathConfig
from amt.inference.intrinsics import Intrinsics
from amt.inference.precision import inference_model
from amt.models.config import recorded_crop_margin

log = logging.getLogger(__name__)

Box = tuple[int, int, int]  # (x0, y0, side) integer pixels of the full image


def check_box(box: Box, width: int, height: int) -> Box:
    """The crop box as three ints, or ValueError saying what is wrong with it: not three finite
    numbers (an x0, y0, x1, y1 box needs `box_from_xyxy` first), a side below one pixel, a side so
    large the crop would not fit in memory, or a box that misses the image altogether (a box in
    another image's pixels: the crop would be padding only)."""
    values = np.asarray(box, dtype=np.float64) if np.ndim(box) == 1 else np.zeros(0)
    if values.shape != (3,) or not np.isfinite(values).all():
        raise ValueError(
            f"crop box {box!r}: expected (x0, y0, side) finite pixels (for an x0, y0, x1, y1 box: box_from_xyxy)"
        )
    x0, y0, side = (int(round(v)) for v in values)
    if side < 1:
        raise ValueError(f"crop box {box!r}: the side must be at least 1 pixel")
    if side > MAX_CROP_FACTOR * max(width, height):
        raise ValueError(
            f"crop box side {side} px is more than {MAX_CROP_FACTOR}x the {width}x{height} image; check the hand box"
        )
    if x0 >= width or y0 >= height or x0 + side <= 0 or y0 + side <= 0:
        raise ValueError(
            f"the crop box (x0={x0}, y0={y0}, side {side} px) lies outside the {width}x{height} image; check that "
            "the hand box is in this image's pixels"
        )
    return x0, y0, side


HANDS = ("right", "left")
# model outputs (batched, last axis 3) that are camera-frame points or vectors
_MIRRORED_VECTORS = ("joints_3d", "obj_t", "contact_points", "contact_force")


def mirror_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model outputs of a mirrored crop -> those of the unmirrored scene (x -> -x; an object
    quaternion (w, x, y, z) -> (w, x, -y, -z), i.e. R -> M R M with M = diag(-1, 1, 1)).
    Other outputs (confidences, logits, shape) are unchanged. Returns a new dict."""
    res = dict(out)
    sign = torch.tensor([-1.0, 1.0, 1.0])
    for key in _MIRRORED_VECTORS:
        if key in res:
            res[key] = res[key] * sign.to(res[key].device, res[key].dtype)
    if "obj_quat" in res:
        q = res["obj_quat"]
        res["obj_quat"] = q * torch.tensor([1.0, 1.0, -1.0, -1.0], device=q.device, dtype=q.dtype)
    return res


def box_from_xyxy(xyxy: tuple[float, float, float, float], crop: CropConfig) -> Box:
    """A hand box (x0, y0, x1, y1) in pixels -> the square crop box the cache would use around it."""
    x0, y0, x1, y1 = xyxy
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"hand box {xyxy}: expected x0 < x1 and y0 < y1")
    return square_box(np.array([[x0, y0], [x1, y1]]), crop.margin, crop.min_size)


def centred_box(width: int, height: int) -> Box:
    """The largest centred square of the image."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


@dataclass
class ObjectPrediction:
    """One detected object: YCB class, score, pose in the camera frame (quaternion w,x,y,z; metres)."""

    query: int
    class_id: int
    class_name: str
    score: float
    quat_wxyz: np.ndarray
    translation: np.ndarray
    center_2d: np.ndarray

    def to_json(self) -> dict:
        return {
            "query": self.query,
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "quat_wxyz": self.quat_wxyz.tolist(),
            "translation_m": self.translation.tolist(),
            "center_2d_px": self.center_2d.tolist(),
        }


@dataclass
class ContactPrediction:
    """Hand contact with one detected object: point (m, camera frame), probability, force (3,)."""

    query: int
    class_name: str
    point: np.ndarray
    point_2d: np.ndarray
    prob: float
    force: np.ndarray

    def to_json(self) -> dict:
        return {
            "query": self.query,
            "class_name": self.class_name,
            "point_m": self.point.tolist(),
            "point_2d_px": self.point_2d.tolist(),
            "prob": self.prob,
            "force": self.force.tolist(),
        }


@dataclass
class FramePrediction:
    """Everything predicted for one image.

    joints_3d: (21, 3) metres, camera frame; joints_2d: (21, 2) full-image pixels;
    joint_conf: (21,) in [0, 1]; mano_shape: (10,); K: (3, 3) full-image intrinsics used;
    crop_box: (x0, y0, side) pixels; crop_source: where the box came from; hand: "right" or
    "left" (a left hand ran mirrored; every result here is unmirrored).
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    joint_conf: np.ndarray
    mano_shape: np.ndarray
    objects: list[ObjectPrediction]
    contacts: list[ContactPrediction]
    K: np.ndarray
    intrinsics_source: str
    crop_box: Box
    crop_source: str
    image_size: tuple[int, int]
    extra: dict = field(default_factory=dict)
    hand: str = "right"

    def to_json(self) -> dict:
        fx, fy, cx, cy = (float(v) for v in (self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]))
        return {
            "image_size": {"width": self.image_size[0], "height": self.image_size[1]},
            "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "source": self.intrinsics_source},
            "crop": {
                "x0": self.crop_box[0],
                "y0": self.crop_box[1],
                "side": self.crop_box[2],
                "source": self.crop_source,
            },
            "hand": {
                "joints_3d_m": self.joints_3d.tolist(),
                "joints_2d_px": self.joints_2d.tolist(),
                "joint_conf": self.joint_conf.tolist(),
                "mano_shape": self.mano_shape.tolist(),
                "side": self.hand,
            },
            "objects": [o.to_json() for o in self.objects],
            "contacts": [c.to_json() for c in self.contacts],
            **self.extra,
        }


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) metres -> (N, 2) pixels with amt.geometry.camera.project."""
    pts = torch.as_tensor(points, dtype=torch.float64)[None]
    return project(pts, torch.as_tensor(K, dtype=torch.float64)[None])[0].numpy()


def decode(
    out: dict[str, torch.Tensor], K: np.ndarray, score_threshold: float, index: int = 0
) -> tuple[dict[str, np.ndarray], list[ObjectPrediction], list[ContactPrediction]]:
    """Contract output (batched) -> hand arrays, objects above `score_threshold`, their contacts.

    An object's score is its most probable real class's softmax probability (the last logit is
    "no object"); class index c maps to YCB id c + 1.
    """
    hand = {k: out[k][index].detach().float().cpu().numpy() for k in ("joints_3d", "joint_conf", "mano_shape")}
    hand["joints_2d"] = project_points(hand["joints_3d"], K)
    probs = out["obj_logits"][index].float().softmax(-1)[:, :NUM_CLASSES]
    scores, classes = (t.cpu() for t in probs.max(-1))  # one transfer, not a device sync per object
    obj_t = out["obj_t"][index].float().cpu().numpy()
    obj_q = out["obj_quat"][index].float().cpu().numpy()
    c_pts = out["contact_points"][index].float().cpu().numpy()
    c_prob = out["contact_prob"][index].float().cpu().numpy()
    c_force = out["contact_force"][index].float().cpu().numpy()
    centers = project_points(obj_t, K)
    contacts_2d = project_points(c_pts, K)
    objects, contacts = [], []
    for q in torch.argsort(scores, descending=True).tolist():
        if float(scores[q]) < score_threshold:
            break
        cid = int(classes[q]) + 1
        name = YCB_CLASSES[cid]
        objects.append(ObjectPrediction(q, cid, name, float(scores[q]), obj_q[q], obj_t[q], centers[q]))
        contacts.append(ContactPrediction(q, name, c_pts[q], contacts_2d[q], float(c_prob[q]), c_force[q]))
    return hand, objects, contacts


class Predictor:
    """Runs an AMT model on full images (see module docstring).

    score_threshold: minimum object score kept; crop: margin and minimum side of the crop box
    (its `size` is replaced by the model's `image_size`: the crop side the model was trained on;
    None: the margin the model was trained on, `recorded_crop_margin`, else CropConfig's);
    fastpath: FastPath settings (CUDA graphs and bf16 apply on CUDA only by default);
    dtype: 'float32' or 'bfloat16', the inference model's storage dtype (`amt.inference.precision`:
    bf16 weights cast once, geometric heads in float32; parity in tests/inference/test_precision.py).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        crop: CropConfig | None = None,
        fastpath: FastPathConfig | None = None,
        dtype: str = "float32",
    ) -> None:
        self.input_spec = InputSpec.of(model)
        if crop is not None and crop.size not in (self.input_spec.size, CropConfig().size):
            log.warning("crop size %d ignored: the model was trained on %d-px crops", crop.size, self.input_spec.size)
        if crop is None:
            margin = recorded_crop_margin(model)
            crop = CropConfig() if margin is None else CropConfig(margin=margin)
        self.crop = replace(crop, size=self.input_spec.size)
        self.score_threshold = score_threshold
        self.runner = FastPath(inference_model(model, dtype, device), device, fastpath)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Predictor:
        return cls(load_model(path), **kwargs)

    def predict(
        self,
        image: np.ndarray,
        intrinsics: Intrinsics,
        box: Box | None = None,
        crop_source: str = "given",
        hand: str = "right",
    ) -> FramePrediction:
        """image: (H, W, 3) uint8 RGB; box: (x0, y0, side) square crop in pixels, None = centred
        square; hand: "right" or "left" (run mirrored, results mirrored back)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if hand not in HANDS:
            raise ValueError(f"hand: expected 'right' or 'left', got {hand!r}")
        if not isinstance(intrinsics, Intrinsics):
            raise TypeError(
                f"intrinsics: expected an amt.inference.intrinsics.Intrinsics (Intrinsics(fx, fy, cx, cy, source), "
                f"default_intrinsics(width, height) or load_calibration(path)), got {type(intrinsics).__name__}"
            )
        h, w = image.shape[:2]
        if box is None:
            box, crop_source = centred_box(w, h), "centred (no hand box)"
        box = check_box(box, w, h)
        K = intrinsics.K
        crop = crop_and_resize(image, box, self.crop.size)
        Kc = crop_intrinsics_for_box(K, box, self.crop.size)
        if hand == "left":  # the model knows right hands: run the mirror image (as the cache stores it)
            crop, Kc = np.ascontiguousarray(crop[:, ::-1]), mirror_crop_K(Kc, self.crop.size)
        x = self.input_spec.normalize(torch.from_numpy(crop).permute(2, 0, 1)[None])
        out = self.runner(x, torch.from_numpy(Kc)[None])
        if hand == "left":
            out = mirror_outputs(out)
        arrays, objects, contacts = decode(out, K, self.score_threshold)
        return FramePrediction(
            joints_3d=arrays["joints_3d"],
            joints_2d=arrays["joints_2d"],
            joint_conf=arrays["joint_conf"],
            mano_shape=arrays["mano_shape"],
            objects=objects,
            contacts=contacts,
            K=K,
            intrinsics_source=intrinsics.source,
            crop_box=tuple(int(v) for v in box),
            crop_source=crop_source,
            image_size=(w, h),
            hand=hand,
        )
