"""HO-3D metrics (scorer conventions) and the official submission file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from amt.cli import main as amt_main
from amt.data.dataset import open_dataset
from amt.data.testing_ho3d import write_fake_ho3d
from amt.evaluation.ho3d import (
    HO3DSubmissionError,
    ho3d_metrics,
    read_evaluation_list,
    read_ho3d_submission,
    write_ho3d_submission,
)
from amt.evaluation.submission import submission_writer, write_hpe_submission
from amt.geometry.mano import write_fake_mano_pickle
from amt.models import build_model


@pytest.fixture(scope="module")
def ho3d_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ho3d")
    return root, write_fake_ho3d(root, "v3", frames=2, seed=2)


def _train_as_evaluation(root: Path) -> tuple[list[str], np.ndarray]:
    """The train split's names and ground-truth joints (OpenCV, DexYCB order) as if predicted."""
    data = open_dataset("ho3d", root, "train", load_image=False)
    return list(data.names), np.stack([data[i]["joint_3d"] for i in range(len(data))]).astype(np.float64)


def test_pred_json_has_the_official_structure_order_and_frame(ho3d_root, tmp_path):
    root, written = ho3d_root
    names, joints = _train_as_evaluation(root)
    order = list(written["train"])  # the list file's order
    shuffled = np.random.default_rng(0).permutation(len(names))
    mano = write_fake_mano_pickle(tmp_path / "MANO_RIGHT.pkl", seed=0)
    archive = write_ho3d_submission(
        tmp_path / "sub", [names[k] for k in shuffled], joints[shuffled], order, mano_file=mano
    )
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == ["pred.json"]
        pred = json.loads(zf.read("pred.json"))
    assert isinstance(pred, list) and len(pred) == 2 and len(pred[0]) == len(pred[1]) == len(order)
    assert all(np.asarray(j).shape == (21, 3) for j in pred[0]) and all(
        np.asarray(v).shape == (778, 3) for v in pred[1]
    )
    for k, name in enumerate(order):  # evaluation.txt order, HO-3D joint order, OpenGL frame: the meta's own values
        np.testing.assert_allclose(pred[0][k], written["train"][name]["handJoints3D"], atol=1e-6)
    assert (np.asarray(pred[0])[..., 2] < 0).all() and (np.asarray(pred[1])[..., 2] < 0).all()
    joints_back, verts_back = read_ho3d_submission(archive)
    assert joints_back.shape == (6, 21, 3) and verts_back.shape == (6, 778, 3)


def test_submission_needs_vertices_or_a_mano_file_and_every_frame(ho3d_root, tmp_path):
    root, _ = ho3d_root
    names, joints = _train_as_evaluation(root)
    with pytest.raises(HO3DSubmissionError, match="778 MANO vertices"):
        write_ho3d_submission(tmp_path, names, joints, names)
    verts = np.zeros((len(names), 778, 3)) + joints[:, :1]
    with pytest.raises(HO3DSubmissionError, match=r"1 evaluation frame\(s\) have no prediction, first 'SM2/0001'"):
        write_ho3d_submission(tmp_path, names[:-1], joints[:-1], names, vertices=verts[:-1])
    with pytest.raises(HO3DSubmissionError, match="MANO file not found"):
        write_ho3d_submission(tmp_path, names, joints, names, mano_file=tmp_path / "MANO_RIGHT.pkl")


def test_the_benchmark_root_joint_moves_the_hand(ho3d_root, tmp_path):
    root, written = ho3d_root
    evaluation = read_evaluation_list(root)
    data = open_dataset("ho3d", root, "evaluation", load_image=False)
    roots = np.stack([data[i]["root_joint"] for i in range(len(data))])
    joints = np.random.default_rng(1).normal(0, 0.05, size=(len(data), 21, 3)) + [0, 0, 0.5]
    verts = np.zeros((len(data), 778, 3)) + [0, 0, 0.5]
    write_ho3d_submission(tmp_path, evaluation, joints, evaluation, vertices=verts, roots=roots)
    pred_joints, _ = read_ho3d_submission(tmp_path / "pred.json")
    for k, name in enumerate(evaluation):
        np.testing.assert_allclose(pred_joints[k, 0], written["evaluation"][name]["handJoints3D"], atol=1e-6)


def test_submission_writer_is_chosen_by_format():
    assert submission_writer("dexycb") is write_hpe_submission
    assert submission_writer("ho3d") is write_ho3d_submission
    with pytest.raises(ValueError, match="'folder' has no benchmark"):
        submission_writer("folder")


def _gt(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 0.04, size=(n, 21, 3)) + [0.0, 0.0, -0.5]
    verts = rng.normal(0, 0.04, size=(n, 778, 3)) + [0.0, 0.0, -0.5]
    return joints, verts


