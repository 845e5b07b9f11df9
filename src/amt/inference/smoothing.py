"""Temporal smoothing of per-frame predictions for video input.

Two filters over arrays of any shape, one value per element:
- `EMAFilter`: exponential moving average, y_t = a x_t + (1 - a) y_{t-1}.
- `OneEuroFilter` (Casiez, Roussel, Vogel, CHI 2012): an EMA whose cutoff frequency rises with
  the signal's speed, so slow jitter is removed while fast motion lags little:
  cutoff = min_cutoff + beta * |dx/dt|, a(cutoff) = 1 / (1 + 1 / (2 pi cutoff dt)).
Quaternions are smoothed component-wise after flipping each to the hemisphere of the previous
output (q and -q are the same rotation) and renormalised.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

import numpy as np

from amt.inference.predictor import FramePrediction, project_points


class Filter(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class EMAFilter:
    """y_t = alpha * x_t + (1 - alpha) * y_{t-1}; the first sample passes unchanged."""

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._y: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        self._y = x.copy() if self._y is None else self.alpha * x + (1.0 - self.alpha) * self._y
        return self._y.copy()


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter at a fixed sample rate `freq` (Hz); parameters in the signal's units per second."""

    def __init__(self, freq: float, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if freq <= 0 or min_cutoff <= 0 or d_cutoff <= 0:
            raise ValueError("One-Euro freq, min_cutoff and d_cutoff must be > 0")
        self.dt = 1.0 / freq
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) / self.dt
        self._dx = _alpha(self.d_cutoff, self.dt) * dx + (1 - _alpha(self.d_cutoff, self.dt)) * self._dx
        a = _alpha(self.min_cutoff + self.beta * np.abs(self._dx), self.dt)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()


class QuaternionFilter:
    """Smooths unit quaternions (..., 4) with an inner filter, handling the q / -q ambiguity."""

    def __init__(self, inner: Filter) -> None:
        self.inner = inner
        self._last: np.ndarray | None = None

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if self._last is not None:
            q = np.where((q * self._last).sum(-1, keepdims=True) < 0, -q, q)
        out = self.inner(q)
        out = out / np.linalg.norm(out, axis=-1, keepdims=True).clip(1e-12)
        self._last = out
        return out.copy()


def make_filter(kind: str, fps: float) -> Filter:
    """'ema' or 'one-euro' -> a fresh filter for a signal sampled at `fps`.

    One-Euro defaults (min_cutoff 1 Hz, beta 10 Hz per m/s: a hand moving at 0.3 m/s is filtered at
    4 Hz) suit positions in metres.
    """
    if kind == "ema":
        return EMAFilter(alpha=0.5)
    if kind == "one-euro":
        return OneEuroFilter(freq=fps, min_cutoff=1.0, beta=10.0)
    raise ValueError(f"unknown smoothing {kind!r}; expected 'ema' or 'one-euro'")


class PredictionSmoother:
    """Smooths a stream of `FramePrediction`s: joints, and each object query's pose and contact point.

    An object query's filters restart when its class changes or it was not detected in the
    previous frame, so two different objects are never blended. 2D positions are re-projected
    from the smoothed 3D with the frame's K.
    """

    def __init__(self, kind: str, fps: float) -> None:
        self.kind, self.fps = kind, fps
        self._joints = make_filter(kind, fps)
        self._objects: dict[int, tuple[int, Filter, QuaternionFilter, Filter]] = {}

    def _new(self) -> Filter:
        return make_filter(self.kind, self.fps)

    def __call__(self, pred: FramePrediction) -> FramePrediction:
        joints = self._joints(pred.joints_3d).astype(np.float32)
        states, objects, contacts = {}, [], []
        contact_by_query = {c.query: c for c in pred.contacts}
        for obj in pred.objects:
            state = self._objects.get(obj.query)
            if state is None or state[0] != obj.class_id:
                state = (obj.class_id, self._new(), QuaternionFilter(self._new()), self._new())
            states[obj.query] = state
            t = state[1](obj.translation).astype(np.float32)
            q = state[2](obj.quat_wxyz).astype(np.float32)
            objects.append(replace(obj, translation=t, quat_wxyz=q, center_2d=project_points(t[None], pred.K)[0]))
            c = contact_by_query.get(obj.query)
            if c is not None:
                p = state[3](c.point).astype(np.float32)
                contacts.append(replace(c, point=p, point_2d=project_points(p[None], pred.K)[0]))
        self._objects = states
        return replace(
            pred, joints_3d=joints, joints_2d=project_points(joints, pred.K), objects=objects, contacts=contacts
        )
