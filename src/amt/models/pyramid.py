"""Multi-scale feature pyramid from the ViT tap blocks (DPT-style reassembly).

Tap block i's patch tokens (B, N, Db) are projected to the head width D and resampled by
`pyramid_scales[i]` relative to the patch grid (4x / 2x with transposed convolutions, 1x as is,
0.5x with a strided convolution). A level with scale s has stride patch_size / s image pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from amt.errors import ConfigError
from amt.models.config import ModelConfig
from amt.models.layers import init_head_weights


def _resampler(dim: int, scale: float) -> nn.Module:
    if scale == 1:
        return nn.Identity()
    if scale > 1 and float(scale).is_integer():
        return nn.ConvTranspose2d(dim, dim, kernel_size=int(scale), stride=int(scale))
    if scale < 1 and float(1 / scale).is_integer():
        return nn.Conv2d(dim, dim, kernel_size=int(1 / scale), stride=int(1 / scale))
    raise ConfigError(f"model config: pyramid scale {scale} must be an integer or 1/integer")


class FeaturePyramid(nn.Module):
    """forward(taps: list of (B,N,Db), grid (h,w)) -> list of (B, D, h*s, w*s) maps.
    `strides` gives each level's image pixels per cell."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if len(cfg.pyramid_scales) != len(cfg.taps):
            raise ConfigError(
                f"model config: pyramid_scales has {len(cfg.pyramid_scales)} entries, tap blocks {cfg.taps} need one each"
            )
        D = cfg.hidden_dim
        self.proj = nn.ModuleList(nn.Linear(cfg.backbone_hidden, D) for _ in cfg.taps)
        self.resample = nn.ModuleList(_resampler(D, s) for s in cfg.pyramid_scales)
        self.strides = [cfg.patch_size / s for s in cfg.pyramid_scales]
        init_head_weights(self)

    def forward(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
        h, w = grid
        return [
            resample(proj(tokens).transpose(1, 2).unflatten(-1, (h, w)))
            for tokens, proj, resample in zip(taps, self.proj, self.resample, strict=True)
        ]
