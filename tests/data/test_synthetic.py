"""Acceptance tests of the synthetic DexYCB-format generator (`amt synth`).

The generated tree is read back with the project's DexYCB reader and object-model loader,
and every label is checked against an independent computation: numpy projection for
joint_2d, per-object re-renders and projected model points for seg, a depth test for the
hand's joints, and trimesh's exact point-triangle distances for grasp contact/penetration.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from scipy.spatial import cKDTree

from amt.data.dexycb import SERIALS, SUBJECTS, DexYCB
from amt.data.object_models import ObjectModels
from amt.data.synth import layout
from amt.data.synth.objects import ObjectLibrary
from amt.data.synth.scene import place_objects, synthesize_grasp
from amt.data.synthetic import generate
from amt.data.ycb import SEG_HAND
from amt.geometry import hand_model as hm
from amt.geometry.hand_skeleton import FINGER_JOINTS, FINGERS

REPO = Path(__file__).resolve().parents[2]
SHARED_MODELS = REPO.parent / "shared" / "data" / "ycb_models"


def _models_dir() -> Path:
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"{SHARED_MODELS} absent: the YCB meshes of ../shared/data are needed")
    return SHARED_MODELS


def test_same_seed_gives_identical_files_for_any_worker_count(tmp_path):
    # first in the file: no GL context exists yet in this process, so the pool can fork
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 16, seed=11, primitives=True, workers=1, left_fraction=0.5)
    generate(b, 16, seed=11, primitives=True, workers=2, left_fraction=0.5)
    generate(c, 8, seed=12, primitives=True, workers=1, left_fraction=0.5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".jpg"]) == 16
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    jpgs = [str(f) for f in files if f.suffix == ".jpg" and (c / f).is_file()]
    assert len(jpgs) == 8 and filecmp.cmpfiles(a, c, jpgs, shallow=False)[1], "another seed should change images"
    sides = {yaml.safe_load(m.read_text())["mano_sides"][0] for m in a.glob("*/*/meta.yml")}
    assert sides <= {"left", "right"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """80 images = 10 instants: subjects 0 and 2, sequences 0-4 each (s0 train, val and test)."""
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, 80, seed=3, models=_models_dir(), workers=1)
    return root


def _samples(root: Path):
    for split in ("s0_train", "s0_val", "s0_test"):
        yield from DexYCB(root, split, load_image=False)


def test_plan_covers_s0_splits_and_rounds_to_whole_instants():
    plans = layout.plan_dataset(80)
    assert sum(p.num_frames for p in plans) * 8 == 80
    assert [(p.subject, p.position) for p in plans] == [(0, i) for i in range(5)] + [(2, i) for i in range(5)]
    assert sum(p.num_frames for p in layout.plan_dataset(13)) == 2  # 13 images -> 2 instants = 16 images
    big = layout.plan_dataset(8 * 2500)
    assert len(big) == layout.MAX_SEQUENCES and sum(p.num_frames for p in big) == 2500
    for subject in range(10):  # positions within a subject are contiguous from 0
        pos = sorted(p.position for p in big if p.subject == subject)
        assert pos == list(range(len(pos)))


def test_reader_opens_every_s0_split_without_special_cases(dataset):
    sizes = {s: len(DexYCB(dataset, s, load_image=False)) for s in ("s0_train", "s0_val", "s0_test")}
    assert sizes == {"s0_train": 64, "s0_val": 8, "s0_test": 8}
    assert sorted(os.listdir(dataset / "models")) and all((dataset / s).is_dir() for s in SUBJECTS)
    sample = DexYCB(dataset, "s0_val")[0]
    assert sample["color"].shape == (480, 640, 3) and sample["color"].dtype == np.uint8
    models = ObjectModels(dataset / "models")
    for s in _samples(dataset):
        assert set(np.unique(s["seg"])) <= {0, SEG_HAND, *s["ycb_ids"]}
        assert s["obj_pose"].shape == (len(s["ycb_ids"]), 3, 4) and s["obj_pose_valid"].all()
        assert s["side"] == "right"
        for c in s["ycb_ids"]:
            assert models.points(c, n=16).shape == (16, 3)


def test_calibration_files_follow_dexycb(dataset):
    text = (dataset / "calibration" / "intrinsics" / f"{SERIALS[0]}_640x480.yml").read_text()
    assert "extrinsics: !!python/tuple" in text
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    fx = [DexYCB(dataset, "s0_val").intrinsics[s][0, 0] for s in SERIALS]
    cx = [DexYCB(dataset, "s0_val").intrinsics[s][0, 2] for s in SERIALS]
    assert np.allclose(fx, 616, atol=8) and np.allclose(cx, 308, atol=10) and np.std(fx) > 0
    meta = yaml.safe_load(next(dataset.glob("*/*/meta.yml")).read_text())
    assert set(meta) == {"serials", "num_frames", "ycb_ids", "ycb_grasp_ind", "mano_sides", "mano_calib", "extrinsics"}
    assert 2 <= len(meta["ycb_ids"]) <= 4 and meta["serials"] == list(SERIALS)
    extr = yaml.safe_load((dataset / "calibration" / f"extrinsics_{meta['extrinsics']}" / "extrinsics.yml").read_text())
    assert set(SERIALS) <= set(extr["extrinsics"])
    betas = yaml.safe_load((dataset / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml").read_text())
    assert len(betas["betas"]) == 10


def test_joint_2d_is_the_projection_of_joint_3d(dataset):
    n_hand = n_empty = 0
    for s in _samples(dataset):
        if not s["hand_valid"]:
            n_empty += 1
            assert (s["joint_3d"] == -1).all() and (s["joint_2d"] == -1).all() and (s["pose_m"] == 0).all()
            continue
        n_hand += 1
        K = s["K"].astype(np.float64)
        uvw = s["joint_3d"].astype(np.float64) @ K.T
        np.testing.assert_allclose(s["joint_2d"], uvw[:, :2] / uvw[:, 2:], atol=1e-3)
        # synthetic pose_m: wrist axis-angle, zeros, wrist position (documented, not MANO PCA)
        assert (s["pose_m"][3:48] == 0).all()
        np.testing.assert_allclose(s["pose_m"][48:], s["joint_3d"][0], atol=1e-6)
        depth = np.linalg.norm(s["joint_3d"][0])
        assert 0.3 < depth < 1.2, depth
    assert n_hand >= 40


@pytest.fixture(scope="module")
def alone(dataset):
    """Every third sample with each object re-rendered alone: (sample, masks {id: (H, W) bool},
    object depth (H, W) metres, inf where no object), from the files in the dataset only."""
    from amt.data.synth.render import Background, DrawItem, Light, Renderer

    renderer = Renderer()
    models = ObjectModels(dataset / "models")
    bg = Background(np.zeros((3, 3)), np.zeros(2), 1.0, 0.0, 1.0, 0.0, np.zeros(2), 0.0, None, 0.0, np.zeros(4))
    light = Light(np.array([0.0, 0.0, -1.0]), np.ones(3), 0.5, 0.0)
    out = []
    for k, s in enumerate(_samples(dataset)):
        if k % 3:
            continue
        masks, depth = {}, np.full(s["seg"].shape, np.inf)
        for i, c in enumerate(s["ycb_ids"]):
            if c not in renderer.meshes:
                mesh = models.mesh(c)
                renderer.add_mesh(
                    c, mesh.vertices[mesh.faces].reshape(-1, 3), mesh.face_normals.repeat(3, 0), None, None
                )
            mv = np.eye(4)
            mv[:3] = s["obj_pose"][i]
            _, seg = renderer.render(s["K"].astype(np.float64), [DrawItem(c, mv, 1, np.ones(3))], light, bg)
            masks[c] = seg > 0
            depth = np.minimum(depth, renderer.depth())
        out.append((s, masks, depth))
    renderer.release()
    return out


def test_seg_matches_each_object_rendered_alone_and_its_projected_points(dataset, alone):
    models = ObjectModels(dataset / "models")
    ious, point_hits = [], []
    for s, masks, _ in alone:
        K, seg = s["K"].astype(np.float64), s["seg"]
        for i, c in enumerate(s["ycb_ids"]):
            mask = masks[c]
            if mask.sum() < 200:
                continue
            occluders = (seg == SEG_HAND) | np.any([masks[o] for o in s["ycb_ids"] if o != c], axis=0)
            if (mask & occluders).sum() > 0.01 * mask.sum():
                continue
            region = seg == c
            ious.append((mask & region).sum() / (mask | region).sum())
            pts = models.points(c, n=512).astype(np.float64) @ s["obj_pose"][i, :, :3].T + s["obj_pose"][i, :, 3]
            uv = pts @ K.T
            uv = np.rint(uv[:, :2] / uv[:, 2:]).astype(int)
            inside = (uv[:, 0] >= 0) & (uv[:, 0] < 640) & (uv[:, 1] >= 0) & (uv[:, 1] < 480)
            if inside.mean() < 1.0:
                continue
            near = np.zeros_like(region)  # the label dilated by one pixel (points on the silhouette edge)
            near[1:-1, 1:-1] = np.any([region[1 + dy : 479 + dy, 1 + dx : 639 + dx]
                                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)  # fmt: skip
            point_hits.append(near[uv[:, 1], uv[:, 0]].mean())
    assert len(ious) >= 12 and len(point_hits) >= 6
    assert min(ious) >= 0.9, sorted(ious)[:5]
    assert min(point_hits) >= 0.99, sorted(point_hits)[:5]


def test_hand_seg_covers_every_joint_not_hidden_by_an_object(alone):
    checked = missed = 0
    for s, _, depth in alone:
        if not s["hand_valid"]:
            continue
        seg = s["seg"]
        for (u, v), z in zip(np.rint(s["joint_2d"]).astype(int), s["joint_3d"][:, 2], strict=True):
            if not (1 <= u < 639 and 1 <= v < 479) or depth[v, u] < z:
                continue
            checked += 1
            missed += not (seg[v - 1 : v + 2, u - 1 : u + 2] == SEG_HAND).any()
    assert checked >= 100
    assert missed == 0, f"{missed} of {checked} visible joints not on the hand's seg"


def _signed_distance_exact(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Exact point-to-triangle distance (trimesh), negative when the point lies clearly behind
    the nearest triangle (direction to it within 60 degrees of the inward normal).

    Only triangles whose centroid lies within (nearest-vertex distance + largest triangle
    size) can hold the nearest point, so only those pairs are evaluated.
    """
    d0, _ = cKDTree(mesh.vertices).query(points)
    tri = mesh.triangles
    size = np.linalg.norm(tri - tri.mean(axis=1, keepdims=True), axis=2).max()
    cands = cKDTree(tri.mean(axis=1)).query_ball_point(points, d0 + size)
    pi = np.repeat(np.arange(len(points)), [len(c) for c in cands])
    ti = np.concatenate([np.asarray(c, dtype=int) for c in cands])
    closest = trimesh.triangles.closest_point(tri[ti], points[pi])
    dist = np.linalg.norm(points[pi] - closest, axis=1)
    order = np.lexsort((dist, pi))
    first = order[np.r_[True, pi[order][1:] != pi[order][:-1]]]  # nearest pair per point
    side = np.einsum("ij,ij->i", points[pi[first]] - closest[first], mesh.face_normals[ti[first]])
    return np.where(side < -0.5 * dist[first], -dist[first], dist[first])


