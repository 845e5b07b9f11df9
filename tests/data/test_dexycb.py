"""Tests for amt.data.dexycb (reader, splits, robustness) and amt.data.testing (fake tree)."""

from __future__ import annotations

import numpy as np

from amt.data.dexycb import DexYCB


def test_fake_tree_samples_have_consistent_projection(fake_dexycb):
    ds = DexYCB(fake_dexycb, "s0_test")
    sample = ds[3]
    uvw = sample["joint_3d"].astype(np.float64) @ sample["K"].astype(np.float64).T
    np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], sample["joint_2d"], atol=1e-3)
    assert sample["color"].shape == (480, 640, 3) and sample["index"] == 3
