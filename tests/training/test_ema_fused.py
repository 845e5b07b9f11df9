"""The fused EMA update (`amt.training.ema.ModelEMA`) equals the reference update."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from amt.training.ema import ModelEMA, ema_decay


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3, bias=False))


def _reference_avg_fn(decay: float, warmup: bool):
    """The per-tensor AveragedModel-style formula: ema <- ema + (1 - d) (param - ema)."""

    def avg_fn(ema: torch.Tensor, param: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return ema + (1.0 - ema_decay(decay, warmup, int(num_averaged))) * (param - ema)

    return avg_fn


def _perturb(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=gen))


@pytest.mark.parametrize("warmup", [True, False])
def test_fused_ema_equals_the_reference_update(warmup: bool):
    model, gen = _model(), torch.Generator().manual_seed(1)
    ema = ModelEMA(model, decay=0.9, warmup=warmup)
    reference = AveragedModel(model, avg_fn=_reference_avg_fn(0.9, warmup), use_buffers=False)
    for _ in range(6):
        _perturb(model, gen)
        ema.update(model)
        reference.update_parameters(model)
        for got, want in zip(ema.module.parameters(), reference.module.parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for got, want in zip(ema.module.buffers(), model.buffers(), strict=True):
            assert torch.equal(got, want)  # buffers are copied, not averaged
    assert ema.num_updates == int(reference.n_averaged) == 6


def test_fused_ema_is_bit_identical_to_the_averaged_model_lerp():
    """The previous implementation (AveragedModel with a foreach-lerp multi_avg_fn), bit for bit."""

    def multi_avg_fn(ema_params, params, num_averaged):
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(0.99, True, int(num_averaged)))

    model, gen = _model(), torch.Generator().manual_seed(2)
    ema = ModelEMA(model, decay=0.99, warmup=True)
    previous = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=False)
    for _ in range(5):
        _perturb(model, gen)
        ema.update(model)
        previous.update_parameters(model)
    for got, want in zip(ema.module.parameters(), previous.module.parameters(), strict=True):
        assert torch.equal(got, want)


def test_loaded_state_continues_the_count():
    model, gen = _model(), torch.Generator().manual_seed(3)
    ema = ModelEMA(model, decay=0.9)
    for _ in range(3):
        _perturb(model, gen)
        ema.update(model)
    state = ema.state_dict()
    assert set(state) >= {"averaged.n_averaged", "averaged.module.0.weight"}  # the checkpoint layout
    resumed = ModelEMA(_model(), decay=0.9)
    resumed.load_state_dict(state)
    _perturb(model, gen)
    ema.update(model)
    resumed.update(model)
    assert resumed.num_updates == ema.num_updates == 4
    for got, want in zip(resumed.module.parameters(), ema.module.parameters(), strict=True):
        assert torch.equal(got, want)


def test_grouping_puts_the_live_tensors_on_the_emas_device_and_dtype():
    """A foreach op takes one device per call: the live tensors follow the EMA copy's device."""
    from amt.training.ema import _grouped

    ema = torch.zeros(3, device="meta", dtype=torch.float64)
    live = torch.ones(3)
    [(dst, src)] = _grouped([(ema, live)])
    assert dst[0] is ema and src[0].device.type == "meta" and src[0].dtype == torch.float64
    same = torch.ones(2)
    [(_, src)] = _grouped([(torch.zeros(2), same)])
    assert src[0] is same  # nothing copied when device and dtype already match
