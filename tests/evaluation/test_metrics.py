"""amt.evaluation.metrics against independent oracles written here (loops, polar decomposition)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.spatial.transform import Rotation

from amt.evaluation.metrics import (
    PCK_THRESHOLDS_MM,
    accuracy_within_diameter,
    add,
    add_auc,
    add_s,
    hpe_metrics,
    hpe_table,
    joint_errors,
    pck,
    pck_curve,
    per_joint_mpjpe,
)

TOL_MM = 1e-6


# --------------------------------------------------------------------------- oracles
def _oracle_similarity_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Least-squares similarity (orthogonal Q, reflections allowed) via the polar decomposition."""
    mu_p, mu_g = pred.mean(0), gt.mean(0)
    p0, g0 = pred - mu_p, gt - mu_g
    M = g0.T @ p0  # sum_j g_j p_j^T
    if np.abs(M).max() < 1e-12 * max(1.0, np.abs(g0).max()):
        return np.tile(mu_g, (len(pred), 1))  # zero scale: everything collapses onto the centroid
    Q = np.real(M @ np.linalg.inv(sqrtm(M.T @ M)))  # orthogonal polar factor
    s = np.trace(Q.T @ M) / (p0**2).sum()
    return s * p0 @ Q.T + mu_g


def _oracle_hpe(pred: np.ndarray, gt: np.ndarray) -> dict[str, dict[str, float]]:
    n, j = gt.shape[:2]
    out = {}
    for name in ("absolute", "root-relative", "procrustes"):
        err = np.zeros((n, j))
        for i in range(n):
            p, g = pred[i], gt[i]
            if name == "root-relative":
                p, g = p - p[0], g - g[0]
            elif name == "procrustes":
                p = _oracle_similarity_align(p, g)
            for k in range(j):
                err[i, k] = np.sqrt(sum((p[k, d] - g[k, d]) ** 2 for d in range(3)))
        thresholds = list(np.linspace(0, 50, 100))  # the evaluator's exact values (not 50 * t / 99)
        aucs, means = [], []
        for k in range(j):
            curve = [sum(1 for i in range(n) if err[i, k] <= t) / n for t in thresholds]
            area = sum((thresholds[t + 1] - thresholds[t]) * (curve[t] + curve[t + 1]) / 2 for t in range(99))
            aucs.append(area / 50.0)
            means.append(sum(err[:, k]) / n)
        out[name] = {"mpjpe": sum(means) / j, "auc": sum(aucs) / j}
    return out


def _assert_hpe_close(got, want):
    for name in want:
        assert got[name]["mpjpe"] == pytest.approx(want[name]["mpjpe"], abs=TOL_MM)
        assert got[name]["auc"] == pytest.approx(want[name]["auc"], abs=1e-9)


def _hands(rng, n):
    return rng.normal(0, 40, size=(n, 21, 3)) + rng.normal(0, 300, size=(n, 1, 3))


# --------------------------------------------------------------------------- hand metrics
def test_hpe_metrics_match_loop_oracle_on_random_data():
    rng = np.random.default_rng(0)
    gt = _hands(rng, 12)
    pred = gt + rng.normal(0, 15, size=gt.shape)
    _assert_hpe_close(hpe_metrics(pred, gt), _oracle_hpe(pred, gt))


def test_procrustes_allows_reflections_and_similarity():
    rng = np.random.default_rng(1)
    gt = _hands(rng, 6)
    mirror = np.diag([-1.0, 1.0, 1.0])
    R = Rotation.random(6, random_state=2).as_matrix()
    pred = 2.5 * np.einsum("nij,nkj->nki", R @ mirror, gt) + rng.normal(0, 100, size=(6, 1, 3))
    res = hpe_metrics(pred, gt)
    assert res["procrustes"]["mpjpe"] < TOL_MM
    # Rounding leaves errors of ~1e-9 mm > 0, so only the first threshold (0 mm) misses: 1 - 0.5 * (50/99) / 50.
    assert res["procrustes"]["auc"] == pytest.approx(1 - 0.5 / 99, abs=1e-12)
    _assert_hpe_close(res, _oracle_hpe(pred, gt))


