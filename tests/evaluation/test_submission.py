"""HPE submission text files and BOP-2019 CSVs (amt.evaluation.submission)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from amt.data.dexycb import DexYCB
from amt.data.testing import write_fake_dexycb
from amt.data.ycb import BOP_OFFSETS_MM
from amt.evaluation.metrics import hpe_metrics
from amt.evaluation.submission import (
    BOP_HEADER,
    BopEstimate,
    read_bop_csv,
    read_hpe_submission,
    score_hpe_submission,
    write_bop_csv,
    write_hpe_submission,
)


def test_hpe_submission_round_trip_in_millimetres(tmp_path):
    rng = np.random.default_rng(0)
    joints_m = rng.normal(0, 0.2, size=(5, 21, 3))
    path = write_hpe_submission(tmp_path / "sub.txt", [3, 1, 4, 7, 9], joints_m, units="m")
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split(",")) == 64 for line in lines)
    assert lines[0].startswith("3,")
    read = read_hpe_submission(path)
    assert list(read) == [3, 1, 4, 7, 9]
    np.testing.assert_allclose(read[4], joints_m[2] * 1000, atol=1e-6)


def test_repeated_index_keeps_the_last_line(tmp_path):
    path = tmp_path / "sub.txt"
    path.write_text("2," + ",".join(["1"] * 63) + "\n" + "2," + ",".join(["5"] * 63) + "\n")
    assert np.all(read_hpe_submission(path)[2] == 5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("0," + ",".join(["1"] * 62) + "\n", "expected 64 comma-separated numbers, found 63"),
        ("0," + ",".join(["1"] * 63) + "\n1," + ",".join(["x"] * 63) + "\n", "not a number"),
        ("0," + ",".join(["1"] * 63) + "\n\n", "expected 64 comma-separated numbers, found 1"),
    ],
)
def test_malformed_hpe_line_error_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    lineno = 1 if "found 63" in message else 2
    with pytest.raises(ValueError, match=f"bad.txt:{lineno}: {message}"):
        read_hpe_submission(path)


@pytest.fixture(scope="module")
def hand_split(tmp_path_factory):
    root = write_fake_dexycb(
        tmp_path_factory.mktemp("sub"), subjects=[6], sequences_per_subject=1, frames=3, no_hand_every=3, images=False
    )
    return DexYCB(root, "s1_val", load_image=False)


def test_score_submission_matches_direct_metrics_and_skips_invalid_hands(hand_split, tmp_path):
    ds = hand_split
    gt = np.stack([ds[i]["joint_3d"] for i in range(len(ds))])
    valid = np.array([ds[i]["hand_valid"] for i in range(len(ds))])
    assert valid.sum() == 16 and len(ds) == 24
    rng = np.random.default_rng(1)
    pred = gt + rng.normal(0, 0.01, size=gt.shape)
    path = write_hpe_submission(tmp_path / "s.txt", np.arange(len(ds)), pred, decimals=9)
    got = score_hpe_submission(path, ds)
    want = hpe_metrics(pred[valid] * 1000, (gt[valid] * np.float32(1000)).astype(np.float64))
    for a in want:
        assert got[a]["mpjpe"] == pytest.approx(want[a]["mpjpe"], abs=1e-6)
        assert got[a]["auc"] == pytest.approx(want[a]["auc"], abs=1e-9)
    # Lines for invalid-hand samples may be left out; a valid one may not.
    only_valid = write_hpe_submission(tmp_path / "v.txt", np.flatnonzero(valid), pred[valid], decimals=9)
    assert score_hpe_submission(only_valid, ds)["absolute"]["mpjpe"] == pytest.approx(got["absolute"]["mpjpe"])
    first_valid = int(np.flatnonzero(valid)[0])
    dropped = write_hpe_submission(tmp_path / "d.txt", np.flatnonzero(valid)[1:], pred[valid][1:])
    with pytest.raises(ValueError, match=f"d.txt: 1 sample.*first index {first_valid}"):
        score_hpe_submission(dropped, ds)


def test_score_submission_accepts_a_ground_truth_mapping(tmp_path):
    gt = {0: np.zeros((21, 3)) + 0.5, 5: np.full((21, 3), -1.0)}
    path = write_hpe_submission(tmp_path / "m.txt", [0], np.full((1, 21, 3), 0.51))
    res = score_hpe_submission(path, gt)
    assert res["absolute"]["mpjpe"] == pytest.approx(np.sqrt(3) * 10, abs=1e-6)


def test_bop_csv_applies_offset_and_writes_millimetres(tmp_path):
    R = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()
    est = [
        BopEstimate(scene_id=3, im_id=8, obj_id=12, score=0.9, R=R, t=np.array([0.1, -0.05, 0.7])),
        BopEstimate(scene_id=3, im_id=8, obj_id=1, score=0.4, R=np.eye(3), t=np.zeros(3)),
    ]
    path = write_bop_csv(tmp_path / "bop.csv", est)
    text = path.read_text().splitlines()
    assert text[0] == BOP_HEADER and text[1].startswith("3,8,12,0.9,") and text[1].endswith(",-1")
    rows = read_bop_csv(path)
    np.testing.assert_allclose(rows[0]["R"], R, atol=0)
    o = np.array(BOP_OFFSETS_MM[12])
    want_t = np.array([100.0, -50.0, 700.0]) - np.array([sum(R[i, k] * o[k] for k in range(3)) for i in range(3)])
    np.testing.assert_allclose(rows[0]["t"], want_t, atol=1e-9)
    np.testing.assert_allclose(rows[1]["t"], -np.array(BOP_OFFSETS_MM[1]), atol=1e-12)
    assert rows[1]["time"] == -1


def test_bop_csv_dexycb_flavour_keeps_metres_and_model_frame(tmp_path):
    t = np.array([0.1, -0.05, 0.7])
    path = write_bop_csv(tmp_path / "d.csv", [BopEstimate(0, 4, 5, 1.0, np.eye(3), t)], bop_frame=False)
    np.testing.assert_array_equal(read_bop_csv(path)[0]["t"], t)


def test_malformed_bop_row_error_names_file_and_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(BOP_HEADER + "\n0,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 1,-1\n0,0,1,0.5,1 0 0,0 0 1,-1\n")
    with pytest.raises(ValueError, match=r"x.csv:3: R needs 9 values"):
        read_bop_csv(path)
