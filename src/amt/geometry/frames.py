"""The 22 local coordinate frames of a hand skeleton (multi-coordinate hand encoding).

Frames, in this order:
  0-15  one per articulated joint (`NON_TIP_JOINTS`: wrist and the mcp/pip/dip of each finger),
        origin at the joint, x along the bone to its child (wrist: towards the middle mcp);
  16-20 one per fingertip (`TIP_JOINTS`), origin at the tip, x along the last bone (dip -> tip);
  21    the palm, origin at the mean of the wrist and the five mcps, x from wrist to middle mcp.
In every frame y is the palm normal made orthogonal to x and z = x cross y, so each rotation
is orthonormal and right-handed. The palm normal is (index_mcp - wrist) x (little_mcp - wrist),
computed from the joints themselves, so the frames move rigidly with the hand.
"""

from __future__ import annotations

import roma
import torch

from amt.geometry.hand_skeleton import MCP_JOINTS, NON_TIP_JOINTS, PARENTS, TIP_JOINTS

NUM_FRAMES = 22
WRIST, INDEX_MCP, MIDDLE_MCP, LITTLE_MCP = 0, 5, 9, 17

# Child that defines the x axis of each articulated joint's frame.
_CHILD = {j: (MIDDLE_MCP if j == 0 else j + 1) for j in NON_TIP_JOINTS}
_AXIS_FROM = [*NON_TIP_JOINTS, *(PARENTS[t] for t in TIP_JOINTS)]
_AXIS_TO = [*(_CHILD[j] for j in NON_TIP_JOINTS), *TIP_JOINTS]
_ORIGINS = [*NON_TIP_JOINTS, *TIP_JOINTS]


def palm_normal(joints: torch.Tensor) -> torch.Tensor:
    """joints: (..., 21, 3) -> (..., 3) unnormalised palm normal."""
    wrist = joints[..., WRIST, :]
    return torch.linalg.cross(joints[..., INDEX_MCP, :] - wrist, joints[..., LITTLE_MCP, :] - wrist, dim=-1)


def local_frames(joints: torch.Tensor, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """The 22 frames of a skeleton.

    joints: (..., 21, 3) metres, DexYCB order. Returns (R, origin): R (..., 22, 3, 3) whose
    columns are the frame axes in the input frame, origin (..., 22, 3) in the input's units.
    A point p has local coordinates R^T (p - origin).
    """
    palm_origin = joints[..., [WRIST, *MCP_JOINTS], :].mean(dim=-2, keepdim=True)
    origins = torch.cat([joints[..., _ORIGINS, :], palm_origin], dim=-2)  # (..., 22, 3)
    bones = joints[..., _AXIS_TO, :] - joints[..., _AXIS_FROM, :]  # (..., 21, 3)
    palm_x = joints[..., MIDDLE_MCP : MIDDLE_MCP + 1, :] - joints[..., WRIST : WRIST + 1, :]
    x = torch.cat([bones, palm_x], dim=-2)  # (..., 22, 3)
    n = palm_normal(joints).unsqueeze(-2).expand_as(x)
    R = roma.special_gramschmidt(torch.stack([x, n], dim=-1), epsilon=eps)
    return R, origins


def to_local(points: torch.Tensor, R: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
    """Express points in every frame.

    points: (..., P, 3); R: (..., F, 3, 3); origins: (..., F, 3). Returns (..., P, F, 3) with
    entry [p, f] = R_f^T (points_p - origin_f), same units as the inputs.
    """
    # R_f^T (p - o_f) = p R_f - o_f R_f (row vectors): one matmul over all frames at once.
    pr = points @ R.transpose(-3, -2).flatten(-2)  # (..., P, 3) @ (..., 3, F*3) -> (..., P, F*3)
    orr = (origins.unsqueeze(-2) @ R).squeeze(-2)  # (..., F, 3)
    F_ = R.shape[-3]
    return pr.unflatten(-1, (F_, 3)) - orr.unsqueeze(-3)
