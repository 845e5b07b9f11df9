"""Image-space transforms shared by the cache and the loaders: crop box, crop+resize, normalise.

Pixel convention (OpenCV, as DexYCB's `joint_2d`): the centre of pixel (i, j) sits at
coordinates (x=j, y=i). A crop box is integer: (x0, y0, side) in full-image pixels; the crop
holds source pixels x0..x0+side-1, resized to `size` with an antialiased bilinear filter.
`crop_intrinsics_for_box` returns the crop's K for exactly that resampling, so projecting with it
lands on the resampled image content.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from amt.errors import ConfigError, finite_number
from amt.geometry.camera import crop_intrinsics

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_CROP_SIZE = 16  # pixels: a smaller crop holds no hand a network can read
MAX_CROP_MARGIN = 10.0  # crop side / hand box side: training uses 1.5-2


@dataclass(frozen=True)
class CropConfig:
    """How hand-centred crops are chosen.

    margin: side = margin * max(width, height) of the 2D joints' box (pixels);
    min_size: lower bound on the side (pixels), so a tiny or far hand still gets context.
    """

    size: int = 224
    margin: float = 1.5
    min_size: int = 96

    def __post_init__(self) -> None:
        # why: a zero or negative size fails deep in the resize, and a margin below 1 crops the
        # hand itself away; both are a user's typo, refused here where every caller passes
        if not (isinstance(self.size, Integral) and self.size >= MIN_CROP_SIZE):
            raise ConfigError(f"crop size must be a whole number of pixels >= {MIN_CROP_SIZE}, got {self.size!r}")
        if not (finite_number(self.margin) and 1.0 <= self.margin <= MAX_CROP_MARGIN):
            raise ConfigError(
                f"crop margin (crop side / hand box side) must lie in 1..{MAX_CROP_MARGIN:g}, got {self.margin!r}"
            )
        if not (isinstance(self.min_size, Integral) and self.min_size >= 1):
            raise ConfigError(f"crop min_size must be a whole number of pixels >= 1, got {self.min_size!r}")


def square_box(points_2d: np.ndarray, margin: float, min_size: int) -> tuple[int, int, int]:
    """Integer square box around 2D points.

    points_2d: (N, 2) pixels. Returns (x0, y0, side) centred on the points' bounding box, with
    side = max(min_size, margin * longest extent), rounded to integers. The box may extend
    outside the image (the crop pads with black).
    """
    pts = np.asarray(points_2d, dtype=np.float64).reshape(-1, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2.0
    side = int(round(max(float(min_size), margin * float((hi - lo).max()))))
    x0 = int(round(centre[0] - side / 2.0))
    y0 = int(round(centre[1] - side / 2.0))
    return x0, y0, side


def crop_and_resize(image: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Crop a square box (zero-padded outside the image) and resize it with antialiasing.

    image: (H, W, 3) uint8 RGB; box: (x0, y0, side) integer pixels. Returns (size, size, 3) uint8.
    """
    x0, y0, side = box
    h, w = image.shape[:2]
    patch = np.zeros((side, side, image.shape[2]), dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if side == size:
        return patch
    t = torch.from_numpy(patch).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def crop_intrinsics_for_box(K: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """K (3, 3) of the full image -> K (3, 3) float32 of `crop_and_resize(image, box, size)`.

    With `align_corners=False` resampling, crop pixel u samples source x = x0 - 0.5 + (u + 0.5) / s
    (s = size / side), i.e. u = (x - x0 + 0.5) * s - 0.5: exactly the mapping of
    `amt.geometry.camera.crop_intrinsics`, which applies the half-pixel terms itself.
    """
    x0, y0, side = box
    box_t = torch.tensor([x0, y0, side, side], dtype=torch.float64)
    Kc = crop_intrinsics(torch.as_tensor(np.asarray(K), dtype=torch.float64), box_t, size)
    return Kc.numpy().astype(np.float32)


def to_crop_pixels(points_2d: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Full-image pixels (..., 2) -> crop pixels (..., 2) float32, same mapping as the crop's K."""
    x0, y0, side = box
    s = size / side
    shift = -0.5 + 0.5 / s
    origin = np.array([x0 + shift, y0 + shift])
    return ((np.asarray(points_2d, dtype=np.float64) - origin) * s).astype(np.float32)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB or float in [0, 1] -> float32 ImageNet-normalised (B, 3, H, W).

    Runs on the tensor's device, so a uint8 batch can be normalised after the host-device copy.
    One float copy, then in-place scale and shift (the input is never modified).
    """
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    scale = 1.0 / (std * 255.0) if images.dtype == torch.uint8 else 1.0 / std
    x = images.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return x.mul_(scale).sub_(mean / std)


def denormalize_images(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_images` for float input: (B, 3, H, W) -> values in [0, 1] (unclamped)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return images * std + mean


# --- handedness: left hands are stored and run as their mirror image (a right hand) ----------
# The mirror is x -> -x in the camera frame (M = diag(-1, 1, 1)). With a crop of side S whose K
# has principal point cx, the flipped crop (column u -> S - 1 - u) is exactly the projection of
# the x-mirrored scene through the same K with cx -> S - 1 - cx. Rotations map R -> M R M (a
# rotation again), so an object pose (R, t) becomes (M R M, M t): the pose of the *mirrored mesh*
# (model points p -> M p) in the mirrored scene. Every map here is its own inverse.
MIRROR = np.diag([-1.0, 1.0, 1.0])
# keys of a cache row (LABEL_SPECS names) that hold camera-frame points / rotations / crop pixels
MIRROR_POINT_KEYS = ("joints_3d", "obj_t", "contact_points")


def mirror_points(points: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points (or vectors) -> x-mirrored copy, same dtype."""
    out = np.array(points, copy=True)
    out[..., 0] = -out[..., 0]
    return out


def mirror_rotations(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> M R M (flips the signs of R's [0, 1], [0, 2], [1, 0], [2, 0])."""
    m = MIRROR.diagonal().astype(np.asarray(R).dtype)
    return np.asarray(R) * m[:, None] * m[None, :]


def mirror_axis_angle(pose: np.ndarray) -> np.ndarray:
    """(..., 3k) axis-angle vectors -> their M R M counterparts (x, -y, -z): a rotation's axis a
    becomes -M a under the reflection."""
    out = np.array(pose, copy=True).reshape(*np.shape(pose)[:-1], -1, 3)
    out[..., 1:] = -out[..., 1:]
    return out.reshape(np.shape(pose))


def mirror_crop_pixels(points_2d: np.ndarray, size: int) -> np.ndarray:
    """(..., 2) crop pixels -> the same points in the horizontally flipped crop (u -> S - 1 - u)."""
    out = np.array(points_2d, copy=True)
    out[..., 0] = (size - 1) - out[..., 0]
    return out


def mirror_crop_K(K: np.ndarray, size: int) -> np.ndarray:
    """(..., 3, 3) crop intrinsics -> those of the flipped crop viewing the x-mirrored scene."""
    out = np.array(K, copy=True)
    out[..., 0, 2] = (size - 1) - out[..., 0, 2]
    return out


def mirror_record(image: np.ndarray, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A cache row (crop (S, S, 3) uint8 + LABEL_SPECS labels) -> its x-mirrored twin.

    Flips the crop, mirrors K, 2D joints (crop pixels), 3D joints, object poses, contact points
    and MANO's global orientation (`mano_pose[:3]`, axis-angle). The 45 MANO PCA coefficients
    are kept: MANO's left-hand PCA basis and mean are the mirror of the right hand's, so the
    same coefficients give the mirrored finger pose in the other hand's model. `crop_box` (full-
    image pixels), `is_left` and the other labels are unchanged; missing keys are skipped.
    Applying it twice returns the input.
    """
    size = image.shape[1]
    out = dict(labels)
    for key in MIRROR_POINT_KEYS:
        if key in out:
            out[key] = mirror_points(out[key])
    if "obj_R" in out:
        out["obj_R"] = mirror_rotations(out["obj_R"])
    if "joints_2d" in out:
        out["joints_2d"] = mirror_crop_pixels(out["joints_2d"], size)
    if "K" in out:
        out["K"] = mirror_crop_K(out["K"], size)
    if "mano_pose" in out:
        pose = np.array(out["mano_pose"], copy=True)
        pose[..., :3] = mirror_axis_angle(pose[..., :3])
        out["mano_pose"] = pose
    return np.ascontiguousarray(image[:, ::-1]), out
