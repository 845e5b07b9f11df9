"""Multi-coordinate hand encoder.

1. Coarse hand, lifted with the crop K. `hand_keypoints="token"`: the hand token regresses the
   root's crop pixel and depth and the other joints as root-relative offsets.
   `hand_keypoints="heatmap"`: `KeypointHeatmaps` places every joint's pixel by a soft-argmax over
   its heatmap on the pyramid's finest grid (`AMT.keypoint_features`), and its depth relative
   to the root by the same weights over a depth map (integral regression, Sun et al. 2018); the
   token gives the root depth. Both: the MANO shape (and MANO pose when a MANO layer is configured) from the token.
2. From the coarse joints, the 22 local frames (`amt.geometry.frames`); hand surface points
   (MANO's 778 vertices when a MANO layer is configured, else skeleton surface points) are
   expressed in all 22 frames (66 values) plus a point-index feature: 67 per point. These
   features are invariant to a rigid motion of the hand.
3. A PointNet (shared per-point MLP fused with the image feature, attention pooling) predicts
   refined joints (residuals in the palm frame), per-joint confidence and the MANO shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from amt.geometry.camera import unproject
from amt.geometry.frames import NUM_FRAMES, local_frames, to_local
from amt.geometry.hand_surface import num_skeleton_points, skeleton_surface_points
from amt.geometry.mano import ManoLayer
from amt.models.config import ModelConfig
from amt.models.layers import MLP, grid_centres, init_head_weights

HAND_SCALE = 0.1  # metres: local coordinates and joint offsets are expressed in units of 10 cm
RESIDUAL_SCALE = 0.02  # metres per unit of the refinement output
NUM_SHAPE, NUM_MANO_POSE = 10, 48
NUM_JOINTS = 21
MIN_DEPTH = 0.05  # metres: a joint's depth floor (a root-relative depth cannot put it behind the camera)
FEATURES_PER_POINT = NUM_FRAMES * 3 + 1  # 67


# Reference open right hand: per finger (thumb..little) the direction of the finger in the
# palm plane (degrees from the wrist -> middle-mcp axis), the wrist -> mcp distance and the three
# bone lengths, metres (adult averages). Only used to initialise the coarse joint offsets.
_REFERENCE_FINGERS = (
    (-50.0, 0.035, (0.038, 0.032, 0.027)),
    (-15.0, 0.090, (0.039, 0.023, 0.023)),
    (0.0, 0.092, (0.043, 0.027, 0.024)),
    (12.0, 0.088, (0.040, 0.026, 0.023)),
    (25.0, 0.082, (0.032, 0.019, 0.021)),
)


def mean_hand_offsets() -> torch.Tensor:
    """(21, 3) root-relative joints of a flat reference hand, metres, DexYCB order, in the
    image plane (fingers towards -y, i.e. up in the image)."""
    joints = [torch.zeros(3)]
    for angle, base, lengths in _REFERENCE_FINGERS:
        a = math.radians(angle)
        direction = torch.tensor([math.sin(a), -math.cos(a), 0.0])
        reach = base
        joints.append(direction * reach)
        for length in lengths:
            reach += length
            joints.append(direction * reach)
    return torch.stack(joints)


def point_index_feature(num_points: int) -> torch.Tensor:
    """(P,) the point-index feature: index / (P - 1), in [0, 1]."""
    return torch.arange(num_points, dtype=torch.float32) / max(num_points - 1, 1)


def multi_coordinate_features(
    points: torch.Tensor, R: torch.Tensor, origins: torch.Tensor, index: torch.Tensor | None = None
) -> torch.Tensor:
    """points: (B, P, 3) metres; R (B, 22, 3, 3), origins (B, 22, 3): the hand's local frames
    (`local_frames`); index: (P,) point-index feature (default `point_index_feature(P)`).
    Returns (B, P, 67): each point in the 22 frames (in units of HAND_SCALE) and its index."""
    local = to_local(points, R, origins).flatten(-2) / HAND_SCALE  # (B, P, 66)
    B, P = points.shape[0], points.shape[-2]
    if index is None:
        index = point_index_feature(P).to(points)
    return torch.cat([local, index.to(points.dtype).expand(B, P).unsqueeze(-1)], dim=-1)


class KeypointHeatmaps(nn.Module):
    """Per-joint heatmaps and relative-depth maps on one feature level, read by soft-argmax.

    forward(fmap (B, D, h, w)) -> (uv (B, 21, 2) crop pixels, rel_depth (B, 21) in units of
    HAND_SCALE, root = joint 0 at 0). A per-cell 1x1 MLP predicts 21 logit and 21 depth maps;
    the softmax of each joint's logits over the cells weighs the cell centres (its pixel) and its
    depth map (its depth). The logits add a learned per-joint prior, initialised to a Gaussian
    around a reference open hand in the crop's centre, so the untrained model starts from a hand
    shape (the 22 local frames need distinct joints), not from 21 joints at the centre.
    """

    def __init__(self, dim: int, size: tuple[int, int], stride: float, image_size: int) -> None:
        super().__init__()
        h, w = size
        width = max(dim // 4, 64)  # per-cell MLP: cheap at the finest level whatever the head width
        self.net = nn.Sequential(nn.Conv2d(dim, width, 1), nn.GELU(), nn.Conv2d(width, 2 * NUM_JOINTS, 1))
        centres = grid_centres(h, w, stride)  # (h*w, 2)
        self.register_buffer("centres", centres, persistent=False)
        # reference hand spanning ~60 % of the crop, fingers up; sigma an eighth of the crop side
        ref = mean_hand_offsets()[:, :2]
        scale = 0.6 * image_size / ref[:, 1].abs().amax()  # a tensor, no .item(): AMT builds on meta
        mean = image_size / 2 - 0.5 + (ref - ref.mean(0)) * scale
        sigma = image_size / 8
        self.prior = nn.Parameter(-((centres[None] - mean[:, None]) ** 2).sum(-1) / (2 * sigma**2))  # (21, h*w)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=m.in_channels**-0.5)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uv, rel, _ = self.scored(fmap)
        return uv, rel

    def scored(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (uv, rel_depth, scores (B, 21, h*w): the logits whose softmax weighs the cells, for
        a loss on the heatmaps themselves)."""
        out = self.net(fmap)  # (B, 42, h, w)
        scores = out[:, :NUM_JOINTS].flatten(2) + self.prior
        return (*self._read(scores, out[:, NUM_JOINTS:]), scores)

    def forward_logits(self, logits: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits, depth: (B, 21, h, w) -> (uv (B, 21, 2) pixels, root-relative depth (B, 21))."""
        return self._read(logits.flatten(2) + self.prior, depth)

    def _read(self, scores: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(scores, dim=-1)  # (B, 21, h*w)
        uv = weights @ self.centres
        rel = (weights * depth.flatten(2)).sum(-1)
        return uv, rel - rel[:, :1]


class HandEncoder(nn.Module):
    """forward(hand_token (B,D), cls (B,D), K (B,3,3), fmap (B,D,h,w)) -> dict:
    joints_3d_coarse (B,21,3) m, joints_3d (B,21,3) m, joint_conf (B,21) in [0,1],
    mano_shape (B,10), hand_points (B,P,3) m, hand_feature (B,D) [, heatmap_scores (B,21,h*w)
    with hand_keypoints="heatmap"]. fmap: features on the pyramid's
    finest grid (`AMT.keypoint_features`; its stride follows from the config), read with
    `hand_keypoints="heatmap"` only."""

    def __init__(self, cfg: ModelConfig, mano: ManoLayer | None = None) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.mano = mano
        self.image_size = cfg.image_size
        self.depth_per_focal = cfg.depth_per_focal
        self.per_bone = cfg.surface_points_per_bone
        n_pose = NUM_MANO_POSE if mano is not None else 0
        num_points = mano.v_template.shape[0] if mano is not None else num_skeleton_points(self.per_bone)
        # a buffer, not computed per forward: torch.linspace exports to ONNX through float64
        self.register_buffer("point_index", point_index_feature(num_points), persistent=False)
        # one wide output: [root uv (2)], root log depth (1), [20 offsets (60)], shape (10), [MANO
        # pose (48)]; uv and offsets only when the token places the joints (hand_keypoints="token")
        self.heatmaps: KeypointHeatmaps | None = None
        if cfg.hand_keypoints == "heatmap":
            grid = cfg.finest_grid
            self.heatmaps = KeypointHeatmaps(D, (grid, grid), cfg.finest_stride, cfg.image_size)
        self.placed = 2 + 60 if self.heatmaps is None else 0  # token outputs that place joints
        self.coarse = MLP(2 * D, D, 1 + self.placed + NUM_SHAPE + n_pose)
        self.point_in = MLP(FEATURES_PER_POINT, D, D)
        self.image_in = nn.Linear(2 * D, D)
        self.point_layers = nn.ModuleList(nn.Linear(D, D) for _ in range(max(cfg.point_layers - 1, 0)))
        self.point_score = nn.Linear(D, 1)
        self.out = MLP(2 * D, D, 63 + 21 + NUM_SHAPE)
        init_head_weights(self)
        with torch.no_grad():
            self.coarse[-1].weight.mul_(0.1)
            if self.heatmaps is None:
                self.coarse[-1].bias[3:63].copy_(mean_hand_offsets()[1:].flatten() / HAND_SCALE)
            self.out[-1].weight.mul_(0.1)

    def _coarse(
        self, fused: torch.Tensor, K: torch.Tensor, fmap: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(joints (B,21,3) m, shape (B,10), MANO pose (B,48) or (B,0), heatmap scores (B,21,h*w)
        or None) from the token [and fmap]."""
        raw = self.coarse(fused)
        log_depth = raw[:, 2:3] if self.heatmaps is None else raw[:, 0:1]
        depth = K[:, 0, 0, None] * self.depth_per_focal * torch.exp(log_depth)  # (B, 1) root, metres
        rest = raw[:, 1 + self.placed :]
        if self.heatmaps is not None:
            if fmap is None:
                raise ValueError(
                    "HandEncoder: hand_keypoints='heatmap' needs features on the finest pyramid grid (fmap)"
                )
            uv, rel, scores = self.heatmaps.scored(fmap)
            joints = unproject(uv, (depth + rel * HAND_SCALE).clamp(min=MIN_DEPTH), K)
            return joints, rest[:, :NUM_SHAPE], rest[:, NUM_SHAPE:], scores
        half = self.image_size / 2
        uv = half + half * raw[:, None, 0:2]  # (B, 1, 2) crop pixels
        root = unproject(uv, depth, K)  # (B, 1, 3)
        offsets = raw[:, 3:63].unflatten(-1, (20, 3)) * HAND_SCALE
        joints = torch.cat([root, root + offsets], dim=1)
        return joints, rest[:, :NUM_SHAPE], rest[:, NUM_SHAPE:], None

    def surface_points(self, joints: torch.Tensor, shape: torch.Tensor, mano_pose: torch.Tensor) -> torch.Tensor:
        """(B, P, 3) metres: MANO vertices placed at the coarse wrist, or skeleton points."""
        if self.mano is None:
            return skeleton_surface_points(joints, self.per_bone)
        zeros = torch.zeros_like(mano_pose[:, :3])
        verts, mano_joints = self.mano(mano_pose[:, :3], mano_pose[:, 3:], shape, zeros)
        return verts - mano_joints[:, :1] + joints[:, :1]

    def forward(
        self, hand_token: torch.Tensor, cls: torch.Tensor, K: torch.Tensor, fmap: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        fused = torch.cat([hand_token, cls], dim=-1)  # (B, 2D)
        coarse, shape_coarse, mano_pose, scores = self._coarse(fused, K, fmap)
        points = self.surface_points(coarse, shape_coarse, mano_pose)
        # the 22 frames are coordinates for the encoder, not a path for gradients: normalising
        # near-parallel bones (Gram-Schmidt) is ill-conditioned; cut with two other paths when the
        # demo's gradients exploded (docs/experiments.md). The coarse joints still learn through
        # the points and the residual below.
        R, origins = local_frames(coarse.detach())
        feats = multi_coordinate_features(points, R, origins, self.point_index)  # (B, P, 67)
        image = self.image_in(fused)
        x = F.gelu(self.point_in(feats) + image.unsqueeze(1))
        for layer in self.point_layers:
            x = F.gelu(layer(x))
        weights = torch.softmax(self.point_score(x), dim=1)  # (B, P, 1) attention pooling
        pooled = (weights * x).sum(dim=1)
        raw = self.out(torch.cat([pooled, image], dim=-1))
        # residuals are predicted in the palm frame (the last frame) and rotated to the camera
        delta = raw[:, :63].unflatten(-1, (21, 3)) @ R[:, -1].transpose(-1, -2) * RESIDUAL_SCALE
        out = {
            "joints_3d_coarse": coarse,
            "joints_3d": coarse + delta,
            "joint_conf": torch.sigmoid(raw[:, 63:84]),
            "mano_shape": shape_coarse + raw[:, 84 : 84 + NUM_SHAPE],
            "hand_points": points,
            "hand_feature": pooled + image,
        }
        if scores is not None:
            out["heatmap_scores"] = scores
        return out