def test_a_prediction_equal_to_the_ground_truth_scores_zero():
    joints, verts = _gt()
    m = ho3d_metrics(joints, joints, verts, verts)
    for group in (m["joints"], m["mesh"]):
        assert group["mean_mm"] == 0.0 and group["auc"] == 1.0
    assert m["joints"]["scale_translation"]["mean_mm"] == pytest.approx(0.0, abs=1e-9)  # float rounding only
    # Procrustes normalises by (norm + 1e-8) as the scorer does: zero up to that epsilon (nanometres),
    # which the first PCK threshold (0 m, "<=") does not forgive: the AUC loses half of 1 of 99 intervals
    for group in (m["joints"]["procrustes"], m["mesh"]["procrustes"]):
        assert group["mean_mm"] == pytest.approx(0.0, abs=1e-4) and group["auc"] == pytest.approx(1 - 0.5 / 99)
    assert m["f_score"] == pytest.approx({"5mm": 1.0, "15mm": 1.0, "aligned_5mm": 1.0, "aligned_15mm": 1.0})


def _independent_auc(err_m: np.ndarray) -> float:
    """Per keypoint: PCK at 100 thresholds in [0, 0.05] m, trapezoid area / 0.05; then the mean."""
    t = np.linspace(0.0, 0.05, 100)
    areas = []
    for k in range(err_m.shape[1]):
        pck = [np.mean(err_m[:, k] <= x) for x in t]
        areas.append(sum((pck[i] + pck[i + 1]) / 2 * (t[i + 1] - t[i]) for i in range(99)) / 0.05)
    return float(np.mean(areas))


def _independent_f(gt: np.ndarray, pred: np.ndarray, th: float) -> float:
    d = np.linalg.norm(gt[:, None] - pred[None], axis=-1)
    precision, recall = np.mean(d.min(1) < th), np.mean(d.min(0) < th)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_a_scale_and_translation_perturbed_prediction_scores_the_independent_value():
    joints, verts = _gt(n=5, seed=3)
    s, t = 1.1, np.array([0.004, -0.003, 0.006])
    pj, pv = s * joints + t, s * verts + t
    m = ho3d_metrics(pj, joints, pv, verts)
    err = np.linalg.norm(pj - joints, axis=-1)
    assert m["joints"]["mean_mm"] == pytest.approx(1000 * err.mean(), rel=1e-9)
    assert m["joints"]["auc"] == pytest.approx(_independent_auc(err), rel=1e-9)
    verr = np.linalg.norm(pv - verts, axis=-1)
    assert m["mesh"]["mean_mm"] == pytest.approx(1000 * verr.mean(), rel=1e-9)
    for th, key in ((0.005, "5mm"), (0.015, "15mm")):
        expected = np.mean([_independent_f(g, p, th) for g, p in zip(verts, pv, strict=True)])
        assert m["f_score"][key] == pytest.approx(expected, abs=1e-12)
        assert m["f_score"][f"aligned_{key}"] == pytest.approx(1.0)
    # every alignment undoes a similarity (Procrustes up to the scorer's 1e-8 normalisation epsilon)
    for group in (m["joints"]["procrustes"], m["joints"]["scale_translation"], m["mesh"]["procrustes"]):
        assert group["mean_mm"] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 < m["f_score"]["5mm"] < 1.0 and m["joints"]["mean_mm"] > 5.0  # the perturbation is felt


def test_scale_translation_alignment_uses_the_wrist_and_joint_4():
    joints, _ = _gt(n=1, seed=5)
    pred = joints.copy()
    pred[0, 4] = pred[0, 0] + 2 * (joints[0, 4] - joints[0, 0])  # only the reference bone is twice as long
    m = ho3d_metrics(pred, joints)
    rel = (pred[0] - pred[0, 0]) / 2 + joints[0, 0]  # the scorer halves the whole hand about the wrist
    assert m["joints"]["scale_translation"]["mean_mm"] == pytest.approx(
        1000 * np.linalg.norm(rel - joints[0], axis=-1).mean(), rel=1e-9
    )


def test_amt_eval_writes_the_challenge_zip_for_the_evaluation_split(ho3d_root, tmp_path, capsys):
    root, _ = ho3d_root
    build_model("tiny", image_size=112).save_pretrained(tmp_path / "ckpt")
    args = ["eval", str(tmp_path / "ckpt"), "--data", str(root), "--format", "ho3d", "--split", "evaluation"]
    args += ["--device", "cpu", "--workers", "1", "--cache", str(tmp_path / "cache")]
    assert amt_main(args) == 1  # no MANO file: one line saying why
    assert "778 MANO vertices" in capsys.readouterr().err
    mano = write_fake_mano_pickle(tmp_path / "MANO_RIGHT.pkl", seed=0)
    assert amt_main([*args, "--mano", str(mano), "--out", str(tmp_path / "out")]) == 0
    joints, verts = read_ho3d_submission(tmp_path / "out" / "pred.zip")
    assert joints.shape == (len(read_evaluation_list(root)), 21, 3) and verts.shape[1:] == (778, 3)
    assert (joints[..., 2] < 0).all()  # moved onto the benchmark's root joints, OpenGL frame
