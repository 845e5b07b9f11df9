"""Prediction diversity per output head: is any head predicting (almost) the same value for
every image?

For each head the spread of its predictions across samples (standard deviation over the sample
axis, per output element, averaged over elements) is compared with the spread of the matching
ground truth over the same samples. Statistics are streamed (Chan et al. parallel variance), so
memory does not grow with the number of batches.

Collapse rule (documented thresholds):
- head with ground truth: collapsed when pred_std / gt_std < `COLLAPSE_RATIO` (0.1);
- head without ground truth (joint confidence, class probabilities, forces): collapsed when
  pred_std < `CONSTANT_STD` (1e-6), i.e. numerically constant.

Units follow the heads: metres for joints, translations and contact points; rotation-matrix
entries; probabilities.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from amt.data.loaders import batch_to_device
from amt.geometry.rotations import quat_wxyz_to_matrix

log = logging.getLogger(__name__)

COLLAPSE_RATIO = 0.1
CONSTANT_STD = 1e-6


class RunningMoments:
    """Streaming per-element count, mean and M2 of samples x (B, *E), optionally masked.

    `update(x, mask)`: mask (B, *E[:k]) bool selects which rows count for which elements
    (e.g. (B,) hand_valid or (B, M) obj_valid). State: three float64 tensors of shape E.
    """

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        x = x.detach().to(torch.float64).cpu()
        if mask is None:
            w = torch.ones_like(x)
        else:
            w = mask.detach().cpu().to(torch.float64)
            while w.dim() < x.dim():
                w = w.unsqueeze(-1)
            w = w.expand_as(x)
            x = torch.where(w > 0, x, torch.zeros_like(x))  # placeholders (-1, nan) never count
        n_b = w.sum(0)
        mean_b = (x * w).sum(0) / n_b.clamp_min(1)
        m2_b = (((x - mean_b) ** 2) * w).sum(0)
        if self.count is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if self.count.shape != n_b.shape:
            raise ValueError(
                f"RunningMoments: element shape changed from {tuple(self.count.shape)} to {tuple(n_b.shape)}"
            )
        total = self.count + n_b
        delta = mean_b - self.mean
        safe = total.clamp_min(1)
        self.mean = self.mean + delta * n_b / safe
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / safe
        self.count = total

    def std(self) -> torch.Tensor:
        """Per-element sample standard deviation; NaN where fewer than 2 samples counted."""
        if self.count is None:
            return torch.empty(0, dtype=torch.float64)
        var = self.m2 / (self.count - 1).clamp_min(1)
        return torch.where(self.count >= 2, var.clamp_min(0).sqrt(), torch.full_like(var, math.nan))

    def mean_std(self) -> float:
        """Average over elements of the per-element std (NaN elements ignored; NaN if none)."""
        std = self.std()
        std = std[~torch.isnan(std)]
        return float(std.mean()) if std.numel() else math.nan

    def samples(self) -> int:
        return 0 if self.count is None else int(self.count.max())


def _root_relative(j: torch.Tensor) -> torch.Tensor:
    return j - j[:, :1]


def _obj_rotation(outputs: dict[str, Any]) -> torch.Tensor:
    return quat_wxyz_to_matrix(outputs["obj_quat"].float())


# head name -> (prediction from outputs, (GT from batch, mask from batch) or None)
Extract = Callable[[dict[str, Any]], torch.Tensor]
HEADS: dict[str, tuple[Extract, tuple[Extract, Extract] | None]] = {
    "joints_3d": (lambda o: _root_relative(o["joints_3d"]), (lambda b: _root_relative(b["joints_3d"]), lambda b: b["hand_valid"])),
    "joints_3d_coarse": (
        lambda o: _root_relative(o["joints_3d_coarse"]),
        (lambda b: _root_relative(b["joints_3d"]), lambda b: b["hand_valid"]),
    ),
    "joint_conf": (lambda o: o["joint_conf"], None),
    "mano_shape": (lambda o: o["mano_shape"], (lambda b: b["mano_shape"], lambda b: b["mano_valid"])),
    "obj_t": (lambda o: o["obj_t"], (lambda b: b["obj_t"], lambda b: b["obj_valid"])),
    "obj_R": (_obj_rotation, (lambda b: b["obj_R"], lambda b: b["obj_valid"])),
    "obj_class_prob": (lambda o: o["obj_logits"].float().softmax(-1), None),
    "contact_prob": (lambda o: o["contact_prob"], (lambda b: b["contact_valid"].float(), lambda b: b["obj_valid"])),
    "contact_points": (lambda o: o["contact_points"], (lambda b: b["contact_points"], lambda b: b["contact_valid"])),
    "contact_force": (lambda o: o["contact_force"], None),
}  # fmt: skip


@dataclass
class HeadDiversity:
    """Spread of one head across samples. pred_std / gt_std in the head's units (see module
    docstring); ratio = pred_std / gt_std (None without ground truth); collapsed per the rule."""

    head: str
    pred_std: float
    gt_std: float | None
    ratio: float | None
    collapsed: bool
    samples: int
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiversityMonitor:
    """Accumulates per-head spreads over batches: `update(outputs, batch)`, then `result()`.

    Heads whose keys are missing from the outputs (or whose GT is missing from the batch) are
    skipped (GT-less comparison) rather than failing, so custom models can be checked too.
    """

    def __init__(self, ratio_threshold: float = COLLAPSE_RATIO, constant_std: float = CONSTANT_STD) -> None:
        self.ratio_threshold, self.constant_std = ratio_threshold, constant_std
        self.pred: dict[str, RunningMoments] = {}
        self.gt: dict[str, RunningMoments] = {}

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        for name, (pred_fn, gt_spec) in HEADS.items():
            try:
                pred = pred_fn(outputs)
            except KeyError:
                continue
            self.pred.setdefault(name, RunningMoments()).update(pred)
            if gt_spec is None:
                continue
            try:
                gt, mask = gt_spec[0](batch), gt_spec[1](batch)
            except KeyError:
                continue
            self.gt.setdefault(name, RunningMoments()).update(gt, mask.bool())

    def result(self) -> dict[str, HeadDiversity]:
        out = {}
        for name, moments in self.pred.items():
            pred_std = moments.mean_std()
            gt_std = self.gt[name].mean_std() if name in self.gt else None
            if gt_std is not None and math.isfinite(gt_std) and gt_std > 0:
                ratio = pred_std / gt_std
                collapsed = not ratio >= self.ratio_threshold  # NaN spread counts as collapsed
                rule = f"pred_std / gt_std < {self.ratio_threshold:g}"
            else:
                ratio, gt_std = None, None
                collapsed = not pred_std >= self.constant_std
                rule = f"pred_std < {self.constant_std:g} (no ground-truth spread)"
            out[name] = HeadDiversity(name, pred_std, gt_std, ratio, collapsed, moments.samples(), rule)
        return out


@torch.no_grad()
def prediction_diversity(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    ratio_threshold: float = COLLAPSE_RATIO,
    constant_std: float = CONSTANT_STD,
) -> dict[str, HeadDiversity]:
    """Run `model` (eval mode) over `batches` (batch-contract dicts) and return the spread of
    every head (see `HEADS`), with collapsed heads flagged. Collapsed heads are logged."""
    model.eval()
    monitor = DiversityMonitor(ratio_threshold, constant_std)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = batch_to_device(batch, device)
        monitor.update(model(batch), batch)
    result = monitor.result()
    for head in result.values():
        if head.collapsed:
            log.warning(
                "head %s looks collapsed: pred_std %.3g, ratio %s (%s)", head.head, head.pred_std, head.ratio, head.rule
            )
    return result
