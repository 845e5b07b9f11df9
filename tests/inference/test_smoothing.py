"""Temporal filters: exact EMA, One-Euro behaviour, quaternion sign handling, per-object resets."""

from __future__ import annotations

import numpy as np
import pytest

from amt.inference.intrinsics import default_intrinsics
from amt.inference.predictor import ContactPrediction, FramePrediction, ObjectPrediction
from amt.inference.smoothing import EMAFilter, OneEuroFilter, PredictionSmoother, QuaternionFilter


def test_ema_matches_the_recurrence() -> None:
    f = EMAFilter(alpha=0.3)
    xs = np.random.default_rng(0).normal(size=(6, 2))
    y = xs[0]
    assert np.array_equal(f(xs[0]), xs[0])
    for x in xs[1:]:
        y = 0.3 * x + 0.7 * y
        np.testing.assert_allclose(f(x), y)
    with pytest.raises(ValueError):
        EMAFilter(alpha=0.0)


def test_one_euro_reduces_jitter_and_tracks_fast_motion() -> None:
    rng = np.random.default_rng(0)
    noisy = 0.5 + 0.005 * rng.normal(size=(200, 3))
    f = OneEuroFilter(freq=30, min_cutoff=1.0, beta=10.0)
    out = np.stack([f(x) for x in noisy])
    assert out[20:].std(0).max() < 0.5 * noisy[20:].std(0).min()
    # a fast ramp (1 m/s) is followed with a lag well under what a fixed 1 Hz EMA would give
    t = np.arange(60) / 30
    f = OneEuroFilter(freq=30, min_cutoff=1.0, beta=10.0)
    ramp = np.stack([f(np.array([v])) for v in t])[:, 0]
    slow = OneEuroFilter(freq=30, min_cutoff=1.0, beta=0.0)
    ramp_slow = np.stack([slow(np.array([v])) for v in t])[:, 0]
    assert abs(t[-1] - ramp[-1]) < 0.3 * abs(t[-1] - ramp_slow[-1])


def test_quaternion_filter_ignores_sign_flips() -> None:
    q = np.array([0.9, 0.1, 0.3, 0.2])
    q /= np.linalg.norm(q)
    f = QuaternionFilter(EMAFilter(alpha=0.5))
    f(q)
    out = f(-q)  # the same rotation: output must stay put, not average to zero
    np.testing.assert_allclose(out, q, atol=1e-12)


def _pred(joints: np.ndarray, class_id: int, t: np.ndarray) -> FramePrediction:
    K = default_intrinsics(640, 480).K
    obj = ObjectPrediction(0, class_id, "x", 0.9, np.array([1.0, 0, 0, 0]), t, np.zeros(2))
    contact = ContactPrediction(0, "x", t.copy(), np.zeros(2), 0.8, np.zeros(3))
    return FramePrediction(
        joints, np.zeros((21, 2)), np.ones(21), np.zeros(10), [obj], [contact], K, "t", (0, 0, 10), "t", (640, 480)
    )


def test_prediction_smoother_reprojects_and_resets_on_class_change() -> None:
    s = PredictionSmoother("ema", fps=30)
    j0 = np.full((21, 3), 0.5)
    s(_pred(j0, 3, np.array([0.0, 0.0, 0.6])))
    p = s(_pred(j0 + 0.1, 3, np.array([0.1, 0.0, 0.6])))
    np.testing.assert_allclose(p.joints_3d, j0 + 0.05, atol=1e-6)
    np.testing.assert_allclose(p.objects[0].translation, [0.05, 0.0, 0.6], atol=1e-6)
    uvw = p.joints_3d @ p.K.T
    np.testing.assert_allclose(p.joints_2d, uvw[:, :2] / uvw[:, 2:], rtol=1e-5)
    p = s(_pred(j0, 7, np.array([0.3, 0.0, 0.6])))  # another object in that query: no blending
    np.testing.assert_allclose(p.objects[0].translation, [0.3, 0.0, 0.6], atol=1e-6)
    np.testing.assert_allclose(p.contacts[0].point, [0.3, 0.0, 0.6], atol=1e-6)