def test_degenerate_predictions_all_zero_and_all_same_point():
    rng = np.random.default_rng(3)
    gt = _hands(rng, 5)
    for pred in (np.zeros_like(gt), np.broadcast_to(gt[:, 7:8], gt.shape).copy()):
        res = hpe_metrics(pred, gt)
        _assert_hpe_close(res, _oracle_hpe(pred, gt))
        # Zero-scale Procrustes maps every joint to the ground-truth centroid.
        centroid_err = np.linalg.norm(gt - gt.mean(1, keepdims=True), axis=-1).mean()
        assert res["procrustes"]["mpjpe"] == pytest.approx(centroid_err, abs=TOL_MM)


def test_errors_exactly_on_thresholds_count_as_correct():
    n = 100
    gt = np.zeros((n, 21, 3))
    pred = np.zeros((n, 21, 3))
    pred[:, :, 0] = PCK_THRESHOLDS_MM[:, None]  # sample k errs by exactly threshold k on every joint
    err = joint_errors(pred, gt, "absolute")
    np.testing.assert_array_equal(err[:, 0], PCK_THRESHOLDS_MM)
    curve = pck_curve(err)
    np.testing.assert_allclose(curve, np.arange(1, n + 1) / n)
    assert pck(err, PCK_THRESHOLDS_MM[10]) == pytest.approx(11 / n)
    res = hpe_metrics(pred, gt)
    assert res["absolute"]["mpjpe"] == pytest.approx(25.0, abs=TOL_MM)
    _assert_hpe_close(res, _oracle_hpe(pred, gt))


def test_root_relative_includes_zero_root_term_and_metres_convert():
    rng = np.random.default_rng(4)
    gt = _hands(rng, 4)
    pred = gt + rng.normal(0, 5, size=gt.shape)
    err = joint_errors(pred, gt, "root-relative")
    assert np.all(err[:, 0] == 0)
    res_mm = hpe_metrics(pred, gt)
    res_m = hpe_metrics(pred / 1000, gt / 1000, units="m")
    _assert_hpe_close(res_m, res_mm)
    np.testing.assert_allclose(per_joint_mpjpe(pred, gt, "root-relative"), err.mean(0))
    assert per_joint_mpjpe(pred, gt).mean() == pytest.approx(res_mm["absolute"]["mpjpe"])


def test_torch_inputs_give_the_same_numbers():
    rng = np.random.default_rng(5)
    gt = _hands(rng, 3)
    pred = gt + rng.normal(0, 8, size=gt.shape)
    _assert_hpe_close(hpe_metrics(torch.from_numpy(pred), torch.from_numpy(gt)), hpe_metrics(pred, gt))
    R, t = torch.eye(3), torch.zeros(3)
    assert add(R, t + torch.tensor([0.01, 0, 0]), R, t, torch.ones(5, 3)) == pytest.approx(0.01)


def test_hpe_table_matches_toolkit_format():
    res = {
        "absolute": {"mpjpe": 80.63, "auc": 0.2173},
        "root-relative": {"mpjpe": 25.49, "auc": 0.5299},
        "procrustes": {"mpjpe": 8.21, "auc": 0.8359},
    }
    lines = hpe_table(res).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["alignment", "MPJPE (mm)", "AUC"]
    assert lines[1].endswith(":|") and len(lines) == 5
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["absolute", "80.6300", "0.2173"]
    assert "procrustes" in lines[4] and "8.2100" in lines[4] and "0.8359" in lines[4]


