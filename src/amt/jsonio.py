"""JSON for report numbers, shared by the evaluation and the diagnostics reports, and durable
JSON writes (`write_json_atomic`, `fsync_path`) for every layer that marks something complete.

A base-layer helper (imports nothing from amt), so that both report writers, which are siblings
in the layer order and may not import each other, use one conversion.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Numbers as JSON allows them: NaN and inf become None, numpy scalars plain floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, value: Any) -> Path:
    """`jsonable(value)` as indented JSON with a final newline; returns `path`."""
    path.write_text(json.dumps(jsonable(value), indent=2) + "\n")
    return path


def fsync_path(path: Path) -> None:
    """Flush `path` (a file or a folder entry) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, value: Any, indent: int | None = None) -> None:
    """Write JSON to `path` so that a kill at any instant leaves the old file or the new one, never
    a torn one: a temporary file, fsync, `os.replace`, fsync of the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
