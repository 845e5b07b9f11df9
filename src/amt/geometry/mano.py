"""A small MANO layer (linear blend skinning) that reads the official pickles without chumpy.

Semantics follow manopth as the DexYCB toolkit uses it (docs/data.md "MANO parameters"):
`flat_hand_mean=False`, so `hands_mean` is added to the 45 articulated axis-angle values;
`pca_to_hand_pose` maps DexYCB's 45 PCA coefficients (`pose_m[3:48]`) to that axis-angle
input. Outputs are in metres (the pickle's unit) and joints in DexYCB order (16 regressed
joints + 5 fingertip vertices, reordered by `MANOPTH_TO_DEXYCB`). MANO files are supplied by
the user and never bundled.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import nn

from amt.geometry.hand_skeleton import MANO_TIP_VERTICES_LEFT, MANO_TIP_VERTICES_RIGHT, MANOPTH_TO_DEXYCB
from amt.geometry.rotations import axis_angle_to_matrix
from amt.safe_pickle import OBJECT_GLOBALS, RestrictedUnpickler

REQUIRED_KEYS = ("v_template", "f", "weights", "kintree_table", "J_regressor", "posedirs", "shapedirs",
                 "hands_components", "hands_mean")  # fmt: skip
SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix")  # J_regressor's storage in the official files


class _ChumpyStub:
    """Stands in for chumpy classes while unpickling; keeps the pickled state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = self.state
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise ValueError(f"chumpy object without an 'x' array (state keys: {list(state or {})})")


