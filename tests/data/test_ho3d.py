"""HO-3D v2 / v3 on generated official trees: exact read-back against an independent conversion,
the OpenGL round trip, the restricted unpickler refusing code, bad files named, caches built."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from amt.data.cache import build_cache, open_cache
from amt.data.dataset import open_dataset
from amt.data.ho3d import (
    HO3DError,
    load_meta,
    opencv_to_opengl,
    opengl_to_opencv,
    rotation_opengl_to_opencv,
)
from amt.data.testing_ho3d import write_fake_ho3d, write_malicious_meta
from amt.data.ycb import YCB_CLASSES
from amt.geometry.hand_skeleton import JOINT_NAMES

# HO-3D's joint order, by name (MANO's 16 joints, then the five tips).
HO3D_NAMES = (
    ["wrist"]
    + [f"{f}_{p}" for f in ("index", "middle", "little", "ring", "thumb") for p in ("mcp", "pip", "dip")]
    + [f"{f}_tip" for f in ("thumb", "index", "middle", "ring", "little")]
)
FLIP = np.diag([1.0, -1.0, -1.0])  # OpenGL <-> OpenCV


@pytest.fixture(scope="module", params=["v2", "v3"])
def tree(request, tmp_path_factory) -> tuple[Path, str, dict]:
    root = tmp_path_factory.mktemp(f"ho3d_{request.param}")
    return root, request.param, write_fake_ho3d(root, request.param, frames=2, seed=1)


def test_official_layout_is_written(tree):
    root, version, written = tree
    ext = "png" if version == "v2" else "jpg"
    assert (root / "train.txt").read_text().splitlines()[0] == "ABF10/0000"
    assert (root / "train" / "ABF10" / "rgb" / f"0000.{ext}").is_file()
    assert (root / "train" / "ABF10" / "seg").is_dir() and (root / "evaluation" / "SM1" / "meta" / "0001.pkl").is_file()
    assert len(written["train"]) == 6 and len(written["evaluation"]) == 4


def test_tree_reads_back_exactly(tree):
    root, version, written = tree
    for split in ("train", "evaluation"):
        data = open_dataset("ho3d", root, split)
        assert data.version == version and data.joint_order == "ho3d" and data.splits == ("train", "evaluation")
        assert len(data) == len(written[split])
        for i, (name, meta) in enumerate(written[split].items()):
            s = data[i]
            seq, frame = name.split("/")
            assert (s["sequence"], s["frame"], s["index"]) == (seq, int(frame), i)
            assert s["color"].shape == (480, 640, 3) and s["color_file"].endswith(
                f"{frame}.{'png' if version == 'v2' else 'jpg'}"
            )
            np.testing.assert_array_equal(s["K"], meta["camMat"].astype(np.float32))
            np.testing.assert_array_equal(data.sample_intrinsics(i), meta["camMat"].astype(np.float32))
            assert s["ycb_ids"] == [next(c for c, n in YCB_CLASSES.items() if n == meta["objName"])]
            R = FLIP @ Rotation.from_rotvec(meta["objRot"][:, 0]).as_matrix()
            np.testing.assert_allclose(s["obj_pose"][0, :, :3], R, atol=1e-6)
            np.testing.assert_allclose(s["obj_pose"][0, :, 3], FLIP @ meta["objTrans"], atol=1e-7)
            if split == "train":
                cv = meta["handJoints3D"] @ FLIP.T
                expected = np.stack([cv[HO3D_NAMES.index(n)] for n in JOINT_NAMES]).astype(np.float32)
                np.testing.assert_array_equal(s["joint_3d"], expected)
                uv = expected.astype(np.float64) @ meta["camMat"].T
                np.testing.assert_allclose(s["joint_2d"], uv[:, :2] / uv[:, 2:], rtol=1e-5)
                assert s["hand_valid"] and s["joint_3d"][:, 2].min() > 0
                np.testing.assert_array_equal(s["mano_betas"], meta["handBeta"].astype(np.float32))
                np.testing.assert_array_equal(s["mano_pose_aa"], meta["handPose"].astype(np.float32))
            else:  # partial annotations: root joint and hand box only
                assert not s["hand_valid"] and (s["joint_3d"] == -1).all() and not s["mano_betas_valid"]
                np.testing.assert_allclose(s["root_joint"], FLIP @ meta["handJoints3D"], atol=1e-7)
                np.testing.assert_array_equal(s["hand_box"], meta["handBoundingBox"].astype(np.float32))


def test_opengl_conversion_round_trips():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5, 21, 3))
    np.testing.assert_array_equal(opencv_to_opengl(opengl_to_opencv(points)), points)
    R = Rotation.random(4, random_state=1).as_matrix()
    back = rotation_opengl_to_opencv(rotation_opengl_to_opencv(R))
    np.testing.assert_array_equal(back, R)
    assert np.allclose(np.linalg.det(rotation_opengl_to_opencv(R)), 1.0)  # still a rotation
    gl = np.array([[0.1, 0.2, -0.5]])  # in front of an OpenGL camera: z < 0, y up
    cv = opengl_to_opencv(gl)
    assert cv[0, 2] > 0 and cv[0, 1] < 0  # in front of an OpenCV camera: z > 0, y down


def test_a_pickle_that_would_run_code_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "ho3d"
    write_fake_ho3d(root, "v2", frames=1)
    marker = tmp_path / "ran"
    meta = write_malicious_meta(root / "train" / "MC1" / "meta" / "0000.pkl", f"touch {marker}")
    data = open_dataset("ho3d", root, "train")
    with pytest.raises(HO3DError, match=rf"{meta}: unsafe or corrupt pickle.*refused to load .*system"):
        data[1]
    with pytest.raises(HO3DError, match=str(meta)):
        load_meta(meta)
    assert not marker.exists()
    data[0]  # the other frames still read


def test_bad_files_are_named(tmp_path):
    root = tmp_path / "ho3d"
    written = write_fake_ho3d(root, "v3", frames=1)
    meta_dir = root / "train" / "ABF10" / "meta"
    data = open_dataset("ho3d", root, "train")

    def rewrite(**changes):
        meta = dict(written["train"]["ABF10/0000"], **changes)
        (meta_dir / "0000.pkl").write_bytes(pickle.dumps({k: v for k, v in meta.items() if v is not ...}, protocol=2))

    rewrite(camMat=...)
    with pytest.raises(HO3DError, match=r"0000.pkl: key 'camMat' missing"):
        data[0]
    rewrite(handJoints3D=np.zeros((20, 3)))
    with pytest.raises(HO3DError, match=r"0000.pkl: key 'handJoints3D' has shape \(20, 3\)"):
        data[0]
    rewrite(objTrans=np.array([np.nan, 0.0, -0.5]))
    with pytest.raises(HO3DError, match=r"0000.pkl: key 'objTrans' contains NaN"):
        data[0]
    rewrite(objName="999_rubber_duck")
    with pytest.raises(HO3DError, match=r"0000.pkl: key 'objName' is '999_rubber_duck'"):
        data[0]
    (meta_dir / "0000.pkl").write_bytes(pickle.dumps(written["train"]["ABF10/0000"], protocol=2)[:50])
    with pytest.raises(HO3DError, match=r"0000.pkl: unreadable pickle|0000.pkl: unsafe or corrupt"):
        data[0]
    (meta_dir / "0000.pkl").unlink()
    with pytest.raises(HO3DError, match=r"0000.pkl: meta file not found"):
        data[0]
    (root / "train" / "MC1" / "rgb" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(HO3DError, match=r"MC1/rgb/0000.jpg: corrupt or unreadable image"):
        data[1]
    with pytest.raises(HO3DError, match="unknown HO-3D split 'test'"):
        open_dataset("ho3d", root, "test")
    (root / "evaluation.txt").unlink()
    with pytest.raises(HO3DError, match=r"evaluation.txt: file not found"):
        open_dataset("ho3d", root, "evaluation")


def test_train_and_evaluation_caches_build(tree, tmp_path):
    root, _, written = tree
    train = open_cache(build_cache(root, "train", tmp_path / "t", size=64, workers=1, progress=False, format="ho3d"))
    assert len(train) == 6 and train.labels["hand_valid"].all() and train.labels["obj_valid"][:, 0].all()
    evaluation = open_cache(
        build_cache(root, "evaluation", tmp_path / "e", size=64, workers=1, progress=False, format="ho3d")
    )
    assert len(evaluation) == 4 and not evaluation.labels["hand_valid"].any()
    for (x0, y0, side), meta in zip(evaluation.labels["crop_box"], written["evaluation"].values(), strict=True):
        bx0, by0, bx1, by1 = meta["handBoundingBox"]
        assert x0 <= bx0 and y0 <= by0 and x0 + side >= bx1 and y0 + side >= by1  # cropped around the hand box
