"""Symmetric poses about the symmetry centre: the loss, the matching cost and the evaluator agree.

The visually identical pose of (R, t) under a symmetry S about the centre c is
(R S, t + R (I - S) c). For every symmetric class it must cost nothing in the loss's rotation and
position terms, change no matching cost and have zero evaluator rotation (and position) error;
the same pose displaced by the offset it would get if turned about the model origin must not.
Run with the centres computed from the demo's meshes (../shared/data/ycb_models, skipped when
absent) and with hand-made centres (always).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from amt.data.object_models import ObjectModels
from amt.data.object_tables import CONTINUOUS_SYMMETRY_AXIS, SYMMETRY_ROTATIONS
from amt.data.symmetry import SYMMETRIC_CLASSES, ObjectSymmetries
from amt.data.ycb import NUM_CLASSES, SYMMETRIC_IDS
from amt.evaluation.evaluator import Predictions
from amt.evaluation.objects import object_instances
from amt.geometry.rotations import axis_angle_to_matrix, matrix_to_quat_wxyz
from amt.models.matching import MatchCost, pair_costs
from amt.testing import random_batch
from amt.training.losses import AMTLoss, LossConfig

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ycb_models"


def _handmade() -> ObjectSymmetries:
    """The tables with centres 3-9 cm off the model origin and the bowl's axis tilted and offset."""
    base = ObjectSymmetries.from_tables()
    centres = base.centres.clone()
    g = torch.Generator().manual_seed(5)
    for cid in SYMMETRIC_CLASSES:
        centres[cid] = 0.03 + 0.06 * torch.rand(3, generator=g)
    axes = base.axes.clone()
    axes[13] = torch.nn.functional.normalize(torch.tensor([0.2, -0.1, 1.0]), dim=0)
    return ObjectSymmetries(base.rotations, centres, axes, "hand-made")


def _mesh_symmetries() -> ObjectSymmetries:
    if not MODELS.is_dir():
        pytest.skip(f"{MODELS} not available (../shared/data is absent)")
    return ObjectSymmetries.from_models(MODELS)


@pytest.fixture(params=["handmade", "meshes"])
def symmetries(request) -> ObjectSymmetries:
    return _handmade() if request.param == "handmade" else _mesh_symmetries()


def _symmetries_of(sym: ObjectSymmetries, cid: int) -> list[torch.Tensor]:
    """Every non-identity symmetry rotation of the class in the model frame: the table's discrete
    ones, or for the continuous axis three turns about it."""
    if cid in CONTINUOUS_SYMMETRY_AXIS:
        a = sym.axes[cid]
        return [axis_angle_to_matrix(a * angle) for angle in (0.7, 2.0, math.pi)]
    return [S for S in SYMMETRY_ROTATIONS[cid][1:]]


def _cases(sym: ObjectSymmetries):
    """(class, R, t, same-looking pose, displaced pose) for every symmetric class and symmetry."""
    g = torch.Generator().manual_seed(0)
    for cid in SYMMETRIC_CLASSES:
        c = sym.centres[cid]
        for S in _symmetries_of(sym, cid):
            R = axis_angle_to_matrix(torch.randn(3, generator=g))
            t = torch.tensor([0.0, 0.0, 0.6]) + 0.05 * torch.randn(3, generator=g)
            same = (R @ S, t + R @ (c - S @ c))
            shift = R @ (c - S @ c)  # what the origin-centred rule would miss
            if shift.norm() < 1e-3:  # the turn leaves the origin in place: displace along x instead
                shift = torch.tensor([0.03, 0.0, 0.0])
            displaced = (R @ S, same[1] + shift)
            yield cid, R, t, same, displaced


def _loss_terms(sym: ObjectSymmetries, cid: int, R, t, pose) -> dict[str, torch.Tensor]:
    """AMTLoss terms of one GT object (class cid, pose R, t) predicted as `pose` by query 0."""
    batch = random_batch(1, image_size=32, slots=2)
    batch["obj_valid"] = torch.tensor([[True, False]])
    batch["obj_class"] = torch.tensor([[cid, 0]])
    batch["obj_R"][0, 0], batch["obj_t"][0, 0] = R, t
    logits = torch.full((1, 2, NUM_CLASSES + 1), -10.0)
    logits[0, 0, cid - 1] = logits[0, 1, NUM_CLASSES] = 10.0
    obj_R = torch.stack([pose[0], torch.eye(3)])[None]
    obj_t = torch.stack([pose[1], torch.tensor([1.0, 1.0, 1.0])])[None]
    outputs = {
        "joints_3d": batch["joints_3d"], "joints_3d_coarse": batch["joints_3d"], "joint_conf": torch.ones(1, 21),
        "obj_t": obj_t, "obj_quat": matrix_to_quat_wxyz(obj_R), "obj_logits": logits,
        "contact_points": torch.zeros(1, 2, 3), "contact_prob": torch.full((1, 2), 0.5),
        "contact_force": torch.zeros(1, 2, 3), "aux": {"obj_R": obj_R, "refine_steps": []},
    }  # fmt: skip
    # every valid object supervised: the random crop K need not see the object, this test is about symmetry
    return AMTLoss(LossConfig(object_margin=None), symmetries=sym)(outputs, batch)[1]


