"""The on-disk format of a cache folder (see `amt.data.cache`): file names, the label arrays,
and the integrity record that makes a half-built or damaged cache detectable.

meta.json is the completion marker: written last, atomically (`write_json_atomic`), after every
array file was fsynced, with each file's size and SHA-256. `read_cache_meta` checks the marker
the sizes and the label files' checksums on every open, and with verify=True the image file's
checksum too (reads every byte).
"""

from __future__ import annotations

import hashlib
import json
import tokenize
from pathlib import Path
from typing import Any

import numpy as np

MAX_OBJECTS = 10
CACHE_VERSION = 3  # 2: completion marker, checksums, skipped rows; 3: left hands stored mirrored
IMAGES_FILE = "images.u8"
META_FILE = "meta.json"
BUILD_FILE = "build.json"
PROGRESS_FILE = "progress.jsonl"
LABELS_DIR = "labels"
CACHE_SUBDIR = "cache"  # caches of a dataset root live in <root>/cache/<split>_<size>

# key -> (per-sample shape, dtype); every key is stored as labels/<key>.npy with shape (N, *shape).
LABEL_SPECS: dict[str, tuple[tuple[int, ...], str]] = {
    "index": ((), "int64"),
    "K": ((3, 3), "float32"),
    "crop_box": ((3,), "int32"),  # (x0, y0, side) in full-image pixels
    "joints_3d": ((21, 3), "float32"),
    "joints_2d": ((21, 2), "float32"),
    "hand_valid": ((), "bool"),
    "is_left": ((), "bool"),
    "mano_pose": ((48,), "float32"),
    "mano_shape": ((10,), "float32"),
    "mano_valid": ((), "bool"),
    "obj_R": ((MAX_OBJECTS, 3, 3), "float32"),
    "obj_t": ((MAX_OBJECTS, 3), "float32"),
    "obj_class": ((MAX_OBJECTS,), "int64"),
    "obj_valid": ((MAX_OBJECTS,), "bool"),
    "grasped": ((), "int64"),
    "contact_points": ((MAX_OBJECTS, 3), "float32"),
    "contact_valid": ((MAX_OBJECTS,), "bool"),
}


class CacheError(ValueError):
    """A cache folder that is incomplete (a killed build), damaged or of another version; the
    message names the file and says how to resume or rebuild."""


def file_digest(path: Path, start: int = 0, stop: int | None = None, block: int = 1 << 23) -> str:
    """SHA-256 (hex) of bytes [start, stop) of `path` (stop None: to the end)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            data = f.read(block if left is None else min(block, left))
            if not data:
                break
            h.update(data)
            if left is not None:
                left -= len(data)
    return h.hexdigest()


def data_files(folder: Path) -> list[Path]:
    """The array files of a cache: images.u8, then labels/<key>.npy in LABEL_SPECS order."""
    return [folder / IMAGES_FILE] + [folder / LABELS_DIR / f"{key}.npy" for key in LABEL_SPECS]


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header; CacheError when it is not one."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran:
                raise ValueError("Fortran-ordered array")
            return tuple(shape), np.dtype(dtype), f.tell()
    except FileNotFoundError:
        raise CacheError(f"{path}: missing from the cache (rebuild it with `amt cache --force`)") from None
    except (OSError, ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:  # numpy's header parser
        raise CacheError(f"{path}: not a readable .npy array ({exc}); rebuild with `amt cache --force`") from exc


def row_spans(folder: Path, n: int, size: int) -> dict[Path, tuple[int, int]]:
    """{file: (data offset, bytes per row)} of every array file, read from the .npy headers."""
    spans = {folder / IMAGES_FILE: (0, size * size * 3)}
    for key, (shape, dtype) in LABEL_SPECS.items():
        path = folder / LABELS_DIR / f"{key}.npy"
        found_shape, found_dtype, offset = npy_header(path)
        if found_shape != (n, *shape) or found_dtype != np.dtype(dtype):
            raise CacheError(
                f"{path}: holds {found_dtype}{list(found_shape)}, expected {dtype}{[n, *shape]}; "
                "rebuild with `amt cache --force`"
            )
        spans[path] = (offset, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return spans


def expected_sizes(folder: Path, n: int, size: int) -> dict[Path, int]:
    return {path: offset + n * row for path, (offset, row) in row_spans(folder, n, size).items()}


def chunk_digest(spans: dict[Path, tuple[int, int]], start: int, stop: int) -> str:
    """SHA-256 over rows [start, stop) of every array file: a chunk's fingerprint in progress.jsonl."""
    h = hashlib.sha256()
    for path, (offset, row) in spans.items():
        h.update(file_digest(path, offset + start * row, offset + stop * row).encode())
    return h.hexdigest()


def read_cache_meta(folder: str | Path, verify: bool = False) -> dict[str, Any]:
    """The meta.json of a complete cache after checking it: version, completion marker, every
    array file's size and the label files' SHA-256 (small: about 1 kB per sample) against the
    record written at the end of the build; `verify` also hashes images.u8 (a flipped pixel is
    harmless, a flipped label is not). Raises CacheError naming the file otherwise."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        hint = "an unfinished or killed build: rerun `amt cache` to resume it" if (folder / BUILD_FILE).exists() else (
            "build it with `amt cache`")  # fmt: skip
        raise CacheError(f"{folder}: not a complete cache (no {META_FILE}; {hint})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: unreadable ({exc}); rebuild with `amt cache --force`") from exc
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        found = meta.get("version") if isinstance(meta, dict) else type(meta).__name__
        raise CacheError(
            f"{path}: key 'version' is {found!r}, expected {CACHE_VERSION}; rebuild with `amt cache --force`"
        )
    try:
        n, size, files, samples = int(meta["num_samples"]), int(meta["size"]), meta["files"], meta["samples"]
        complete, skipped = meta["complete"] is True, [int(s["row"]) for s in meta["skipped"]]
        records = {folder / name: (int(r["bytes"]), str(r["sha256"])) for name, r in files.items()}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CacheError(f"{path}: malformed ({type(exc).__name__}: {exc}); rebuild with `amt cache --force`") from exc
    sample_keys = {"subject", "sequence", "serial", "frame"}
    well_formed = isinstance(samples, list) and all(isinstance(m, dict) and sample_keys <= set(m) for m in samples)
    if (
        not (complete and well_formed and isinstance(meta.get("params"), dict))
        or len(samples) != n
        or n <= 0
        or not 0 < size <= 4096
    ):
        raise CacheError(f"{path}: not a complete cache record (num_samples, size, samples disagree); rebuild it")
    if any(not 0 <= r < n for r in skipped):
        raise CacheError(f"{path}: key 'skipped' names rows outside 0..{n - 1}; rebuild it")
    expected = expected_sizes(folder, n, size)
    if set(records) != set(expected):
        raise CacheError(f"{path}: key 'files' does not list the cache's array files; rebuild it")
    for file, want in expected.items():
        found = file.stat().st_size if file.exists() else None
        if found != want or records[file][0] != want:
            raise CacheError(
                f"{file}: {found} bytes, expected {want} (a killed build or a damaged copy); "
                "rebuild with `amt cache --force`"
            )
        if (verify or file.parent.name == LABELS_DIR) and file_digest(file) != records[file][1]:
            raise CacheError(f"{file}: checksum differs from {META_FILE} (damaged); rebuild with `amt cache --force`")
    return meta


def cache_problem(folder: str | Path) -> str | None:
    """None when `folder` holds a complete, undamaged-looking cache (sizes checked), else why not."""
    try:
        read_cache_meta(folder)
    except CacheError as exc:
        return str(exc)
    return None
