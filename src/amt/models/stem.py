"""Convolutional patch stem for small backbones trained from scratch.

A randomly initialised ViT with a linear patch embedding learns very slowly from a few thousand
images (docs/experiments.md "Training from scratch": on the demo's crops it stayed at the
mean-pose error where a small CNN learned). Xiao et al. 2021 ("Early convolutions help
transformers see better") replace the patch embedding with a few stride-2 3x3 convolutions; the
transformer blocks then see tokens with convolutional inductive bias. `ConvStem` is that stem,
dropped in place of the Hugging Face DINOv2 patch projection (same input and output shapes),
so the rest of `Dinov2Model` (CLS token, position embeddings, blocks) is unchanged. Pretrained
DINOv2 presets keep the linear patch embedding (`backbone_stem="patch"`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from amt.errors import ConfigError


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvStem(nn.Module):
    """(B, 3, H, W) -> (B, dim, H / patch, W / patch); `patch` must be a power of two.

    log2(patch) stages, each a stride-2 3x3 conv then `convs[stage]` stride-1 3x3 convs (default
    one; BatchNorm + ReLU), widths `width * 2**stage` capped at 4 * width, then a 1x1 projection
    to `dim`.
    """

    def __init__(self, in_ch: int, dim: int, patch: int, width: int = 32, convs: list[int] | None = None) -> None:
        super().__init__()
        stages = int(round(math.log2(patch))) if patch > 0 else 0
        if patch < 2 or 2**stages != patch:
            raise ConfigError(f"model config: backbone_stem='conv' needs a power-of-two patch_size, got {patch}")
        convs = [1] * stages if convs is None else list(convs)
        if len(convs) != stages or min(convs) < 0:
            raise ConfigError(
                f"model config: backbone_stem_convs {convs} needs one count >= 0 per stem stage ({stages} for patch {patch})"
            )
        layers: list[nn.Module] = []
        cin = in_ch
        self.stage_ends: dict[int, tuple[int, int]] = {}  # stride -> (modules up to it, channels)
        for s in range(stages):
            cout = width * min(2**s, 4)
            layers += _block(cin, cout, 2)
            for _ in range(convs[s]):
                layers += _block(cout, cout, 1)
            cin = cout
            self.stage_ends[2 ** (s + 1)] = (len(layers), cout)
        layers.append(nn.Conv2d(cin, dim, 1))
        self.net = nn.Sequential(*layers)

    def features(self, x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(x), the stem's own feature map at `stride` (B, C, H / stride, W / stride))."""
        end = self.stage_ends[stride][0]
        x = x.contiguous(memory_format=torch.channels_last)
        fine = self.net[:end](x)
        return self.net[end:](fine), fine

    @property
    def weight(self) -> torch.Tensor:
        """The projection's weight: Hugging Face's patch embedding reads `projection.weight.dtype`."""
        return self.net[-1].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last activations: oneDNN (CPU) and cuDNN convolutions run faster on NHWC
        # (docs/experiments.md "Training from scratch")
        return self.net(x.contiguous(memory_format=torch.channels_last))
