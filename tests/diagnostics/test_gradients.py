"""Gradient health: a planted NaN is traced to its module; per-module norms agree with the total."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from amt.diagnostics.gradients import module_grad_norms, trace_non_finite


def test_planted_nan_is_traced_to_its_module(tiny56, random_batch):
    model = tiny56()
    batch = random_batch(2)
    assert trace_non_finite(model, batch).healthy
    target = model.objects.out[2]
    forward = target.forward
    target.forward = lambda x: forward(x) * torch.tensor(float("nan"))
    report = trace_non_finite(model, batch, loss_fn=lambda out, b: out["obj_t"].sum() + out["joints_3d"].sum())
    assert (report.forward_module, report.forward_kind) == ("objects.out.2", "nan")
    assert report.anomaly is not None and not report.healthy


def test_planted_inf_in_a_sequential_is_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    report = trace_non_finite(model, torch.ones(5, 3), loss_fn=lambda out, _b: out.sum())
    assert report.forward_module == "2" and report.forward_kind in ("inf", "nan")
    assert report.anomaly is not None and report.nonfinite_grads == [
        "0.weight",
        "0.bias",
    ]  # inf flows back into layer 0


def test_module_norms_combine_to_the_global_norm(tiny56, random_batch):
    model = tiny56().train()
    out = model(random_batch(2))
    (out["joints_3d"].square().sum() + out["obj_t"].square().sum()).backward()
    norms = module_grad_norms(model, depth=1)
    params = [p for p in model.parameters() if p.grad is not None]
    total = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(total, rel=1e-5)
    assert norms["hand"] > 0 and "backbone" in norms
    hand = math.sqrt(sum(float(p.grad.square().sum()) for p in model.hand.parameters() if p.grad is not None))
    assert norms["hand"] == pytest.approx(hand, rel=1e-5)
