"""Batch-wise augmentation on the batch's device, keeping image, K, 2D and 3D labels consistent.

Geometry per sample: a rotation by angle a about the camera's optical axis, then a scale s and a
translation t of the image about the crop's principal point c. With A the upper-left 2x2 of K
(focal lengths and skew) and Rz the 3D rotation:

    3D points, object poses, contact points:  X' = Rz X,  R' = Rz R,  t' = Rz t
    pixels:                                   p' = c + t + s * A R2 A^-1 (p - c)   (R2 = Rz[:2, :2])
    intrinsics:                               K' = M K,  M = [[s, 0, (1-s)cx + tx], [0, s, (1-s)cy + ty], [0, 0, 1]]

so project(X', K') == p' exactly (A R2 A^-1 reduces to the plain image rotation when fx == fy).
The image is warped with the same pixel map through `affine_grid` / `grid_sample`. Then colour
jitter (brightness, contrast, saturation) and Gaussian noise act on the [0, 1] image, and the
result is ImageNet-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from amt.data.transforms import denormalize_images, normalize_images
from amt.errors import finite_number, require
from amt.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rotation_about_z


@dataclass
class AugmentConfig:
    """Ranges of the random parameters; a zero disables that part (`data.augment_params` of a
    run config; not frozen, since Hydra overrides write into it).

    rotation_deg: angle ~ U(-r, r) degrees about the optical axis.
    scale: s ~ U(1 - scale, 1 + scale).
    translate: t ~ U(-f, f) * image size (pixels), per axis.
    brightness / contrast / saturation: factor ~ U(1 - x, 1 + x).
    noise_std: per-sample sigma ~ U(0, noise_std) on the [0, 1] image.
    """

    rotation_deg: float = 30.0
    scale: float = 0.2
    translate: float = 0.1
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        # a factor range reaching 0 (scale, brightness, ...) would draw empty, black or flipped
        # images; rotations past 180 degrees repeat themselves
        for name, high in (("rotation_deg", 180.0), ("scale", 0.99), ("translate", 1.0), ("brightness", 1.0),
                           ("contrast", 1.0), ("saturation", 1.0), ("noise_std", 1.0)):  # fmt: skip
            value = getattr(self, name)
            require(finite_number(value) and 0 <= value <= high, f"data.augment_params.{name}", value,
                    f"a number in [0, {high:g}]")  # fmt: skip


@dataclass(frozen=True)
class AugmentParams:
    """Drawn parameters for a batch of B: angle (B,) radians, scale (B,), shift (B, 2) pixels,
    brightness / contrast / saturation (B,) factors, noise (B,) sigma."""

    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    noise: torch.Tensor


def _pixel_to_normalized(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(3, 3) map from pixel coordinates (centre of pixel j at x = j) to grid_sample's
    align_corners=False coordinates in [-1, 1]."""
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]], device=device, dtype=dtype
    )


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma (ITU-R 601 weights)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


