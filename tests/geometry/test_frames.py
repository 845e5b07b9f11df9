"""The 22 local hand frames."""

from __future__ import annotations

import roma
import torch

from amt.geometry.frames import NUM_FRAMES, local_frames, to_local
from amt.geometry.hand_skeleton import NON_TIP_JOINTS, TIP_JOINTS
from amt.models.hand import mean_hand_offsets


def _hands(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = mean_hand_offsets().double()
    return base + 0.01 * torch.randn(n, 21, 3, generator=g, dtype=torch.float64)


def test_frames_are_right_handed_and_orthonormal() -> None:
    R, origins = local_frames(_hands())
    assert R.shape == (8, NUM_FRAMES, 3, 3) and origins.shape == (8, NUM_FRAMES, 3)
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(8, NUM_FRAMES, dtype=R.dtype))
    # right-handed: z = x cross y
    torch.testing.assert_close(torch.linalg.cross(R[..., 0], R[..., 1], dim=-1), R[..., 2])


def test_origins_and_x_axes_follow_the_bones() -> None:
    joints = _hands(2)
    R, origins = local_frames(joints)
    torch.testing.assert_close(origins[:, :16], joints[:, list(NON_TIP_JOINTS)])
    torch.testing.assert_close(origins[:, 16:21], joints[:, list(TIP_JOINTS)])
    bone = joints[:, 6] - joints[:, 5]  # index mcp -> pip: frame of joint 5 (position 2 in NON_TIP_JOINTS)
    k = list(NON_TIP_JOINTS).index(5)
    torch.testing.assert_close(R[:, k, :, 0], bone / bone.norm(dim=-1, keepdim=True))
    tip_bone = joints[:, 8] - joints[:, 7]
    torch.testing.assert_close(R[:, 17, :, 0], tip_bone / tip_bone.norm(dim=-1, keepdim=True))


def test_frames_move_rigidly_with_the_hand() -> None:
    joints = _hands(4)
    rot = roma.random_rotmat(4, dtype=torch.float64)
    t = torch.randn(4, 1, 3, dtype=torch.float64)
    R, o = local_frames(joints)
    R2, o2 = local_frames(joints @ rot.transpose(-1, -2) + t)
    torch.testing.assert_close(R2, rot[:, None] @ R)
    torch.testing.assert_close(o2, o @ rot.transpose(-1, -2) + t)


def test_to_local_matches_the_definition() -> None:
    R, o = local_frames(_hands(2))
    p = torch.randn(2, 5, 3, dtype=torch.float64)
    expected = torch.einsum("bfji,bpfj->bpfi", R, p[:, :, None] - o[:, None])
    torch.testing.assert_close(to_local(p, R, o), expected)
