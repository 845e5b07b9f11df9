"""MANO hands for the synthetic generator (used with `amt synth --mano`).

The grasp is still found with the procedural hand (`amt.data.synth.scene`); a MANO hand with
the subject's betas is then fitted to its 21 joints (rigid Procrustes on the palm, then Adam
on the articulation), so the rendered surface, the joints and `pose_m` are genuine MANO:
`pose_m = [global_orient, PCA coefficients (45), transl]` as DexYCB stores them. Contact is
only approximately preserved (the fit's joint error, typically a few millimetres).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

log = logging.getLogger(__name__)

FIT_STEPS = 150
PALM = [0, 1, 5, 9, 13, 17]


@dataclass
class ManoFit:
    """A fitted MANO hand in the world frame (metres)."""

    vertices: np.ndarray  # (778, 3)
    joints: np.ndarray  # (21, 3) DexYCB order
    faces: np.ndarray  # (F, 3)
    global_orient: np.ndarray  # (3,) axis-angle about the rest wrist
    pca: np.ndarray  # (45,) PCA coefficients
    transl: np.ndarray  # (3,)
    wrist_rest: np.ndarray  # (3,) J0(betas): the rest wrist, needed to move transl between frames
    error_mm: float  # mean joint distance to the target skeleton


def mano_path_for(side: str, mano: Path) -> Path:
    """The MANO pickle for `side`: `mano` itself if it names that side (or is the only file
    given and side is right), else MANO_RIGHT.pkl / MANO_LEFT.pkl next to it or inside it."""
    want = f"MANO_{side.upper()}.pkl"
    folder = mano if mano.is_dir() else mano.parent
    if mano.is_file() and (side in mano.name.lower() or (side == "right" and "left" not in mano.name.lower())):
        return mano
    candidate = folder / want
    if not candidate.is_file():
        raise FileNotFoundError(f"--mano {mano}: {want} needed for {side} hands, not found in {folder}")
    return candidate


class ManoFitter:
    """Fits `amt.geometry.mano.ManoLayer` hands to target skeletons (imports torch lazily)."""

    def __init__(self, path: Path, side: str) -> None:
        # start-up time: torch is imported only when a MANO pickle is given (the default
        # procedural hand renders without it, so synthesis workers stay light)
        import torch

        from amt.geometry.mano import ManoLayer

        torch.set_num_threads(1)
        self.torch = torch
        self.layer = ManoLayer.from_pickle(path, side=side)
        self.components_inv = torch.linalg.pinv(self.layer.hands_components)

    def fit(self, target: np.ndarray, betas: np.ndarray) -> ManoFit:
        """target: (21, 3) metres, DexYCB order; betas: (10,). Returns the fitted hand."""
        torch = self.torch
        b = torch.as_tensor(betas, dtype=torch.float32)[None]
        zeros3 = torch.zeros(1, 3)
        with torch.no_grad():
            _, rest = self.layer(zeros3, -self.layer.hands_mean[None], b, zeros3)  # flat hand
        rest = rest[0].double().numpy()
        wrist_rest = rest[0]
        rot, t = _procrustes(rest[PALM], target[PALM])
        orient = torch.tensor(Rotation.from_matrix(rot).as_rotvec(), dtype=torch.float32)[None].requires_grad_(True)
        transl = torch.tensor(rot @ wrist_rest + t - wrist_rest, dtype=torch.float32)[None].requires_grad_(True)
        pose = (-self.layer.hands_mean[None]).clone().requires_grad_(True)
        goal = torch.as_tensor(target, dtype=torch.float32)[None]
        opt = torch.optim.Adam([orient, transl, pose], lr=0.03)
        for _ in range(FIT_STEPS):
            opt.zero_grad()
            _, joints = self.layer(orient, pose, b, transl)
            loss = ((joints - goal) ** 2).sum(-1).mean() + 1e-6 * (pose**2).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            verts, joints = self.layer(orient, pose, b, transl)
            pca = (pose @ self.components_inv)[0]
        error = float((joints[0] - goal[0]).norm(dim=-1).mean()) * 1000
        return ManoFit(verts[0].double().numpy(), joints[0].double().numpy(), self.layer.faces.numpy(),
                       orient[0].detach().double().numpy(), pca.double().numpy(),
                       transl[0].detach().double().numpy(), wrist_rest, error)  # fmt: skip


def _procrustes(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R (proper) and t minimising |R src + t - dst|."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((dst - md).T @ (src - ms))
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return rot, md - rot @ ms


def pose_m_in_camera(fit: ManoFit, r_cw: np.ndarray, t_cw: np.ndarray) -> np.ndarray:
    """(51,) DexYCB pose_m of a world-frame fit seen from a camera (x_cam = r_cw x + t_cw).

    MANO rotates about the rest wrist J0: x = R (v - J0) + J0 + transl, so in the camera
    R' = r_cw R and transl' = r_cw (J0 + transl) + t_cw - J0.
    """
    out = np.zeros(51)
    out[:3] = Rotation.from_matrix(r_cw @ Rotation.from_rotvec(fit.global_orient).as_matrix()).as_rotvec()
    out[3:48] = fit.pca
    out[48:] = r_cw @ (fit.wrist_rest + fit.transl) + t_cw - fit.wrist_rest
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