class BatchAugment:
    """Augment a batch dict (batch contract) in one call on its device.

    `batch["image"]` may be uint8 (B, 3, H, W) or float ImageNet-normalised; the result's image is
    always float32 normalised. Keys transformed when present: K, joints_2d, joints_3d, obj_R,
    obj_t, contact_points, mano_pose (global orientation). Other keys pass through unchanged.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()

    def sample_params(
        self, batch_size: int, image_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw parameters on the generator's device (or `device` without one), returned on `device`."""
        cfg = self.cfg
        gen_device = generator.device if generator is not None else device

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            u = torch.rand(batch_size, *shape, generator=generator, device=gen_device)
            return (lo + (hi - lo) * u).to(device)

        r = math.radians(cfg.rotation_deg)
        return AugmentParams(
            angle=uniform(-r, r),
            scale=uniform(1.0 - cfg.scale, 1.0 + cfg.scale),
            shift=uniform(-cfg.translate * image_size, cfg.translate * image_size, 2),
            brightness=uniform(1.0 - cfg.brightness, 1.0 + cfg.brightness),
            contrast=uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast),
            saturation=uniform(1.0 - cfg.saturation, 1.0 + cfg.saturation),
            noise=uniform(0.0, cfg.noise_std),
        )

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        image = batch["image"]
        b, _, h, w = image.shape
        params = self.sample_params(b, max(h, w), image.device, generator)
        noise = torch.randn(
            image.shape, generator=generator, device=generator.device if generator is not None else image.device
        ).to(image.device)
        return self.apply(batch, params, noise)

    def apply(self, batch: dict[str, Any], params: AugmentParams, noise: torch.Tensor | None = None) -> dict[str, Any]:
        """Apply given parameters. noise: (B, 3, H, W) standard normal, scaled by params.noise."""
        out = dict(batch)
        image = batch["image"]
        x = image.float() / 255.0 if image.dtype == torch.uint8 else denormalize_images(image.float())
        b, _, h, w = x.shape
        K = batch["K"].float()
        dev, dt = x.device, x.dtype

        rz = rotation_about_z(params.angle.to(dt))  # (B, 3, 3)
        A = K[:, :2, :2]
        c = K[:, :2, 2]
        lin = params.scale.view(b, 1, 1) * (A @ rz[:, :2, :2] @ torch.linalg.inv(A))
        T = torch.zeros(b, 3, 3, device=dev, dtype=dt)
        T[:, :2, :2] = lin
        T[:, :2, 2] = c + params.shift - (lin @ c.unsqueeze(-1)).squeeze(-1)
        T[:, 2, 2] = 1.0
        M = torch.zeros(b, 3, 3, device=dev, dtype=dt)
        M[:, 0, 0] = M[:, 1, 1] = params.scale
        M[:, :2, 2] = (1.0 - params.scale).unsqueeze(-1) * c + params.shift
        M[:, 2, 2] = 1.0
        out["K"] = M @ K

        N = _pixel_to_normalized(h, w, dev, dt)
        theta = (N @ torch.linalg.inv(T) @ torch.linalg.inv(N))[:, :2]
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = self._colour(x, params)
        if noise is not None:
            x = (x + params.noise.view(b, 1, 1, 1) * noise).clamp(0.0, 1.0)
        out["image"] = normalize_images(x)

        if "joints_2d" in batch:
            j2d = batch["joints_2d"].float()
            moved = j2d @ T[:, :2, :2].transpose(1, 2) + T[:, None, :2, 2]
            valid = batch["hand_valid"].view(b, 1, 1) if "hand_valid" in batch else torch.ones_like(j2d[:, :1, :1])
            out["joints_2d"] = torch.where(valid.bool(), moved, j2d)
        rzt = rz.transpose(1, 2)
        for key in ("joints_3d", "obj_t", "contact_points"):
            if key in batch:
                out[key] = batch[key].float() @ rzt
        if "obj_R" in batch:
            out["obj_R"] = rz.unsqueeze(1) @ batch["obj_R"].float()
        if "mano_pose" in batch:
            pose = batch["mano_pose"].float().clone()
            turned = matrix_to_axis_angle(rz @ axis_angle_to_matrix(pose[:, :3]))
            valid = (
                batch["mano_valid"].view(b, 1).bool() if "mano_valid" in batch else torch.ones_like(pose[:, :1]).bool()
            )
            pose[:, :3] = torch.where(valid, turned, pose[:, :3])
            out["mano_pose"] = pose
        return out

    @staticmethod
    def _colour(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Brightness, contrast (about the mean luma), saturation (towards the luma), clamped to [0, 1]."""
        b = x.shape[0]
        x = (x * p.brightness.view(b, 1, 1, 1)).clamp(0.0, 1.0)
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + p.contrast.view(b, 1, 1, 1) * (x - mean)).clamp(0.0, 1.0)
        gray = _grayscale(x)
        return (gray + p.saturation.view(b, 1, 1, 1) * (x - gray)).clamp(0.0, 1.0)