# --------------------------------------------------------------------------- object metrics
def test_add_and_add_s_match_brute_force():
    rng = np.random.default_rng(6)
    pts = rng.normal(0, 0.05, size=(60, 3))
    gt_R, pred_R = Rotation.random(2, random_state=7).as_matrix()
    gt_t, pred_t = np.array([0.1, 0.0, 0.8]), np.array([0.12, -0.01, 0.79])
    posed_gt = [gt_R @ x + gt_t for x in pts]
    posed_pred = [pred_R @ x + pred_t for x in pts]
    want_add = np.mean([np.linalg.norm(a - b) for a, b in zip(posed_pred, posed_gt, strict=True)])
    want_adds = np.mean([min(np.linalg.norm(g - p) for p in posed_pred) for g in posed_gt])
    assert add(pred_R, pred_t, gt_R, gt_t, pts) == pytest.approx(want_add, abs=1e-12)
    assert add_s(pred_R, pred_t, gt_R, gt_t, pts) == pytest.approx(want_adds, abs=1e-12)
    assert add_s(pred_R, pred_t, gt_R, gt_t, pts) <= add(pred_R, pred_t, gt_R, gt_t, pts)


def test_add_s_ignores_a_symmetry_of_the_model():
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    ring = np.stack([0.05 * np.cos(angles), 0.05 * np.sin(angles), np.zeros_like(angles)], 1)
    R = Rotation.from_euler("z", 30, degrees=True).as_matrix()  # maps the ring onto itself
    t = np.array([0.0, 0.0, 0.5])
    assert add_s(R, t, np.eye(3), t, ring) < 1e-12
    assert add(R, t, np.eye(3), t, ring) > 0.02


def _oracle_voc_auc(errors, max_threshold=0.1):
    e = sorted(x if np.isfinite(x) and x <= max_threshold else np.inf for x in errors)
    n = len(e)
    area, prev_x = 0.0, 0.0
    acc = 0.0
    for k in range(n):
        if not np.isfinite(e[k]):
            break
        acc = (k + 1) / n
        if e[k] != prev_x:  # first slot holding a new distinct error
            area += (e[k] - prev_x) * acc
            prev_x = e[k]
    area += (max_threshold - prev_x) * acc
    return area / max_threshold


def test_add_auc_matches_hand_computed_and_loop_oracle():
    # errors 0.01, 0.02 found; one miss; one above 0.1 m: area .01*.25 + .01*.5 + .08*.5 = .0475.
    assert add_auc([0.02, np.inf, 0.01, 0.2]) == pytest.approx(0.475, abs=1e-12)
    rng = np.random.default_rng(8)
    errs = np.concatenate([rng.uniform(0, 0.12, 40), [np.inf] * 5, [0.05, 0.05, 0.05, 0.1, 0.0]])
    assert add_auc(errs) == pytest.approx(_oracle_voc_auc(errs), abs=1e-12)
    assert add_auc(torch.tensor(errs)) == pytest.approx(_oracle_voc_auc(errs), abs=1e-12)


def test_add_auc_edge_cases():
    assert add_auc([0.0, 0.0]) == pytest.approx(1.0)
    assert add_auc([np.inf, 0.3]) == 0.0
    # VOC-style: from 0 to the first error the curve already takes that error's accuracy.
    assert add_auc([0.1]) == pytest.approx(1.0)  # exactly at the limit still counts as found
    assert add_auc([0.05]) == pytest.approx(1.0)
    assert add_auc([0.05, np.inf]) == pytest.approx(0.5)
    assert add_auc([0.02, 0.04, 0.04, 0.06]) == pytest.approx((0.02 * 0.25 + 0.02 * 0.5 + 0.02 * 1 + 0.04 * 1) / 0.1)


def test_accuracy_within_diameter_is_strict():
    errors = np.array([0.05, 0.0499, 0.2, np.inf])
    assert accuracy_within_diameter(errors, 0.5) == pytest.approx(0.25)
    assert accuracy_within_diameter(errors, [0.5, 0.5, 3.0, 1.0]) == pytest.approx(0.5)
    assert accuracy_within_diameter([0.5], [1.0], fraction=0.5) == 0.0
