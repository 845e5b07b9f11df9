"""Camera intrinsics for `amt predict`: explicit values, a DexYCB calibration file, or a default.

The default, used only when the user gives nothing, is a pinhole camera with a 55 degree
horizontal field of view and the principal point at the image centre: about DexYCB's RealSense
D415 colour camera (fx ~ 616 px at 640 px width). Every prediction records which intrinsics
it used (`Intrinsics.source`), because a wrong focal length scales the predicted depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amt.data.dexycb import DexYCBError, load_intrinsics

DEFAULT_HFOV_DEG = 55.0


class IntrinsicsError(ValueError):
    """Intrinsics given on the command line or in a calibration file are unusable."""


@dataclass(frozen=True)
class Intrinsics:
    """fx, fy, cx, cy in pixels of the full image; `source` says where they came from."""

    fx: float
    fy: float
    cx: float
    cy: float
    source: str

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float32 pixel intrinsics."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float32)

    def to_json(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "source": self.source}


def default_intrinsics(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> Intrinsics:
    """Square pixels, principal point at the image centre, horizontal FOV `hfov_deg`."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return Intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, f"default ({hfov_deg:g} deg horizontal FOV)")


def parse_K(text: str) -> Intrinsics:
    """'fx,fy,cx,cy' (pixels) -> Intrinsics."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
        raise IntrinsicsError(f"--K {text!r}: expected four finite numbers fx,fy,cx,cy with fx, fy > 0")
    return Intrinsics(*values, source="--K")


def load_calibration(path: str | Path) -> Intrinsics:
    """Colour intrinsics from a DexYCB `intrinsics/<serial>_<W>x<H>.yml` (block `color`: fx, fy, ppx, ppy)."""
    try:
        K = load_intrinsics(path)
    except DexYCBError as exc:
        raise IntrinsicsError(str(exc)) from exc
    return Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), source=f"calib {path}")
