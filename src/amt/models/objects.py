"""Object encoder: a transformer decoder whose queries (one hand query + Q object queries)
cross-attend to the multi-scale image tokens, and the per-query object head.

Object queries (`ModelConfig.object_queries`):
- "learned" (default): DETR's learned query embeddings, offset by the global image token.
- "selected": a proposal head scores every memory token for each class (a dense, per-location
  classification trained on the token under each object's projected centre, as in two-stage
  Deformable DETR and DINO's query selection); the Q best tokens become the queries, each
  anchored at its token's centre: the query's positional encoding is that location's, and the
  object head predicts the centre as an offset from it. On the demo's data it detected the
  grasped object no better than learned queries once out-of-view objects stopped being
  supervised, and cost hand accuracy (docs/experiments.md "Object queries"); kept as an option.

Per object query: class logits (C+1, last = no object); translation through the camera (the
projected centre in crop pixels + depth, lifted with the crop K); rotation as 6D -> matrix ->
unit quaternion (w, x, y, z). The projected centre (`ModelConfig.object_centre`): regressed from
the query token ("token"), or where the query attends on the finest feature grid ("heatmap",
`CentreHeatmaps`; on the demo it moved the centre's pixel error from 24-26 to 19-23 px,
docs/experiments.md "Absolute position").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from amt.geometry.camera import unproject
from amt.geometry.rotations import matrix_to_quat_wxyz, rot6d_to_matrix
from amt.models.config import ModelConfig
from amt.models.layers import MLP, Attention, grid_centres, init_head_weights, sine_encode_points

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
    """forward(memory (B,T,D), memory_pos (B|1,T,D), cls (B,D), memory_uv (T,2) token centres in
    crop pixels) -> dict hand (B,D) hand token, objects (B,Q,D) object tokens, reference_uv (B,Q,2)
    the selected tokens' centres (pixels; None for learned queries), proposal_logits (B,T,C) the
    per-token class logits (None for learned queries), cross (B,H,1+Q,T) the last layer's
    cross-attention probabilities or None."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.num_queries = cfg.num_queries
        self.image_size = cfg.image_size
        self.queries = nn.Parameter(torch.randn(1 + cfg.num_queries, D) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(1 + cfg.num_queries, D) * 0.02)
        self.cls_in = nn.Linear(D, D)
        self.selected = cfg.object_queries == "selected"
        if self.selected:
            self.proposal_norm = nn.LayerNorm(D)
            self.proposal = MLP(D, D, cfg.num_classes)  # per-token class logits (sigmoid, no "no object")
            self.content_in = nn.Linear(D, D)
        self.layers = nn.ModuleList(DecoderLayer(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(D)
        init_head_weights(self)
        if self.selected:
            with torch.no_grad():  # focal-loss prior: every token starts at p = 0.01 (Lin et al. 2017)
                self.proposal[-1].bias.fill_(-math.log(99.0))

    def forward(
        self,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        cls: torch.Tensor,
        memory_uv: torch.Tensor,
        return_attention: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        x = self.queries.unsqueeze(0) + self.cls_in(cls).unsqueeze(1)  # (B, 1+Q, D)
        pos = self.query_pos.unsqueeze(0)  # (1, 1+Q, D)
        reference_uv = proposal_logits = None
        if self.selected:
            tokens = self.proposal_norm(memory)
            proposal_logits = self.proposal(tokens)  # (B, T, C)
            # the Q tokens most confident of some class; the choice itself carries no gradient
            index = proposal_logits.detach().amax(-1).topk(self.num_queries, dim=1).indices  # (B, Q)
            picked = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            reference_uv = memory_uv[index]  # (B, Q, 2)
            # the anchor's encoding is its token's (`sine_positions_2d` normalises cell centres
            # the same way), so cross-attention starts out looking at the selected location
            anchor_pos = sine_encode_points((reference_uv + 0.5) / self.image_size, x.shape[-1]).to(x)
            x = torch.cat([x[:, :1], x[:, 1:] + self.content_in(picked)], dim=1)
            # broadcast, not expand(B): an exported graph keeps the batch dimension dynamic
            pos = torch.cat([pos[:, :1] + torch.zeros_like(anchor_pos[:, :1]), pos[:, 1:] + anchor_pos], dim=1)
        key = memory + memory_pos
        probs = None
        for i, layer in enumerate(self.layers):
            x, probs = layer(x, pos, memory, key, return_attention and i == len(self.layers) - 1)
        x = self.norm(x)
        return {
            "hand": x[:, 0],
            "objects": x[:, 1:],
            "reference_uv": reference_uv,
            "proposal_logits": proposal_logits,
            "cross": probs,
        }


class CentreHeatmaps(nn.Module):
    """Per-query soft-argmax over a feature map: where each object query looks is its centre.

    forward(tokens (B,Q,D), fmap (B,D,h,w)) -> (uv (B,Q,2) crop pixels, log_depth (B,Q)). The
    weights are the softmax over cells of the projected query's scaled dot product with the
    cells' features; uv is the weighted mean of the cell centres, log_depth (relative to the
    focal length, as the token's) a linear read of the weighted mean feature. A key projection
    of the cells would add nothing: q . (W f + b) = (W^T q) . f + a constant over the cells, and
    the per-cell 1x1 convolution cost ~10 % of the demo's step."""

    def __init__(self, dim: int, size: tuple[int, int], stride: float) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.depth = nn.Linear(dim, 1)
        self.register_buffer("centres", grid_centres(*size, stride), persistent=False)  # (h*w, 2)
        self.scale = dim**-0.5

    def forward(self, tokens: torch.Tensor, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uv, log_depth, _ = self.scored(tokens, fmap)
        return uv, log_depth

    def scored(self, tokens: torch.Tensor, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (uv, log_depth, scores (B, Q, h*w): the logits whose softmax weighs the cells)."""
        cells = fmap.flatten(2)  # (B, D, h*w)
        scores = self.query(tokens) @ cells * self.scale
        weights = torch.softmax(scores, dim=-1)  # (B, Q, h*w)
        attended = weights @ cells.transpose(1, 2)  # (B, Q, D)
        return weights @ self.centres, self.depth(attended).squeeze(-1), scores


class ObjectHead(nn.Module):
    """forward(tokens (B,Q,D), K (B,3,3), reference_uv (B,Q,2) pixels or None, fmap (B,D,h,w) or
    None) -> dict obj_logits (B,Q,C+1), obj_t (B,Q,3) m, obj_R (B,Q,3,3), obj_quat (B,Q,4) unit
    (w,x,y,z) [, centre_scores (B,Q,h*w) with object_centre="heatmap"]. The projected centre:
    with `object_centre="heatmap"`, `CentreHeatmaps` on fmap (`AMT.keypoint_features`) plus an
    offset in units of an eighth of the crop; with a reference (selected queries), an offset from
    it in the same units; else a position in the crop (its centre +- half its side per unit)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_logits = cfg.num_classes + 1
        self.image_size = cfg.image_size
        self.depth_per_focal = cfg.depth_per_focal
        # one wide output: logits (C+1), centre uv (2), log depth (1), rotation 6D (6)
        self.out = MLP(cfg.hidden_dim, cfg.hidden_dim, self.num_logits + 9)
        self.heatmaps: CentreHeatmaps | None = None
        if cfg.object_centre == "heatmap":
            grid = cfg.finest_grid
            self.heatmaps = CentreHeatmaps(cfg.hidden_dim, (grid, grid), cfg.finest_stride)
        init_head_weights(self)
        with torch.no_grad():  # start near the image centre, the working depth and the identity
            self.out[-1].weight.mul_(0.1)
            self.out[-1].bias[self.num_logits + 3 :].copy_(torch.tensor(IDENTITY_6D))
            if self.heatmaps is not None:  # the depth starts at the token's (the working depth)
                self.heatmaps.depth.weight.mul_(0.1)

    def forward(
        self,
        tokens: torch.Tensor,
        K: torch.Tensor,
        reference_uv: torch.Tensor | None = None,
        fmap: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        raw = self.out(tokens)
        c = self.num_logits
        log_depth = raw[..., c + 2]
        if self.heatmaps is not None:
            if fmap is None:
                raise ValueError("ObjectHead: object_centre='heatmap' needs AMT.keypoint_features (fmap)")
            centre, cell_depth, scores = self.heatmaps.scored(tokens, fmap)
            uv = centre + (self.image_size / 8) * raw[..., c : c + 2]
            log_depth = log_depth + cell_depth
        elif reference_uv is None:
            half = self.image_size / 2
            uv = half + half * raw[..., c : c + 2]
        else:
            uv = reference_uv.to(raw) + (self.image_size / 8) * raw[..., c : c + 2]
        depth = K[:, None, 0, 0] * self.depth_per_focal * torch.exp(log_depth)
        R = rot6d_to_matrix(raw[..., c + 3 : c + 9])
        out = {
            "obj_logits": raw[..., :c],
            "obj_t": unproject(uv, depth, K),
            "obj_R": R,
            "obj_quat": matrix_to_quat_wxyz(R),
        }
        if self.heatmaps is not None:
            out["centre_scores"] = scores
        return out
