"""Is a complete cache still a cache of its dataset? A fingerprint of the source, checked on reuse.

`amt train`, `amt eval` and `amt debug` reuse a complete cache found at `<root>/cache/...`
without reading the dataset again. When the dataset changed after the build (frames added or
removed, labels corrected, `amt synth` run again with another seed or frame count), training on
the old cache would give numbers for data that no longer exist, silently. So a build records
the split's sample count and a SHA-256 over the labels of a few evenly spaced samples (no
images: a few milliseconds), and reuse recomputes both and stops with the rebuild command when
they differ. A `python:` reader is checked by its count only: nothing says it reads a sample
the same way twice.

Caches built before this check have no fingerprint and are reused as before.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from amt.data.cache_format import CacheError, read_cache_meta
from amt.data.dataset import READER_ERRORS, SAMPLE_KEYS, open_dataset

SOURCE_KEY = "source"  # in a cache's build parameters (build.json, meta.json "params")
PROBES = 16  # samples whose labels are hashed
# Paths and the running index say where a sample was read from, not what it is: a moved dataset
# is the same dataset.
_NOT_HASHED = frozenset({"index", "color_file", "label_file"})


def probe_indices(n: int) -> list[int]:
    """Up to PROBES evenly spaced sample indices of a split of `n`, first and last included."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(PROBES, n))}) if n else []


def _update(digest: Any, value: Any) -> None:
    if value is None or isinstance(value, (str, bool, int, float)):
        digest.update(repr(value).encode())
        return
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
        array = array.astype(np.float64)
    digest.update(f"{array.shape}".encode())
    digest.update(array.tobytes() if array.dtype.kind == "f" else repr(array.tolist()).encode())


def source_fingerprint(dataset: Any, format: str) -> dict[str, Any]:
    """{"num_samples": N, "labels_sha256": hex or None (`python:` readers)} of an opened split."""
    n = len(dataset)
    if format.startswith("python:"):
        return {"num_samples": n, "labels_sha256": None}
    digest = hashlib.sha256()
    load_image = dataset.load_image
    dataset.load_image = False
    try:
        for i in probe_indices(n):
            digest.update(f"#{i}".encode())
            try:
                sample = dataset[i]
            except READER_ERRORS as exc:  # a bad sample is part of what the data are
                digest.update(type(exc).__name__.encode())
                continue
            for key in SAMPLE_KEYS:
                if key not in _NOT_HASHED:
                    digest.update(key.encode())
                    _update(digest, sample.get(key))
    finally:
        dataset.load_image = load_image
    return {"num_samples": n, "labels_sha256": digest.hexdigest()}


def check_cache_source(folder: str | Path, root: str | Path, split: str, format: str) -> None:
    """CacheError naming `folder` when its complete cache was built from other data than `split`
    of `root` now holds (see the module docstring); nothing when it has no fingerprint."""
    params = read_cache_meta(folder)["params"]
    recorded = params.get(SOURCE_KEY)
    if not isinstance(recorded, dict):
        return
    now = source_fingerprint(open_dataset(format, root, split, load_image=False), format)
    if recorded.get("num_samples") != now["num_samples"]:
        change = f"had {recorded.get('num_samples')} samples then and has {now['num_samples']} now"
    elif recorded.get("labels_sha256") not in (None, now["labels_sha256"]):
        change = "has as many samples, but their labels changed"
    else:
        return
    flags = "" if format == "dexycb" else f" --format {format}"
    crop = params.get("crop")
    if isinstance(crop, dict) and isinstance(crop.get("size"), int) and isinstance(crop.get("margin"), (int, float)):
        flags += f" --size {crop['size']} --margin {crop['margin']:g}"  # as built
    raise CacheError(
        f"{folder}: built from split {split!r} of {root}, which {change}; delete the folder (the next "
        f"`amt train` / `amt eval` builds it again) or rebuild it: `amt cache {shlex.quote(str(root))}{flags} "
        f"--split {split} --out {shlex.quote(str(folder))} --force`"
    )
