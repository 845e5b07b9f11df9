"""Object encoder: a transformer decoder whose learned queries (one hand query + Q object
queries) cross-attend to the multi-scale image tokens, and the per-query object head.

Per object query: class logits (C+1, last = no object); translation through the camera (the
projected centre in crop pixels + depth, lifted with the crop K); rotation as 6D -> matrix ->
unit quaternion (w, x, y, z).
"""

from __future__ import annotations

import torch
from torch import nn

from amt.geometry.camera import unproject
from amt.geometry.rotations import matrix_to_quat_wxyz, rot6d_to_matrix
from amt.models.config import ModelConfig
from amt.models.layers import MLP, Attention, init_head_weights

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention over queries, cross-attention to memory, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, memory: torch.Tensor, memory_key: torch.Tensor, return_probs: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, h)[0]
        h = self.norm2(x)
        out, probs = self.cross_attn(h + pos, memory_key, memory, return_probs)
        x = x + out
        return x + self.mlp(self.norm3(x)), probs


class QueryDecoder(nn.Module):
    """forward(memory (B,T,D), memory_pos (B|1,T,D), cls (B,D)) -> (hand token (B,D),
    object tokens (B,Q,D), cross-attention probabilities of the last layer (B,H,1+Q,T) or None)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.queries = nn.Parameter(torch.randn(1 + cfg.num_queries, D) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(1 + cfg.num_queries, D) * 0.02)
        self.cls_in = nn.Linear(D, D)
        self.layers = nn.ModuleList(DecoderLayer(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(D)
        init_head_weights(self)

    def forward(
        self, memory: torch.Tensor, memory_pos: torch.Tensor, cls: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = self.queries.unsqueeze(0) + self.cls_in(cls).unsqueeze(1)  # (B, 1+Q, D)
        key = memory + memory_pos
        probs = None
        for i, layer in enumerate(self.layers):
            x, probs = layer(x, self.query_pos, memory, key, return_attention and i == len(self.layers) - 1)
        x = self.norm(x)
        return x[:, 0], x[:, 1:], probs


class ObjectHead(nn.Module):
    """forward(tokens (B,Q,D), K (B,3,3)) -> dict obj_logits (B,Q,C+1), obj_t (B,Q,3) m,
    obj_R (B,Q,3,3), obj_quat (B,Q,4) unit (w,x,y,z)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_logits = cfg.num_classes + 1
        self.image_size = cfg.image_size
        self.depth_per_focal = cfg.depth_per_focal
        # one wide output: logits (C+1), centre uv (2), log depth (1), rotation 6D (6)
        self.out = MLP(cfg.hidden_dim, cfg.hidden_dim, self.num_logits + 9)
        init_head_weights(self)
        with torch.no_grad():  # start near the image centre, the working depth and the identity
            self.out[-1].weight.mul_(0.1)
            self.out[-1].bias[self.num_logits + 3 :].copy_(torch.tensor(IDENTITY_6D))

    def forward(self, tokens: torch.Tensor, K: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.out(tokens)
        c = self.num_logits
        half = self.image_size / 2
        uv = half + half * raw[..., c : c + 2]
        depth = K[:, None, 0, 0] * self.depth_per_focal * torch.exp(raw[..., c + 2])
        R = rot6d_to_matrix(raw[..., c + 3 : c + 9])
        return {
            "obj_logits": raw[..., :c],
            "obj_t": unproject(uv, depth, K),
            "obj_R": R,
            "obj_quat": matrix_to_quat_wxyz(R),
        }