def test_grasps_touch_with_fingertips_and_barely_penetrate():
    """Bounds: per grasp >= 3 fingertip pads within 5 mm of the surface (median over the
    touching fingers < 2 mm), hand penetration into the object < 5 mm (exact distances)."""
    library = ObjectLibrary(_models_dir())
    tip_counts, contact_gaps, penetrations = [], [], []
    for k, class_id in enumerate([3, 14, 10, 21, 5, 18]):  # box, mug, banana, brick, bottle, marker
        rng = np.random.default_rng(100 + k)
        model = library.get(class_id)
        rot, trans = place_objects([model], 0, lifted=True, rng=rng)
        shape = hm.HandShape.sample(rng)
        hand, _ = synthesize_grasp(model, rot[0], trans[0], shape, 1.0, "grasp", [], rng)
        assert hand is not None
        mesh = hand.mesh_world()
        local = (mesh.positions - trans[0]) @ rot[0]  # world -> model frame
        pads = []
        for f in range(5):
            sel = (mesh.finger_of_vertex == f) & (mesh.segment_of_vertex == 2)
            pads.append(_signed_distance_exact(model.mesh, np.unique(local[sel], axis=0)).min())
        pads = np.array(pads)
        tip_counts.append(int((pads < 0.005).sum()))
        contact_gaps += list(pads[pads < 0.005])
        sd = _signed_distance_exact(model.mesh, np.unique(local, axis=0))
        penetrations.append(max(0.0, -sd.min()))
        # the tip joints themselves are within a fingertip radius (+5 mm) of the surface
        tips = (hand.joints()[[FINGER_JOINTS[n][3] for n in FINGERS]] - trans[0]) @ rot[0]
        assert np.sort(np.abs(_signed_distance_exact(model.mesh, tips)))[2] < 0.015
        if class_id in (3, 21):  # an approach: same placement rule, hand 3-10 cm off the surface
            away, _ = synthesize_grasp(model, rot[0], trans[0], shape, 1.0, "approach", [], rng)
            gap = _signed_distance_exact(
                model.mesh, np.unique((away.mesh_world().positions - trans[0]) @ rot[0], axis=0)
            )
            assert gap.min() > 0.02, gap.min()
    assert min(tip_counts) >= 3, tip_counts
    assert np.median(np.abs(contact_gaps)) < 0.002, contact_gaps
    assert max(penetrations) < 0.005, penetrations