def test_identical_looking_pose_costs_nothing_in_loss_and_matching(symmetries: ObjectSymmetries) -> None:
    for cid, R, t, same, displaced in _cases(symmetries):
        terms = _loss_terms(symmetries, cid, R, t, same)
        assert terms["object_rotation"] < 1e-3 and terms["object_position"] < 1e-6, cid
        off = _loss_terms(symmetries, cid, R, t, displaced)
        assert off["object_rotation"] < 1e-3 and off["object_position"] > 5e-3, cid
        # the matching cost of three queries: the exact pose, the identical-looking one, the displaced one
        prob = torch.zeros(3, NUM_CLASSES + 1)
        prob[:, cid - 1] = 1.0
        pred_R, pred_t = torch.stack([R, same[0], displaced[0]]), torch.stack([t, same[1], displaced[1]])
        costs = pair_costs(prob, pred_R, pred_t, R[None], t[None], torch.tensor([cid]), MatchCost(), symmetries)[:, 0]
        assert abs(float(costs[1] - costs[0])) < 1e-3, cid
        assert float(costs[2] - costs[0]) > 0.05, cid


def test_evaluator_rotation_error_is_zero_for_identical_looking_poses() -> None:
    """The evaluator's per-object rows with the centres computed from the meshes it scores."""
    sym = _mesh_symmetries()
    cases = list(_cases(sym))
    n = len(cases)
    obj_prob = np.zeros((n, 2, NUM_CLASSES + 1))
    gt_R, gt_t = np.tile(np.eye(3), (n, 2, 1, 1)), np.zeros((n, 2, 3))
    pR, pt = np.tile(np.eye(3), (n, 2, 1, 1)), np.ones((n, 2, 3))
    cls = np.zeros((n, 2), np.int64)
    for i, (cid, R, t, same, displaced) in enumerate(cases):
        cls[i, 0], gt_R[i, 0], gt_t[i, 0] = cid, R.numpy(), t.numpy()
        pR[i, 0], pt[i, 0] = same[0].numpy(), same[1].numpy()
        pR[i, 1], pt[i, 1] = displaced[0].numpy(), displaced[1].numpy()
        obj_prob[i, 0, cid - 1], obj_prob[i, 1, NUM_CLASSES] = 1.0, 1.0
    pred = _predictions(pR, pt, obj_prob, gt_R, gt_t, cls)
    inst = object_instances(pred, ObjectModels(MODELS), num_points=256)
    assert inst["detected"].all()
    np.testing.assert_allclose(inst["r_err_deg"], 0.0, atol=0.05)
    np.testing.assert_allclose(inst["t_err"], 0.0, atol=1e-5)
    # the displaced poses (query 1) scored instead: rotation still 0, position clearly not
    pred.obj_prob[:, [0, 1]] = pred.obj_prob[:, [1, 0]]
    inst = object_instances(pred, ObjectModels(MODELS), num_points=256)
    np.testing.assert_allclose(inst["r_err_deg"], 0.0, atol=0.05)
    assert (inst["t_err"] > 5e-3).all()


def _predictions(pR, pt, obj_prob, gt_R, gt_t, cls) -> Predictions:
    n, q = obj_prob.shape[:2]
    valid = cls > 0
    return Predictions(
        index=np.arange(n), position=np.arange(n), meta=[{}] * n,
        joints_3d=np.zeros((n, 21, 3)), joint_conf=np.ones((n, 21)), obj_t=pt, obj_R=pR, obj_prob=obj_prob,
        contact_points=np.zeros((n, q, 3)), contact_prob=np.zeros((n, q)),
        gt={"obj_R": gt_R, "obj_t": gt_t, "obj_class": cls, "obj_valid": valid, "grasped": np.zeros(n, np.int64),
            "contact_valid": np.zeros_like(valid), "contact_points": np.zeros_like(gt_t),
            "hand_valid": np.ones(n, bool), "joints_3d": np.zeros((n, 21, 3))},
    )  # fmt: skip


def test_centres_and_axes_computed_from_the_meshes() -> None:
    """The computed centre is a fixed point of the meshes' symmetries (the surface maps onto itself
    about it), the bowl's axis is the model z axis 46 mm off the origin, and the meshes of the demo
    and the fallback tables differ (the wood block's centre is 10 cm above its model origin)."""
    sym = _mesh_symmetries()
    from scipy.spatial import cKDTree

    models = ObjectModels(MODELS)
    for cid in sorted(SYMMETRIC_IDS):
        pts = models.points(cid, 2000).astype(np.float64)
        c = sym.centres[cid].double().numpy()
        tree, diagonal = cKDTree(pts), np.linalg.norm(pts.max(0) - pts.min(0))
        for S in _symmetries_of(sym, cid):
            turned = (pts - c) @ S.double().numpy().T + c
            assert tree.query(turned)[0].mean() / diagonal < 0.035, cid
    bowl_axis, bowl_centre = sym.axes[13].numpy(), sym.centres[13].numpy()
    assert bowl_axis @ np.array([0.0, 0.0, 1.0]) > 0.99
    off_axis = bowl_centre - (bowl_centre @ bowl_axis) * bowl_axis
    assert np.linalg.norm(off_axis) == pytest.approx(0.046, abs=0.002)
    assert sym.centres[16, 2] == pytest.approx(0.103, abs=0.003)
    assert ObjectSymmetries.from_tables().centres.abs().max() == 0.0
