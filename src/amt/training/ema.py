"""Exponential moving average of model weights (the weights used for evaluation).

The EMA copy lives in a `torch.optim.swa_utils.AveragedModel` (so its state_dict keys are
`averaged.module.*` and `averaged.n_averaged`), but the update is ours: one fused multi-tensor
lerp over all parameters (`torch._foreach_lerp_`), with the update count mirrored on the host so
no step reads a device scalar. Buffers (e.g. the power-iteration vectors of sigma-reparameterised
layers) are copied from the live model with one `torch._foreach_copy_`, because an average of
unit vectors is not a unit vector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from amt.errors import ConfigError


def ema_decay(decay: float, warmup: bool, num_averaged: int) -> float:
    """The decay d of the update after `num_averaged` earlier ones: `decay`, or with warm-up
    min(decay, (1 + n) / (10 + n)) so that early averages forget the random initialisation."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


def _grouped(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """(ema, live) pairs grouped by (device, dtype): a foreach op needs one of each per call."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for ema, live in pairs:
        dst, src = groups.setdefault((ema.device, ema.dtype), ([], []))
        dst.append(ema)
        src.append(live.to(ema.device, ema.dtype))  # a no-op when both match; foreach ops need one device per call
    return list(groups.values())


class ModelEMA(nn.Module):
    """EMA copy of `model`. `update(model)` after every optimizer step; `module` is the averaged
    model (eval mode) to evaluate or save. state_dict() holds the weights and the update count.

    The update is ema <- ema + (1 - d) (param - ema) (`ema_decay`); the first copies the weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"training.ema.decay: {decay} is outside [0, 1)")
        self.decay, self.warmup = decay, warmup
        self.averaged = AveragedModel(model, use_buffers=False)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)
        self._count: int | None = 0  # host mirror of averaged.n_averaged (None: read it once)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._count = None
        return result

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s parameters; its buffers are copied."""
        if self._count is None:
            self._count = int(self.averaged.n_averaged)
        params = list(zip(self.module.parameters(), model.parameters(), strict=True))
        for ema, live in _grouped([(e, p.detach()) for e, p in params]):
            if self._count == 0:
                torch._foreach_copy_(ema, live)
            else:
                torch._foreach_lerp_(ema, live, 1.0 - ema_decay(self.decay, self.warmup, self._count))
        buffers = list(zip(self.module.buffers(), model.buffers(), strict=True))
        for ema, live in _grouped(buffers):
            torch._foreach_copy_(ema, live)
        self.averaged.n_averaged.add_(1)
        self._count += 1

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)
