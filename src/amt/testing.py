"""The one fake batch: random tensors that follow the batch contract (docs/architecture.md).

Used by the tests and by `amt bench` wherever a batch's shapes and plausibility matter but its
values do not. `random_batch(...)` draws everything from one seeded generator, the images
first, so `labels=False` (images and K only, what `AMT.forward` reads) gives the same images
as the full batch of the same seed.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from amt.data.cache import MAX_OBJECTS
from amt.data.ycb import NUM_CLASSES
from amt.geometry.camera import project
from amt.geometry.rotations import axis_angle_to_matrix

# focal length / crop side: 700 px at 224 px, about a 35 degree field of view like DexYCB's crops
FOCAL_PER_PIXEL = 3.125


def crop_intrinsics(batch_size: int, image_size: int = 224) -> torch.Tensor:
    """(B, 3, 3) K of a square crop: fx = fy = FOCAL_PER_PIXEL * image_size, centre in the middle."""
    f, c = FOCAL_PER_PIXEL * image_size, image_size / 2
    K = torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
    return K.expand(batch_size, 3, 3).clone()


def random_batch(
    batch_size: int = 4,
    image_size: int = 224,
    seed: int = 0,
    labels: bool = True,
    slots: int = MAX_OBJECTS,
    normalized: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """A seeded fake batch.

    image (B, 3, S, S): standard-normal float32 values (a normalised crop), or with
    `normalized=False` uint8 0..255 (the cache's raw crops, as `CachedDataset(normalize=False)`
    and `BatchAugment` take them); K (B, 3, 3) from `crop_intrinsics`.
    With `labels`, every other contract key, plausibly placed: a hand whose wrist is 0.55-0.65 m
    in front of the camera with joints scattered 4 cm around it (metres, camera frame),
    `joints_2d` their projection (crop pixels), 2-3 valid object slots of `slots` with random
    rotations and translations ~8 cm around the hand, YCB classes 1..21, about half of them in
    contact; MANO parameters random and marked invalid; `meta` one dict per sample.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, image_size, image_size)
    image = (
        torch.randn(shape, generator=g) if normalized else torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    )
    out: dict[str, Any] = {
        "image": image,
        "K": crop_intrinsics(batch_size, image_size),
    }
    if labels:
        b = batch_size
        root = torch.stack([torch.zeros(b), torch.zeros(b), 0.55 + 0.1 * torch.rand(b, generator=g)], -1)
        joints = root[:, None] + 0.04 * torch.randn(b, 21, 3, generator=g)
        n_obj = 2 + torch.randint(0, 2, (b,), generator=g)
        valid = torch.arange(slots)[None] < n_obj[:, None]
        obj_t = root[:, None] + 0.08 * torch.randn(b, slots, 3, generator=g)
        out.update(
            joints_3d=joints,
            joints_2d=project(joints, out["K"]),
            hand_valid=torch.ones(b, dtype=torch.bool),
            mano_pose=0.1 * torch.randn(b, 48, generator=g),
            mano_shape=torch.randn(b, 10, generator=g),
            mano_valid=torch.zeros(b, dtype=torch.bool),
            obj_R=axis_angle_to_matrix(torch.randn(b, slots, 3, generator=g)),
            obj_t=obj_t,
            obj_class=torch.where(valid, torch.randint(1, NUM_CLASSES + 1, (b, slots), generator=g), 0),
            obj_valid=valid,
            grasped=torch.zeros(b, dtype=torch.long),
            contact_points=obj_t + 0.02 * torch.randn(b, slots, 3, generator=g),
            contact_valid=valid & (torch.rand(b, slots, generator=g) < 0.5),
        )
    out = {k: v.to(device) for k, v in out.items()}
    if labels:
        out["meta"] = [{"synthetic": True} for _ in range(batch_size)]
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test's gloo process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives `rank` of a one-node group rendezvousing at 127.0.0.1:`port`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
