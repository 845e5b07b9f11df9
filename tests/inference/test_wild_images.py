"""Images from the wild in `amt predict` (issue 14): every kind below loads as upright (H, W, 3)
uint8 RGB with the expected pixels, and a batch holding all of them plus decompression bombs and
broken files finishes, predicting every readable image and counting and reporting the rest."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amt.inference.cli import predict_main
from amt.inference.frames import MAX_IMAGE_PIXELS, ImageTooLargeError, iter_frames, load_rgb

RED, BLUE = (200, 30, 40), (20, 40, 220)


def _two_colours(height: int = 30, width: int = 40) -> np.ndarray:
    """(H, W, 3) uint8: left half RED, right half BLUE (orientation is visible)."""
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2], img[:, width // 2 :] = RED, BLUE
    return img


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG whose valid header declares width x height 8-bit gray pixels; the file is ~100 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 marker is patched to declare width x height."""
    buf = io.BytesIO()
    Image.fromarray(_two_colours()).save(buf, format="JPEG")
    data = buf.getvalue()
    i = data.find(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


@pytest.fixture
def wild(tmp_path: Path) -> Path:
    d = tmp_path / "wild"
    d.mkdir()
    img = _two_colours()
    Image.fromarray(img[..., 0]).save(d / "gray.png")
    Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(d / "palette.png")
    Image.fromarray(img[..., 2].astype(np.uint16) * 257).save(d / "sixteen.png")  # 16-bit gray
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:5, :5, 3] = 0  # a transparent corner
    Image.fromarray(rgba).save(d / "alpha.png")
    Image.fromarray(img).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates the stored image 90 degrees clockwise
    Image.fromarray(img).save(d / "exif_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).save(d / "one_pixel.png")
    (d / "bomb.png").write_bytes(_png_bomb(100_000, 100_000))  # 10 gigapixels declared
    (d / "bomb_jpeg.jpg").write_bytes(_jpeg_declaring(65_000, 65_000))
    (d / "truncated.png").write_bytes((d / "gray.png").read_bytes()[:60])
    return d


def test_each_kind_loads_as_upright_rgb_uint8(wild: Path) -> None:
    def close(a, b) -> bool:
        return bool(np.all(np.abs(np.asarray(a, int) - np.asarray(b, int)) <= 12))

    gray = load_rgb(wild / "gray.png")
    assert gray.shape == (30, 40, 3) and np.array_equal(gray[..., 0], gray[..., 1]) and gray[0, 0, 0] == RED[0]
    palette = load_rgb(wild / "palette.png")
    assert close(palette[0, 0], RED) and close(palette[0, -1], BLUE)
    sixteen = load_rgb(wild / "sixteen.png")  # rescaled to the full 8-bit range, not clipped
    assert sixteen.dtype == np.uint8 and sixteen[0, -1, 0] == 255 and abs(int(sixteen[0, 0, 0]) - 40 * 255 // 220) <= 1
    alpha = load_rgb(wild / "alpha.png")
    assert np.array_equal(alpha[0, 0], [255, 255, 255]) and np.array_equal(alpha[10, 0], RED)  # over white
    cmyk = load_rgb(wild / "cmyk.jpg")
    assert cmyk.shape == (30, 40, 3) and close(cmyk[15, 5], RED) and close(cmyk[15, -5], BLUE)
    rotated = load_rgb(wild / "exif_rotated.jpg")
    assert rotated.shape == (40, 30, 3)  # 90 degrees clockwise: the left half (RED) is now on top
    assert close(rotated[5, 15], RED) and close(rotated[-5, 15], BLUE)
    assert load_rgb(wild / "one_pixel.png").shape == (1, 1, 3)


@pytest.mark.parametrize("name", ["bomb.png", "bomb_jpeg.jpg"])
def test_decompression_bombs_are_refused_from_the_header(wild: Path, name: str) -> None:
    with pytest.raises(ImageTooLargeError, match=rf"{name}: .*above the limit of {MAX_IMAGE_PIXELS}"):
        load_rgb(wild / name)
    (frame,) = iter_frames(wild / name)
    assert frame.image is None and name in frame.error
    small = wild / "gray.png"
    with pytest.raises(ImageTooLargeError, match="raise it with --max-pixels"):
        load_rgb(small, max_pixels=100)


def test_a_batch_of_wild_images_predicts_the_readable_ones_and_reports_the_rest(
    tiny_checkpoint: Path, wild: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), str(wild), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    readable = ["alpha", "cmyk", "exif_rotated", "gray", "one_pixel", "palette", "sixteen"]
    assert summary["predicted"] == len(readable)
    assert sorted(s["frame"] for s in summary["skipped"]) == ["bomb", "bomb_jpeg", "truncated"]
    printed = capsys.readouterr().out
    assert f"predicted {len(readable)} frame(s), skipped 3" in printed
    for name in ("bomb.png", "bomb_jpeg.jpg", "truncated.png"):
        assert name in printed
    for stem in readable:
        record = json.loads((out / f"{stem}.json").read_text())
        assert np.isfinite(record["hand"]["joints_3d_m"]).all()
        assert (out / f"{stem}_overlay.png").is_file()
    assert json.loads((out / "exif_rotated.json").read_text())["image_size"] == {"width": 30, "height": 40}
    assert json.loads((out / "one_pixel.json").read_text())["image_size"] == {"width": 1, "height": 1}


def test_a_box_far_larger_than_the_image_skips_that_frame_only(
    tiny_checkpoint: Path, wild: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"gray.png": [0, 0, 900000, 900000]}))
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), str(wild / "gray.png"), "--boxes", str(boxes), "--out", str(out), "--device", "cpu"]
    assert predict_main(args) == 1  # nothing predicted: exit 1, with the reason printed
    assert "crop box side" in capsys.readouterr().out
    boxes.write_text(json.dumps({"gray.png": [0, 0, float("inf"), 3]}).replace("Infinity", "1e999"))
    assert predict_main(args) == 2
    assert "boxes.json" in capsys.readouterr().err
