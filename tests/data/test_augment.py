"""Batch augmentation (src/amt/data/augment.py): image, K, 2D and 3D labels stay consistent."""

from __future__ import annotations

import math

import pytest
import torch

from amt.data.augment import AugmentConfig, BatchAugment
from amt.data.transforms import denormalize_images, normalize_images
from amt.geometry.camera import project
from amt.geometry.rotations import axis_angle_to_matrix
from amt.testing import random_batch

SIZE = 64
GEOMETRY_ONLY = AugmentConfig(
    rotation_deg=45.0, scale=0.25, translate=0.1, brightness=0, contrast=0, saturation=0, noise_std=0
)


def _batch(b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """The fake batch (amt.testing) with uint8 images, as the cache stores them, and a camera
    with fx != fy and an off-centre principal point on purpose (the general pixel map)."""
    batch = random_batch(b, SIZE, seed=seed, normalized=False)
    batch["K"][:, 1, 1] *= 1.15
    batch["K"][:, :2, 2] += torch.tensor([2.5, -1.5])
    batch["joints_2d"] = project(batch["joints_3d"], batch["K"])
    batch["mano_valid"] = torch.ones(b, dtype=torch.bool)
    batch["index"] = torch.arange(b)
    return batch


def test_augmented_3d_projects_onto_augmented_2d() -> None:
    batch = _batch()
    out = BatchAugment(AugmentConfig(rotation_deg=180.0, scale=0.3, translate=0.2))(
        batch, torch.Generator().manual_seed(3)
    )
    err = (project(out["joints_3d"], out["K"]) - out["joints_2d"]).norm(dim=-1)
    assert err.max() < 0.5
    assert (out["joints_2d"] - batch["joints_2d"]).abs().max() > 1.0  # it really moved


def test_image_content_moves_with_the_2d_labels() -> None:
    """A bright blob drawn at a projected joint ends up at the augmented 2D location."""
    batch = _batch(b=16, seed=1)
    # the blob sits at joint 0, kept near the centre so it stays inside the augmented image
    batch["joints_3d"] = batch["joints_3d"] - batch["joints_3d"][:, :1] + torch.tensor([0.005, -0.01, 0.6])
    batch["joints_2d"] = project(batch["joints_3d"], batch["K"])
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    centre = batch["joints_2d"][:, 0]
    blob = torch.exp(-((xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2) / (2 * 1.5**2))
    batch["image"] = (255 * blob).round().to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()

    out = BatchAugment(GEOMETRY_ONLY)(batch, torch.Generator().manual_seed(5))
    img = denormalize_images(out["image"])[:, 0]
    img = torch.where(img > 0.05, img, torch.zeros_like(img))
    mass = img.sum(dim=(1, 2))
    found = torch.stack([(img * xs).sum(dim=(1, 2)) / mass, (img * ys).sum(dim=(1, 2)) / mass], dim=-1)
    err = (found - out["joints_2d"][:, 0]).norm(dim=-1)
    assert err.max() < 1.0, err


def test_rotation_moves_objects_rigidly_with_the_camera_axis() -> None:
    batch = _batch()
    out = BatchAugment(GEOMETRY_ONLY)(batch, torch.Generator().manual_seed(7))
    model_points = torch.randn(1, 1, 5, 3) * 0.05
    before = model_points @ batch["obj_R"].transpose(-1, -2) + batch["obj_t"][:, :, None]
    after = model_points @ out["obj_R"].transpose(-1, -2) + out["obj_t"][:, :, None]
    # a rotation about z keeps depth and the distance to the optical axis
    torch.testing.assert_close(after[..., 2], before[..., 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[..., :2].norm(dim=-1), before[..., :2].norm(dim=-1), atol=1e-5, rtol=0)
    eye = torch.eye(3).expand_as(out["obj_R"])
    torch.testing.assert_close(out["obj_R"] @ out["obj_R"].transpose(-1, -2), eye, atol=1e-5, rtol=0)
    # the hand moves with the same rotation as the objects
    rz = out["obj_R"][:, 0] @ batch["obj_R"][:, 0].transpose(-1, -2)
    torch.testing.assert_close(out["joints_3d"], batch["joints_3d"] @ rz.transpose(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["contact_points"], batch["contact_points"] @ rz.transpose(1, 2), atol=1e-5, rtol=0)
    glob = axis_angle_to_matrix(out["mano_pose"][:, :3])
    torch.testing.assert_close(glob, rz @ axis_angle_to_matrix(batch["mano_pose"][:, :3]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["mano_pose"][:, 3:], batch["mano_pose"][:, 3:])


def test_zero_ranges_leave_the_batch_unchanged() -> None:
    batch = _batch()
    off = AugmentConfig(rotation_deg=0, scale=0, translate=0, brightness=0, contrast=0, saturation=0, noise_std=0)
    out = BatchAugment(off)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["image"], normalize_images(batch["image"]), atol=1e-4, rtol=0)
    for key in ("K", "joints_2d", "joints_3d", "obj_R", "obj_t", "contact_points"):
        torch.testing.assert_close(out[key], batch[key], atol=1e-4, rtol=0)


def test_uint8_and_normalised_inputs_give_the_same_result() -> None:
    batch = _batch()
    normed = dict(batch, image=normalize_images(batch["image"]))
    aug = BatchAugment()
    a = aug(batch, torch.Generator().manual_seed(11))
    b = aug(normed, torch.Generator().manual_seed(11))
    torch.testing.assert_close(a["image"], b["image"], atol=1e-4, rtol=0)


def test_same_generator_seed_gives_the_same_batch() -> None:
    batch = _batch()
    aug = BatchAugment()
    a = aug(batch, torch.Generator().manual_seed(2))
    b = aug(batch, torch.Generator().manual_seed(2))
    c = aug(batch, torch.Generator().manual_seed(4))
    for key in ("image", "K", "joints_2d", "joints_3d"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    assert not torch.allclose(a["image"], c["image"])


def test_colour_jitter_keeps_geometry_and_valid_range() -> None:
    batch = _batch()
    colour_only = AugmentConfig(
        rotation_deg=0, scale=0, translate=0, brightness=0.5, contrast=0.5, saturation=0.5, noise_std=0.05
    )
    out = BatchAugment(colour_only)(batch, torch.Generator().manual_seed(0))
    raw = denormalize_images(out["image"])
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert not torch.allclose(out["image"], normalize_images(batch["image"]), atol=1e-2)
    torch.testing.assert_close(out["K"], batch["K"])
    torch.testing.assert_close(out["joints_2d"], batch["joints_2d"], atol=1e-4, rtol=0)


def test_frames_without_a_hand_keep_their_2d_labels() -> None:
    batch = _batch()
    batch["hand_valid"][::2] = False
    out = BatchAugment(GEOMETRY_ONLY)(batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["joints_2d"][::2], batch["joints_2d"][::2])


@pytest.mark.parametrize("angle_deg", [90.0, -30.0])
def test_a_square_pixel_camera_rotates_the_image_by_the_angle(angle_deg: float) -> None:
    """With fx == fy the pixel map is a plain rotation about the principal point."""
    batch = _batch(b=1)
    batch["K"][:, 1, 1] = batch["K"][:, 0, 0]
    batch["joints_2d"] = project(batch["joints_3d"], batch["K"])
    aug = BatchAugment(GEOMETRY_ONLY)
    params = aug.sample_params(1, SIZE, torch.device("cpu"), torch.Generator().manual_seed(0))
    params = type(params)(**{**params.__dict__, "angle": torch.tensor([math.radians(angle_deg)]),
                             "scale": torch.ones(1), "shift": torch.zeros(1, 2)})  # fmt: skip
    out = aug.apply(batch, params)
    c = batch["K"][0, :2, 2]
    a = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    want = (batch["joints_2d"][0] - c) @ rot.T + c
    torch.testing.assert_close(out["joints_2d"][0], want, atol=1e-3, rtol=0)
