"""Similarity Procrustes alignment as the DexYCB / FreiHAND evaluator does it.

Reflections are allowed (no determinant correction), matching the official numbers.
"""

from __future__ import annotations

import numpy as np


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Align each predicted skeleton to its ground truth with a similarity transform.

    pred, gt: (N, J, 3), any unit (float64 recommended). Returns the aligned prediction
    (N, J, 3) in gt's units. Per sample: centre both, scale each to unit Frobenius norm
    (+1e-8), Q = U V^T from the SVD of the cross-covariance, scale = sum of singular
    values, then map back with gt's norm and centroid.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    mu_p, mu_g = pred.mean(axis=1, keepdims=True), gt.mean(axis=1, keepdims=True)
    p0, g0 = pred - mu_p, gt - mu_g
    norm_p = np.linalg.norm(p0, axis=(1, 2), keepdims=True) + 1e-8
    norm_g = np.linalg.norm(g0, axis=(1, 2), keepdims=True) + 1e-8
    p0, g0 = p0 / norm_p, g0 / norm_g
    cov = np.einsum("nji,njk->nik", g0, p0)  # (N, 3, 3) = g0^T p0
    U, s, Vt = np.linalg.svd(cov)
    # Rotation taking p0 onto g0 (column vectors): R = U V^T, applied as p0 @ R^T.
    R = U @ Vt
    scale = s.sum(axis=1)[:, None, None]
    aligned = scale * np.einsum("nij,nkj->nki", R, p0)
    return aligned * norm_g + mu_g
