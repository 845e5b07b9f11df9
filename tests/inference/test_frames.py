"""Frame sources: every image mode becomes RGB uint8; bad inputs are reported, not raised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amt.inference.frames import FrameSourceError, iter_frames, load_rgb


def test_every_image_mode_loads_as_rgb_uint8(odd_images: Path) -> None:
    frames = list(iter_frames(odd_images))
    assert [f.name for f in frames] == [
        "a_rgb",
        "b_gray",
        "c_rgba",
        "d_16bit",
        "e_tiny",
        "f_wide_palette",
        "g_corrupt",
        "h_truncated",
    ]
    for f in frames[:6]:
        assert f.error is None and f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
    assert frames[4].image.shape == (10, 10, 3)
    for f in frames[6:]:
        assert f.image is None and f.source in f.error
    gray = load_rgb(odd_images / "b_gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 2])
    sixteen = load_rgb(odd_images / "d_16bit.png")
    assert sixteen.max() == 255  # rescaled, not clipped to a white image
    assert len(np.unique(sixteen)) > 50


def test_gif_frames_in_order(tmp_path: Path, random_image) -> None:
    imgs = [random_image(40, 50, s) for s in range(3)]
    gif = tmp_path / "v.gif"
    Image.fromarray(imgs[0]).save(gif, save_all=True, append_images=[Image.fromarray(i) for i in imgs[1:]])
    frames = list(iter_frames(gif))
    assert [f.name for f in frames] == ["v_000000", "v_000001", "v_000002"]
    assert all(f.image.shape == (40, 50, 3) for f in frames)


def test_bad_sources_raise_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="no such file"):
        list(iter_frames(tmp_path / "missing.png"))
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(FrameSourceError, match="unknown input type"):
        list(iter_frames(tmp_path / "x.xyz"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FrameSourceError, match="no image"):
        list(iter_frames(empty))
