"""The optimiser of a run: AdamW parameter groups, the optimizer, and its LR schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from amt.training.schedule import StageSchedule, build_lr_scheduler


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups: trainable backbone blocks at lr * backbone_lr_mult, heads at lr; 1-D
    parameters (biases, norm scales, sigma-reparam gammas) without weight decay."""
    backbone = {id(p) for p in model.trainable_backbone_parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = ("backbone" if id(p) in backbone else "heads", p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "name": f"{part}{'' if decay else '_no_decay'}",
                "params": params,
                "lr": lr * (backbone_lr_mult if part == "backbone" else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return out


def adamw(params: Any, lr: float, device: torch.device, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """The training step's AdamW over `params` (tensors or parameter groups) on `device`; every
    user of the training step (trainer, batch-size probe, `amt bench --train`, `amt debug`'s memory
    step) builds it here so that all of them time and size the same update. The fused kernel on
    CPU too: one kernel per group instead of ~10 ops per tensor (several times faster per step for
    the tiny model: docs/experiments.md "Speed choices")."""
    fused = torch.device(device).type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, betas=betas, fused=fused)


def build_optimizer(
    model: nn.Module, loss_fn: nn.Module, t: Any, device: torch.device, total_steps: int, stages: StageSchedule
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over `param_groups` (+ the loss's learned weights) and its warm-up + cosine + stage
    schedule. t: the `TrainingConfig`."""
    groups = param_groups(model, t.learning_rate, t.backbone_lr_mult, t.weight_decay)
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:  # learned uncertainty weights (LossConfig.dynamic_weighting)
        groups.append({"name": "loss", "params": loss_params, "lr": t.learning_rate, "weight_decay": 0.0})
    optimizer = adamw(groups, t.learning_rate, device, betas=tuple(t.betas))
    scheduler = build_lr_scheduler(optimizer, total_steps, t.warmup_fraction, t.min_lr_ratio, stages)
    return optimizer, scheduler


def head_lr(optimizer: torch.optim.Optimizer) -> float:
    """Current LR of the head weights (the first group when there is no "heads" group)."""
    for g in optimizer.param_groups:
        if g.get("name") == "heads":
            return float(g["lr"])
    return float(optimizer.param_groups[0]["lr"])