class _ManoUnpickler(RestrictedUnpickler):
    """numpy, scipy.sparse matrices (J_regressor) and chumpy values (as stubs), nothing else:
    a MANO file is a user's download, and a pickle that imports anything else could run code."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, extra=OBJECT_GLOBALS, **kwargs)

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy":
            return _ChumpyStub
        if module.startswith("scipy.sparse") and name in SPARSE_CLASSES:
            return getattr(scipy.sparse, name)
        return super().find_class(module, name)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, _ChumpyStub):
        return value.to_array()
    if hasattr(value, "toarray"):  # scipy sparse (J_regressor)
        return value.toarray()
    return np.asarray(value)


def load_mano_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Read a MANO_RIGHT.pkl / MANO_LEFT.pkl into plain numpy arrays (no chumpy needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MANO file not found: {path} (download MANO_RIGHT.pkl / MANO_LEFT.pkl from mano.is.tue.mpg.de)"
        )
    with path.open("rb") as f:
        try:
            raw = _ManoUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path}: not a MANO model file we can read safely ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise KeyError(f"{path}: missing MANO key(s) {missing}; expected {list(REQUIRED_KEYS)}")
    return {k: _as_array(raw[k]) for k in REQUIRED_KEYS}


class ManoLayer(nn.Module):
    """MANO linear blend skinning.

    forward(global_orient (B,3), hand_pose (B,45) axis-angle, betas (B,10), transl (B,3))
    -> vertices (B,778,3), joints (B,21,3), metres, DexYCB joint order.
    """

    def __init__(self, arrays: dict[str, np.ndarray], side: str = "right", flat_hand_mean: bool = False) -> None:
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"MANO side must be 'right' or 'left', got {side!r}")
        self.side = side
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))
        v_template = f32(arrays["v_template"])
        num_verts = v_template.shape[0]
        self._constant("v_template", v_template)  # (V, 3)
        self._constant("shapedirs", f32(arrays["shapedirs"]).reshape(num_verts * 3, -1).t().contiguous())
        posedirs = f32(arrays["posedirs"])  # (V, 3, 135)
        self._constant("posedirs", posedirs.reshape(num_verts * 3, -1).t().contiguous())  # (135, V*3)
        self._constant("J_regressor", f32(arrays["J_regressor"]))  # (16, V)
        self._constant("weights", f32(arrays["weights"]))  # (V, 16)
        self._constant("hands_components", f32(arrays["hands_components"]))  # (ncomps, 45)
        mean = torch.zeros(45) if flat_hand_mean else f32(arrays["hands_mean"]).reshape(45)
        self._constant("hands_mean", mean)
        self._constant("faces", torch.as_tensor(np.asarray(arrays["f"], dtype=np.int64)))
        kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
        col_of = {int(joint_id): col for col, joint_id in enumerate(kintree[1])}
        self.parents: list[int] = [-1] + [col_of[int(kintree[0, c])] for c in range(1, kintree.shape[1])]
        tips = MANO_TIP_VERTICES_RIGHT if side == "right" else MANO_TIP_VERTICES_LEFT
        self.tip_vertices = list(tips)

    def _constant(self, name: str, value: torch.Tensor) -> None:
        # non-persistent: MANO data comes from the user's licensed file, never from a checkpoint
        self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_pickle(cls, path: str | Path, side: str | None = None, flat_hand_mean: bool = False) -> ManoLayer:
        """Build from MANO_RIGHT.pkl / MANO_LEFT.pkl; `side` defaults from the file name."""
        if side is None:
            side = "left" if "left" in Path(path).name.lower() else "right"
        return cls(load_mano_pickle(path), side=side, flat_hand_mean=flat_hand_mean)

    def pca_to_hand_pose(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, n<=45) PCA coefficients (DexYCB `pose_m[3:48]`) -> (B, 45) axis-angle input of
        `forward` (the mean pose is added inside `forward`)."""
        return coeffs @ self.hands_components[: coeffs.shape[-1]]

    def forward(
        self, global_orient: torch.Tensor, hand_pose: torch.Tensor, betas: torch.Tensor, transl: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B = global_orient.shape[0]
        V = self.v_template.shape[0]
        pose = torch.cat([global_orient, hand_pose + self.hands_mean], dim=-1).reshape(B, 16, 3)
        rot = axis_angle_to_matrix(pose)  # (B, 16, 3, 3)
        v_shaped = self.v_template + (betas @ self.shapedirs).reshape(B, V, 3)
        joints = self.J_regressor @ v_shaped  # (B, 16, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_map = (rot[:, 1:] - eye).reshape(B, -1)  # (B, 135)
        v_posed = v_shaped + (pose_map @ self.posedirs).reshape(B, V, 3)

        # Forward kinematics: world transforms G_j = G_parent [R_j | J_j - J_parent].
        rel = joints.clone()
        rel[:, 1:] = joints[:, 1:] - joints[:, self.parents[1:]]
        local = torch.cat([rot, rel.unsqueeze(-1)], dim=-1)  # (B, 16, 3, 4)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype, device=rot.device).expand(B, 16, 1, 4)
        local = torch.cat([local, bottom], dim=-2)  # (B, 16, 4, 4)
        world = [local[:, 0]]
        for j in range(1, 16):
            world.append(world[self.parents[j]] @ local[:, j])
        G = torch.stack(world, dim=1)  # (B, 16, 4, 4)
        posed_joints = G[:, :, :3, 3]
        # Skinning transforms remove the rest-pose joint location: G_j - [0 | G_j^R J_j].
        shift = (G[:, :, :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)
        A = G.clone()
        A[:, :, :3, 3] = posed_joints - shift
        T = torch.einsum("vj,bjrc->bvrc", self.weights, A)  # (B, V, 4, 4)
        verts = (T[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]

        joints21 = torch.cat([posed_joints, verts[:, self.tip_vertices]], dim=1)[:, list(MANOPTH_TO_DEXYCB)]
        t = transl.unsqueeze(1)
        return verts + t, joints21 + t


# MANO's kinematic tree (manopth joint order): wrist, then index, middle, little, ring, thumb chains.
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)


def fake_mano_arrays(seed: int = 0) -> dict[str, Any]:
    """Random arrays with the real MANO keys, shapes and types (J_regressor scipy-sparse), for
    tests and demos where the licensed file is absent. Not a hand: random values, metres."""
    rng = np.random.default_rng(seed)
    V, J = 778, 16
    v_template = rng.uniform(-0.05, 0.05, size=(V, 3)) + np.array([0.0, -0.05, 0.0])
    regressor = np.zeros((J, V))
    for j in range(J):
        regressor[j, rng.choice(V, size=12, replace=False)] = 1.0 / 12
    weights = rng.uniform(size=(V, J)) ** 4
    root = np.iinfo(np.uint32).max
    return {
        "v_template": v_template,
        "f": rng.integers(0, V, size=(1538, 3)).astype(np.uint32),
        "weights": weights / weights.sum(axis=1, keepdims=True),
        "kintree_table": np.array([[root, *MANO_PARENTS[1:]], list(range(J))], dtype=np.int64),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "posedirs": rng.normal(scale=1e-3, size=(V, 3, 135)),
        "shapedirs": rng.normal(scale=1e-3, size=(V, 3, 10)),
        "hands_components": np.linalg.qr(rng.normal(size=(45, 45)))[0],
        "hands_mean": rng.normal(scale=0.1, size=45),
        "hands_coeffs": rng.normal(size=(20, 45)),
    }


def write_fake_mano_pickle(path: str | Path, seed: int = 0) -> Path:
    """Write `fake_mano_arrays(seed)` as a MANO-format pickle at `path`."""
    path = Path(path)
    with path.open("wb") as f:
        pickle.dump(fake_mano_arrays(seed), f, protocol=2)
    return path
