"""The chumpy-free MANO layer, checked on a fake pickle with the real keys and shapes."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

from amt.geometry.hand_skeleton import MANO_TIP_VERTICES_RIGHT, MANOPTH_TO_DEXYCB, TIP_JOINTS
from amt.geometry.mano import ManoLayer, fake_mano_arrays, load_mano_pickle, write_fake_mano_pickle


@pytest.fixture(scope="module")
def mano(tmp_path_factory: pytest.TempPathFactory) -> ManoLayer:
    path = write_fake_mano_pickle(tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl")
    return ManoLayer.from_pickle(path)


def _zero_pose(mano: ManoLayer, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Flat hand (axis-angle = 0 after the mean is added), mean shape, no translation."""
    z3 = torch.zeros(batch, 3)
    return z3, -mano.hands_mean.expand(batch, 45), torch.zeros(batch, 10), z3


def test_shapes_and_side(mano: ManoLayer) -> None:
    verts, joints = mano(torch.zeros(3, 3), torch.zeros(3, 45), torch.zeros(3, 10), torch.zeros(3, 3))
    assert verts.shape == (3, 778, 3) and joints.shape == (3, 21, 3)
    assert mano.side == "right" and mano.faces.shape == (1538, 3)


def test_zero_pose_mean_shape_joints_match_the_regressor(mano: ManoLayer) -> None:
    arrays = fake_mano_arrays()
    v_template = arrays["v_template"]
    regressed = arrays["J_regressor"].toarray() @ v_template  # (16, 3), manopth order
    tips = v_template[list(MANO_TIP_VERTICES_RIGHT)]
    expected = np.concatenate([regressed, tips])[list(MANOPTH_TO_DEXYCB)]
    verts, joints = mano(*_zero_pose(mano))
    np.testing.assert_allclose(verts[0].numpy(), v_template, atol=1e-6)
    np.testing.assert_allclose(joints[1].numpy(), expected, atol=1e-6)


def test_global_rotation_turns_about_the_wrist_and_translation_adds(mano: ManoLayer) -> None:
    go, pose, betas, transl = _zero_pose(mano, 1)
    _, j0 = mano(go, pose, betas, transl)
    rotvec = torch.tensor([[0.3, -0.5, 0.8]])
    t = torch.tensor([[0.1, -0.2, 0.7]])
    _, j1 = mano(rotvec, pose, betas, t)
    R = roma.rotvec_to_rotmat(rotvec)[0]
    wrist = j0[:, :1]
    torch.testing.assert_close(j1, (j0 - wrist) @ R.T + wrist + t, atol=1e-6, rtol=1e-5)


def test_one_joint_rotation_moves_only_its_descendants(mano: ManoLayer) -> None:
    go, pose, betas, transl = _zero_pose(mano, 1)
    _, rest = mano(go, pose, betas, transl)
    bent = pose.clone()
    bent[0, 0:3] += torch.tensor([0.0, 0.0, 0.9])  # MANO joint 1 = index mcp (DexYCB 5)
    _, posed = mano(go, bent, betas, transl)
    R = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.9]))
    mcp = rest[0, 5]
    for j in (6, 7):  # index pip, dip: rotate rigidly about the mcp
        torch.testing.assert_close(posed[0, j], (rest[0, j] - mcp) @ R.T + mcp, atol=1e-6, rtol=1e-5)
    # tips are skinned vertices (the fake weights spread over all joints), so leave them out
    others = [j for j in range(21) if j not in (6, 7, *TIP_JOINTS)]
    torch.testing.assert_close(posed[0, others], rest[0, others], atol=1e-6, rtol=1e-5)


def test_pca_helper_uses_the_components(mano: ManoLayer) -> None:
    coeffs = torch.randn(2, 45)
    expected = coeffs @ torch.as_tensor(fake_mano_arrays()["hands_components"], dtype=torch.float32)
    torch.testing.assert_close(mano.pca_to_hand_pose(coeffs), expected)


def test_reads_chumpy_pickles_without_chumpy(tmp_path: Path) -> None:
    """Real MANO files store some arrays as chumpy objects; the loader must not import chumpy."""
    module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = x

        def __reduce__(self):  # what chumpy pickles: a plain object plus its __dict__
            return (object.__new__, (Ch,), {"x": self.x, "_dirty_vars": set()})

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch
    arrays = fake_mano_arrays(seed=3)
    wrapped = {k: (Ch(v) if k in ("v_template", "shapedirs", "posedirs", "weights") else v) for k, v in arrays.items()}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), module
    try:
        with (tmp_path / "MANO_LEFT.pkl").open("wb") as f:
            pickle.dump(wrapped, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    loaded = load_mano_pickle(tmp_path / "MANO_LEFT.pkl")
    np.testing.assert_array_equal(loaded["v_template"], arrays["v_template"])
    assert loaded["J_regressor"].shape == (16, 778)
    assert ManoLayer.from_pickle(tmp_path / "MANO_LEFT.pkl").side == "left"


def test_missing_file_and_key_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        load_mano_pickle(tmp_path / "MANO_RIGHT.pkl")
    arrays = fake_mano_arrays()
    del arrays["posedirs"]
    with (tmp_path / "bad.pkl").open("wb") as f:
        pickle.dump(arrays, f)
    with pytest.raises(KeyError, match="posedirs"):
        load_mano_pickle(tmp_path / "bad.pkl")


class _Planted:
    """Unpickling this would create a file: the MANO reader must refuse it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_mano_pickle_that_would_run_code_is_refused_naming_the_file(tmp_path):
    import pickle

    planted, path = tmp_path / "planted", tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Planted(str(planted))}, protocol=2))
    with pytest.raises(ValueError, match="MANO_RIGHT.pkl"):
        load_mano_pickle(path)
    assert not planted.exists()
