"""Learning-rate schedule (linear warm-up + cosine) and the training stages.

Everything here is a pure function of the optimizer step, so a resumed run follows exactly the
schedule of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from amt.errors import ConfigError
from amt.training.config import StageConfig


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR factor in [min_ratio, 1]: linear from 1/warmup_steps to 1, then cosine to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StageSchedule:
    """Which stage a step is in, and the LR and loss-weight multipliers it implies.

    Stages start at fractions of `total_steps` (the first must start at 0, starts increasing).
    Over a stage's `ramp` fraction the multipliers move linearly from the previous stage's.
    """

    def __init__(self, stages: Sequence[StageConfig], total_steps: int) -> None:
        if not stages:
            raise ConfigError("training.stages: expected at least one stage")
        starts = [s.start for s in stages]
        if starts[0] != 0.0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1.0:
            raise ConfigError(f"training.stages: 'start' values {starts} must begin at 0.0, increase and stay < 1")
        self.stages = list(stages)
        self.total_steps = total_steps
        self.start_steps = [round(s.start * total_steps) for s in stages]

    def index(self, step: int) -> int:
        """Index of the stage containing `step` (0-based)."""
        return max(i for i, start in enumerate(self.start_steps) if start <= step)

    def _blend(self, step: int) -> tuple[int, float]:
        """(stage index, weight of the current stage in [0, 1] against the previous one)."""
        i = self.index(step)
        ramp_steps = round(self.stages[i].ramp * self.total_steps)
        if i == 0 or ramp_steps <= 0:
            return i, 1.0
        return i, min(1.0, (step - self.start_steps[i] + 1) / ramp_steps)

    def lr_multiplier(self, step: int) -> float:
        i, w = self._blend(step)
        previous = self.stages[i - 1].lr_mult if i > 0 else self.stages[i].lr_mult
        return (1.0 - w) * previous + w * self.stages[i].lr_mult

    def loss_multipliers(self, step: int) -> dict[str, float]:
        """Multiplier per loss-term name; names not listed in either stage are 1.0."""
        i, w = self._blend(step)
        current = self.stages[i].loss_multipliers
        previous = self.stages[i - 1].loss_multipliers if i > 0 else current
        names = set(current) | set(previous)
        return {n: (1.0 - w) * previous.get(n, 1.0) + w * current.get(n, 1.0) for n in sorted(names)}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float,
    min_lr_ratio: float,
    stages: StageSchedule,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose factor (same for every param group) is warm-up-cosine x stage LR multiplier."""
    warmup_steps = round(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio) * stages.lr_multiplier(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
