"""Contact labels (src/amt/data/contacts.py) against an independent brute-force computation."""

from __future__ import annotations

import numpy as np

from amt.data.contacts import contact_labels, hand_surface, pose_points
from amt.geometry.hand_surface import num_skeleton_points


def _brute_force(hand: np.ndarray, objects: list[np.ndarray], threshold_mm: float):
    in_contact, points, distance = [], [], []
    for obj in objects:
        best, best_point = np.inf, np.zeros(3)
        for p in obj:
            for h in hand:
                d = float(np.sqrt(((p.astype(np.float64) - h) ** 2).sum()))
                if d < best:
                    best, best_point = d, p
        hit = best <= threshold_mm / 1000.0
        in_contact.append(hit)
        points.append(best_point if hit else np.zeros(3))
        distance.append(best)
    return np.array(in_contact), np.array(points), np.array(distance)


def test_contact_labels_match_a_brute_force_loop() -> None:
    rng = np.random.default_rng(0)
    hand = rng.normal(0, 0.03, size=(60, 3)) + [0, 0, 0.6]
    objects = []
    for offset in (0.0, 0.02, 0.05, 0.3):  # overlapping, near, farther, far away
        centre = hand[rng.integers(len(hand))] + rng.normal(size=3) / np.sqrt(3) * offset
        objects.append((rng.normal(0, 0.01, size=(80, 3)) + centre).astype(np.float32))
    objects.append(np.zeros((0, 3), np.float32))  # object without a pose
    for threshold in (5.0, 10.0, 30.0):
        got = contact_labels(hand, objects, threshold)
        want_contact, want_points, want_distance = _brute_force(hand, objects, threshold)
        np.testing.assert_array_equal(got.in_contact, want_contact)
        np.testing.assert_allclose(got.points, want_points, atol=1e-7)
        np.testing.assert_allclose(got.distance, want_distance, rtol=1e-5)
    assert got.in_contact[:1].all() and not got.in_contact[3:].any()


def test_threshold_is_in_millimetres() -> None:
    hand = np.zeros((1, 3))
    near = np.array([[0.0, 0.0, 0.0095]], np.float32)
    far = np.array([[0.0, 0.0, 0.0105]], np.float32)
    got = contact_labels(hand, [near, far], threshold_mm=10.0)
    np.testing.assert_array_equal(got.in_contact, [True, False])
    np.testing.assert_allclose(got.points[0], near[0])
    np.testing.assert_array_equal(got.points[1], 0.0)


def test_hand_surface_prefers_mano_vertices_and_falls_back_to_the_skeleton() -> None:
    joints = np.random.default_rng(1).normal(size=(21, 3)).astype(np.float32)
    surface = hand_surface(joints)
    assert surface.shape == (num_skeleton_points(), 3)
    np.testing.assert_allclose(surface[:21], joints)
    vertices = np.ones((778, 3), np.float32)
    np.testing.assert_array_equal(hand_surface(joints, vertices), vertices)


def test_pose_points_applies_rotation_then_translation() -> None:
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float64)
    out = pose_points(np.array([[1.0, 0.0, 0.0]]), R, np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(out, [[0.0, 1.0, 1.0]])
