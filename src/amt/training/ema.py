"""Exponential moving average of model weights (the weights used for evaluation).

Parameters are averaged with `torch.optim.swa_utils.AveragedModel`; buffers (e.g. the power-
iteration vectors of sigma-reparameterised layers) are copied from the live model, because an
average of unit vectors is not a unit vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _ema_update(decay: float, warmup: bool):
    """multi_avg_fn for AveragedModel: ema <- ema + (1 - d) (param - ema)."""

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


class ModelEMA(nn.Module):
    """EMA copy of `model`. `update(model)` after every optimizer step; `module` is the averaged
    model (eval mode) to evaluate or save. state_dict() holds the weights and the update count."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"training.ema.decay: {decay} is outside [0, 1)")
        self.averaged = AveragedModel(model, multi_avg_fn=_ema_update(decay, warmup), use_buffers=False)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)
