"""Tests for the shared geometry modules: rotations, camera, procrustes, hand skeleton and surface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from amt.data.transforms import crop_intrinsics_for_box
from amt.geometry.camera import crop_intrinsics, project, unproject
from amt.geometry.hand_skeleton import (
    BONES,
    FINGER_JOINTS,
    JOINT_NAMES,
    MANOPTH_TO_DEXYCB,
    MCP_JOINTS,
    NON_TIP_JOINTS,
    PARENTS,
    TIP_JOINTS,
)
from amt.geometry.hand_surface import num_skeleton_points, skeleton_surface_points
from amt.geometry.procrustes import procrustes_align
from amt.geometry.rotations import (
    axis_angle_to_matrix,
    geodesic_angle,
    matrix_to_axis_angle,
    matrix_to_quat_wxyz,
    matrix_to_rot6d,
    quat_wxyz_to_matrix,
    rot6d_to_matrix,
    rotation_about_z,
)

torch.manual_seed(0)


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(Rotation.random(n, random_state=seed).as_matrix())


# --------------------------------------------------------------------------- rotations
def test_quaternion_round_trip_and_scipy_agreement():
    R = _random_rotations(16)
    q = matrix_to_quat_wxyz(R)
    assert torch.all(q[:, 0] >= 0)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(16, dtype=R.dtype))
    torch.testing.assert_close(quat_wxyz_to_matrix(q), R)
    xyzw = Rotation.from_matrix(R.numpy()).as_quat()
    q_scipy = torch.from_numpy(np.where(xyzw[:, 3:] < 0, -xyzw, xyzw)[:, [3, 0, 1, 2]])
    torch.testing.assert_close(q, q_scipy)


def test_rot6d_round_trip_and_gram_schmidt_of_noisy_input():
    R = _random_rotations(8, seed=1)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(R)), R)
    noisy = rot6d_to_matrix(matrix_to_rot6d(R) * 3 + 0.1 * torch.randn(8, 6, dtype=R.dtype))
    torch.testing.assert_close(noisy @ noisy.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand(8, 3, 3))
    torch.testing.assert_close(torch.linalg.det(noisy), torch.ones(8, dtype=R.dtype))


def test_axis_angle_matches_scipy_and_round_trips():
    v = torch.randn(10, 3, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(10, 1, dtype=torch.float64) * 3.0
    R = axis_angle_to_matrix(v)
    torch.testing.assert_close(R, torch.from_numpy(Rotation.from_rotvec(v.numpy()).as_matrix()))
    torch.testing.assert_close(matrix_to_axis_angle(R), v)


def test_geodesic_angle_of_rotation_about_z():
    angles = torch.tensor([0.0, 0.3, -1.2, 3.0], dtype=torch.float64)
    Rz = rotation_about_z(angles)
    torch.testing.assert_close(geodesic_angle(torch.eye(3, dtype=torch.float64).expand(4, 3, 3), Rz), angles.abs())
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(Rz[1] @ x, torch.tensor([math.cos(0.3), math.sin(0.3), 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- camera
def _K(batch: int = 1) -> torch.Tensor:
    K = torch.tensor([[600.0, 0.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K.expand(batch, 3, 3).clone()


def test_project_unproject_round_trip_and_pinhole_formula():
    pts = torch.rand(2, 7, 3, dtype=torch.float64) * torch.tensor([0.4, 0.3, 1.0], dtype=torch.float64) + torch.tensor(
        [-0.2, -0.15, 0.4], dtype=torch.float64
    )
    K = _K(2)
    uv = project(pts, K)
    torch.testing.assert_close(uv[..., 0], 600.0 * pts[..., 0] / pts[..., 2] + 320.0)
    torch.testing.assert_close(uv[..., 1], 610.0 * pts[..., 1] / pts[..., 2] + 240.0)
    torch.testing.assert_close(unproject(uv, pts[..., 2], K), pts)


def test_crop_intrinsics_maps_pixels_like_the_crop():
    pts = torch.tensor([[[0.05, -0.02, 0.6], [-0.1, 0.08, 0.9]]], dtype=torch.float64)
    K = _K()
    box = torch.tensor([[250.0, 180.0, 160.0, 160.0]], dtype=torch.float64)
    Kc = crop_intrinsics(K, box, 224)
    uv_full = project(pts, K)
    # pixel-centre convention: the box's pixel edges x0 - 0.5 .. x0 + 160 - 0.5 become the crop's
    # edges -0.5 .. 223.5
    expected = (uv_full - box[:, None, :2] + 0.5) * 224 / 160 - 0.5
    torch.testing.assert_close(project(pts, Kc), expected)
    # and the function agrees with the cache's helper, which resamples pixels that way
    Kc_box = crop_intrinsics_for_box(K[0].numpy(), (250, 180, 160), 224)
    np.testing.assert_allclose(Kc[0].numpy(), Kc_box, rtol=1e-6, atol=1e-4)


# --------------------------------------------------------------------------- procrustes
def test_procrustes_recovers_similarity_transforms_including_reflections():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 21, 3))
    Q = Rotation.random(4, random_state=3).as_matrix()
    Q[1] = Q[1] @ np.diag([1.0, 1.0, -1.0])  # a reflection
    pred = 0.3 * np.einsum("nij,nkj->nki", Q, gt) + rng.normal(size=(4, 1, 3))
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-7)


def test_procrustes_is_the_least_squares_similarity():
    rng = np.random.default_rng(1)
    gt, pred = rng.normal(size=(1, 21, 3)), rng.normal(size=(1, 21, 3))
    aligned = procrustes_align(pred, gt)
    best = np.sum((aligned - gt) ** 2)
    for _ in range(20):  # any perturbed similarity does worse
        Q = Rotation.from_rotvec(rng.normal(scale=0.05, size=3)).as_matrix()
        centroid = aligned.mean(1, keepdims=True)
        other = (1 + rng.normal(scale=0.02)) * (aligned - centroid) @ Q.T + centroid + rng.normal(scale=0.01, size=3)
        assert np.sum((other - gt) ** 2) >= best
    assert procrustes_align(np.zeros((1, 21, 3)), gt) == pytest.approx(
        np.broadcast_to(gt.mean(1, keepdims=True), gt.shape)
    )


# --------------------------------------------------------------------------- hand skeleton and surface
def test_skeleton_tables_are_consistent():
    assert len(JOINT_NAMES) == len(PARENTS) == 21 and len(BONES) == 20
    assert PARENTS[0] == -1 and all(0 <= p < c for c, p in enumerate(PARENTS) if c)
    assert [JOINT_NAMES[j] for j in TIP_JOINTS] == [f"{f}_tip" for f in ("thumb", "index", "middle", "ring", "little")]
    assert all(PARENTS[j] == 0 for j in MCP_JOINTS) and len(NON_TIP_JOINTS) == 16
    assert all(JOINT_NAMES[j].startswith(name) for name, js in FINGER_JOINTS.items() for j in js)
    assert sorted(MANOPTH_TO_DEXYCB) == list(range(21))


def test_skeleton_surface_points_lie_on_bones_in_fixed_order():
    joints = torch.randn(2, 3, 21, 3)
    pts = skeleton_surface_points(joints, per_bone=3)
    assert pts.shape == (2, 3, num_skeleton_points(3), 3) == (2, 3, 81, 3)
    torch.testing.assert_close(pts[..., :21, :], joints)
    p, c = BONES[5]
    torch.testing.assert_close(
        pts[..., 21 + 5 * 3 + 1, :], joints[..., p, :] + 0.5 * (joints[..., c, :] - joints[..., p, :])
    )