def test_renderer_keeps_drawing_after_another_gl_context_came_and_went():
    from amt.data.synth.render import Background, DrawItem, Light, Renderer

    K = np.array([[616.0, 0, 308], [0, 616, 246], [0, 0, 1]])
    bg = Background(np.zeros((3, 3)), np.zeros(2), 1.0, 0.0, 1.0, 0.0, np.zeros(2), 0.0, None, 0.0, np.zeros(4))
    light = Light(np.array([0.0, 0.0, -1.0]), np.ones(3), 0.5, 0.0)
    quad = np.array([[-0.1, -0.1, 1.0], [0.1, -0.1, 1.0], [0.0, 0.1, 1.0]])
    a = Renderer()
    a.add_mesh("tri", quad, np.tile([0.0, 0.0, -1.0], (3, 1)), None, None)
    before = a.render(K, [DrawItem("tri", np.eye(4), 7, np.ones(3))], light, bg)[1]
    Renderer().release()
    after = a.render(K, [DrawItem("tri", np.eye(4), 7, np.ones(3))], light, bg)[1]
    a.release()
    assert (before == 7).sum() > 1000 and np.array_equal(before, after)


@pytest.mark.parametrize("side_sign", [1.0, -1.0])
def test_grasping_hand_has_the_requested_chirality_and_faces_the_object(side_sign):
    """(index MCP - wrist) x (little MCP - wrist) points out of the palm for a right hand and
    out of the back of the hand for a left one; the palm faces the grasped object."""
    library = ObjectLibrary(None)
    rng = np.random.default_rng(7)
    model = library.get(4)
    rot, trans = place_objects([model], 0, lifted=True, rng=rng)
    hand, _ = synthesize_grasp(model, rot[0], trans[0], hm.HandShape.sample(rng), side_sign, "grasp", [], rng)
    j = hand.joints()
    normal = np.cross(j[5] - j[0], j[17] - j[0])
    centre = rot[0] @ model.mesh.centroid + trans[0]
    assert np.sign(normal @ (centre - (j[0] + j[9]) / 2)) == side_sign


