"""Memory per phase on CPU: the forward keeps the saved activations, AdamW allocates its state."""

from __future__ import annotations

import torch
from torch import nn

from amt.diagnostics.memory import profile_step_memory
from amt.training.step import TrainStep


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["image"])


def test_phases_see_activations_and_optimizer_state():
    torch.manual_seed(0)
    model = MLP()
    batch = {"image": torch.randn(1024, 1024)}
    params = sum(p.numel() for p in model.parameters()) * 4  # 32 MiB
    activations = 2 * 1024 * 4096 * 4  # linear output + relu output saved for the backward: 32 MiB
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    phases = profile_step_memory(TrainStep(model, lambda out, b: out.square().mean(), optimizer), batch)
    assert list(phases) == ["forward", "backward", "optimizer"]
    assert all(p.kind == "cpu_rss" and p.peak >= max(p.before, p.after) for p in phases.values())
    assert phases["forward"].delta > 0.5 * activations
    assert phases["optimizer"].delta > 0.5 * 2 * params  # exp_avg + exp_avg_sq
