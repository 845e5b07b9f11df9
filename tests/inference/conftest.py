"""Fixtures for the inference tests: one tiny random-weight checkpoint per session, test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AMT checkpoint folder (random weights; read-only for the tests)."""
    from amt.models import build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_model("tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> torch.nn.Module:
    from amt.models import AMT

    return AMT.from_pretrained(tiny_checkpoint).eval()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour blobs plus noise (random but image-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in rng.uniform(0, 3, 3)], -1)
    img = 127 + 100 * img + rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(name="random_image")
def random_image_fixture():
    """The `random_image(height, width, seed)` helper, as a fixture."""
    return random_image


@pytest.fixture
def odd_images(tmp_path: Path) -> Path:
    """A folder of arbitrary images: RGB JPEG, grayscale PNG, RGBA PNG, 16-bit PNG, tiny 10x10,
    a wide one, a palette PNG, plus a corrupt JPEG, a truncated PNG and a non-image file."""
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(random_image(480, 640, 1)).save(d / "a_rgb.jpg", quality=90)
    Image.fromarray(random_image(300, 200, 2)[..., 0]).save(d / "b_gray.png")
    rgba = np.concatenate([random_image(256, 256, 3), np.full((256, 256, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba).save(d / "c_rgba.png")
    Image.fromarray(random_image(120, 160, 4)[..., 0].astype(np.uint16) * 257).save(d / "d_16bit.png")
    Image.fromarray(random_image(10, 10, 5)).save(d / "e_tiny.jpg")
    Image.fromarray(random_image(90, 1000, 6)).convert("P").save(d / "f_wide_palette.png")
    (d / "g_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(range(256)))
    Image.fromarray(random_image(200, 200, 7)).save(d / "h_truncated.png")
    (d / "h_truncated.png").write_bytes((d / "h_truncated.png").read_bytes()[:3000])
    (d / "notes.txt").write_text("not an image")
    return d
