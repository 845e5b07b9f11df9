"""Frame sources for `amt predict`: one image, a folder of images, or a video file.

Every frame comes out as (H, W, 3) uint8 RGB whatever the file held: grayscale, palette and
CMYK are converted, 16/32-bit and float images rescaled to 8 bits, alpha composited over white,
and the EXIF orientation applied (the image as a viewer shows it). An image of more than
`MAX_IMAGE_PIXELS` pixels (64 megapixels, e.g. 8000 x 8000; `amt predict --max-pixels`) is
refused from its header, before decoding, so a decompression bomb costs nothing. A file that
cannot be decoded yields a `Frame` with `error` set instead of raising, so one bad file never
stops a batch.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageOps

from amt.data.dexycb import DECODE_ERRORS
from amt.extras import missing_extra_message

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# GIF is read as a video (pillow plugin), so animated GIFs work without ffmpeg.
FFMPEG_VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
VIDEO_EXTENSIONS = FFMPEG_VIDEO_EXTENSIONS | {".gif"}
MAX_IMAGE_PIXELS = 64_000_000  # width x height above which an image is refused (decompression bombs)


class FrameSourceError(ValueError):
    """The input path cannot be read as a whole (missing, unknown type, no video backend)."""


@dataclass
class Frame:
    """One input frame.

    name: output file stem (image stem, or `<video stem>_<index:06d>`); source: file path;
    index: position in the source (video frame index, or order in the folder);
    image: (H, W, 3) uint8 RGB, None when `error` says why it could not be read.
    """

    name: str
    source: str
    index: int
    image: np.ndarray | None = None
    error: str | None = None


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the limit (a decompression bomb or a huge scan)."""


def _upright(im: Image.Image) -> Image.Image:
    """The image rotated / mirrored as its EXIF orientation says; unchanged when EXIF is unreadable."""
    try:
        return ImageOps.exif_transpose(im)
    except DECODE_ERRORS as exc:
        log.warning("%s: ignoring an unreadable EXIF orientation (%s)", im.filename or "image", exc)
        return im


def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (see the module docstring for the conversions).

    Raises ImageTooLargeError when width x height > max_pixels (checked before decoding), and
    OSError/ValueError (or another of `DECODE_ERRORS`) when the file is corrupt.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{path}: above the limit of {max_pixels} pixels ({exc})") from exc
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageTooLargeError(
                f"{path}: {w}x{h} = {w * h} pixels is above the limit of {max_pixels} "
                "(a decompression bomb or a huge scan; raise it with --max-pixels)"
            )
        im.load()
        im = _upright(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            # 16/32-bit integer or float grayscale: rescale to 8 bits instead of letting PIL clip.
            arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            low = min(float(arr.min()), 0.0) if arr.size else 0.0
            top = float(arr.max()) - low if arr.size and arr.max() > low else 1.0
            arr = np.clip((arr - low) / top * 255.0, 0, 255).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _image_frame(path: Path, index: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Frame:
    try:
        return Frame(path.stem, str(path), index, image=load_rgb(path, max_pixels))
    except ImageTooLargeError as exc:
        return Frame(path.stem, str(path), index, error=str(exc))
    except DECODE_ERRORS as exc:  # what PIL, zlib and struct raise on corrupt data
        return Frame(path.stem, str(path), index, error=f"cannot decode image {path}: {type(exc).__name__}: {exc}")


def require_video_backend(path: Path) -> None:
    """Raise FrameSourceError when `path` is not named as a video this module reads and writes, or
    its format needs imageio-ffmpeg and that is missing."""
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise FrameSourceError(f"{path}: not a video file name; expected one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
    if path.suffix.lower() in FFMPEG_VIDEO_EXTENSIONS and not (
        importlib.util.find_spec("imageio_ffmpeg") or importlib.util.find_spec("av")
    ):
        raise FrameSourceError(f"{path}: " + missing_extra_message(f"{path.suffix} video", "imageio-ffmpeg", "video"))


def video_fps(path: Path, default: float = 30.0) -> float:
    """Frames per second stored in a video file (GIF: from the frame duration in ms)."""
    try:
        meta = iio.immeta(path)
    except Exception:  # noqa: BLE001 -- metadata is optional; the frames are what matter
        return default
    if meta.get("fps"):
        return float(meta["fps"])
    if meta.get("duration"):
        return 1000.0 / float(meta["duration"])
    return default


def iter_video(path: Path) -> Iterator[Frame]:
    """Frames of a video file; a decode failure mid-stream ends the video with an error frame."""
    index = 0
    try:
        for arr in iio.imiter(path):
            arr = np.asarray(arr)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=-1)
            yield Frame(f"{path.stem}_{index:06d}", str(path), index, image=np.ascontiguousarray(arr[..., :3]))
            index += 1
    except (OSError, ValueError, RuntimeError) as exc:
        yield Frame(
            f"{path.stem}_{index:06d}",
            str(path),
            index,
            error=f"cannot decode video {path} at frame {index}: {_one_line(exc)}",
        )


def _one_line(exc: BaseException) -> str:
    """imageio-ffmpeg's errors carry ffmpeg's whole banner (~40 lines): its first line and
    ffmpeg's last word on the problem are what a user needs."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return f"{lines[0]} (ffmpeg: {lines[-1]})"


def iter_frames(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Frame]:
    """Frames of an image file, a folder of images (sorted by name, non-images ignored) or a video.
    An image above `max_pixels` pixels becomes an error frame.

    The path is checked before this returns (FrameSourceError when it cannot be read at all);
    frames are decoded lazily.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FrameSourceError(f"{path}: folder holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        ignored = sum(1 for p in path.iterdir() if p.is_file()) - len(files)
        if ignored:
            log.info("%s: ignoring %d file(s) that are not images", path, ignored)
        return (_image_frame(file, i, max_pixels) for i, file in enumerate(files))
    if not path.exists():
        raise FrameSourceError(f"{path}: no such file or folder")
    if is_video(path):
        require_video_backend(path)
        return iter_video(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return iter([_image_frame(path, 0, max_pixels)])
    raise FrameSourceError(
        f"{path}: unknown input type {path.suffix!r}; expected an image "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}), a folder or a video ({', '.join(sorted(VIDEO_EXTENSIONS))})"
    )


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """Write (H, W, 3) uint8 frames as a video (.gif without extras; .mp4 etc. need imageio-ffmpeg)."""
    require_video_backend(path)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames), duration=1000.0 / fps, loop=0)
    else:
        iio.imwrite(path, np.stack(frames), fps=fps)