def test_left_hand_is_the_mirror_image_of_the_right():
    shape = hm.HandShape.sample(np.random.default_rng(0))
    pose = hm.HandPose(np.full((5, 3), 0.4), np.zeros(5))
    right = hm.forward_kinematics(shape, pose)
    assert right[4, 0] > 0 and right[20, 0] < 0  # thumb towards +x
    for f in range(5):  # bone lengths are the shape's
        chain = right[list(FINGER_JOINTS[FINGERS[f]])]
        np.testing.assert_allclose(np.linalg.norm(np.diff(chain, axis=0), axis=1), shape.lengths[f])
    lo_r, hi_r = (lambda p: (p.min(0), p.max(0)))(hm.hand_mesh(shape, right, 1.0).positions)
    lo_l, hi_l = (lambda p: (p.min(0), p.max(0)))(hm.hand_mesh(shape, hm.mirror_x(right), -1.0).positions)
    np.testing.assert_allclose([lo_l[0], hi_l[0]], [-hi_r[0], -lo_r[0]], atol=1.5e-3)  # x extent mirrored
    np.testing.assert_allclose([lo_l[1:], hi_l[1:]], [lo_r[1:], hi_r[1:]], atol=1.5e-3)


def test_mano_hand_labels_reproduce_from_pose_m_and_betas(tmp_path):
    """With --mano, pose_m (camera frame) + the subject's betas through the MANO layer give
    joint_3d back in every view (a fake MANO-format pickle: random model, real format)."""
    import torch

    from amt.geometry.mano import ManoLayer, write_fake_mano_pickle

    pkl = write_fake_mano_pickle(tmp_path / "MANO_RIGHT.pkl", seed=1)
    generate(tmp_path / "data", 8, seed=2, mano=pkl, primitives=True, workers=1)
    layer = ManoLayer.from_pickle(pkl)
    samples = [s for s in DexYCB(tmp_path / "data", "s0_train", load_image=False) if s["hand_valid"]]
    assert len(samples) == 8
    for s in samples:
        assert s["mano_betas_valid"] and np.abs(s["mano_betas"]).sum() > 0
        p = torch.as_tensor(s["pose_m"], dtype=torch.float32)[None]
        _, joints = layer(
            p[:, :3], layer.pca_to_hand_pose(p[:, 3:48]), torch.as_tensor(s["mano_betas"])[None], p[:, 48:]
        )
        np.testing.assert_allclose(joints[0].numpy(), s["joint_3d"], atol=2e-4)
