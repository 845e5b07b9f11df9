"""Hand-object contact head: per object query, fuse the object token, the hand feature, the
hand joints relative to the object centre and their distances to it, and predict the contact
point (camera frame, metres, as an offset from the object centre), the contact probability and
a contact force. The 21 distances are given explicitly because contact is mostly a threshold
on them, which an MLP would otherwise have to recover from the 63 offsets (docs/experiments.md
records how it was added)."""

from __future__ import annotations

import torch
from torch import nn

from amt.models.config import ModelConfig
from amt.models.layers import MLP, init_head_weights

OFFSET_SCALE = 0.1  # metres per unit of the contact-point offset and of the relative joints


class ContactHead(nn.Module):
    """forward(obj_tokens (B,Q,D), hand (B,D), joints (B,21,3) m, obj_t (B,Q,3) m) -> dict
    contact_points (B,Q,3) m, contact_logit (B,Q), contact_prob (B,Q), contact_force (B,Q,3) N."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.mlp = MLP(2 * D + 63 + 21, D, 7)
        init_head_weights(self)
        with torch.no_grad():  # start at the object centre, p = 0.5, no force
            self.mlp[-1].weight.mul_(0.1)

    def forward(
        self, obj_tokens: torch.Tensor, hand: torch.Tensor, joints: torch.Tensor, obj_t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        Q = obj_tokens.shape[1]
        rel = (joints.unsqueeze(1) - obj_t.unsqueeze(2)) / OFFSET_SCALE  # (B, Q, 21, 3)
        dist = rel.norm(dim=-1)  # (B, Q, 21)
        x = torch.cat([obj_tokens, hand.unsqueeze(1).expand(-1, Q, -1), rel.flatten(2), dist], dim=-1)
        raw = self.mlp(x)
        return {
            "contact_points": obj_t + raw[..., :3] * OFFSET_SCALE,
            "contact_logit": raw[..., 3],
            "contact_prob": torch.sigmoid(raw[..., 3]),
            "contact_force": raw[..., 4:7],
        }
