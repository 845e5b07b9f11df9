"""The term functions of the AMT losses (`amt.training.losses.loss.AMTLoss` composes them).

Distances are in metres, angles in radians. Masks are (B,) bool "this sample has the label".
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from amt.data.symmetry import ObjectSymmetries, symmetric_rotation_error
from amt.geometry.hand_skeleton import BEND_LIMIT_DEG, BONES, NUM_JOINTS, PARENTS, TIP_JOINTS

_SELF_PARENTS = [max(p, 0) for p in PARENTS]  # the wrist as its own parent: a zero bone


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` (same leading shape); 0 (graph kept) when the mask is empty."""
    mask = mask.to(device=values.device, dtype=torch.bool)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(values)
    # where, not multiply: labels of unlabelled samples may be anything (-1, inf, nan)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def valid_labels(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Labels `x` (B, ...) with the rows of unlabelled samples (`valid` (B,) False) set to 0, so
    whatever placeholder they hold (-1, nan) cannot reach a value or a gradient."""
    keep = valid.to(device=x.device, dtype=torch.bool).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, torch.zeros_like(x))


def sequence_length(batch: Mapping) -> int:
    """`batch["sequence_length"]` as an int (1 when absent); a collated (B,) tensor must hold
    one value."""
    values = torch.as_tensor(batch.get("sequence_length", 1)).flatten().unique()
    if values.numel() != 1:
        raise ValueError(f"batch['sequence_length'] must hold one clip length, got {values.tolist()}")
    return int(values[0])


def graph_zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph of `like`, so backward never breaks."""
    return like.sum() * 0.0


def joint_weights(tip_weight: float, device=None) -> torch.Tensor:
    """(21,) per-joint weights, fingertips `tip_weight`, others 1, normalised to mean 1."""
    w = torch.ones(NUM_JOINTS, device=device)
    w[list(TIP_JOINTS)] = tip_weight
    return w / w.mean()


def bone_vectors(joints: torch.Tensor) -> torch.Tensor:
    """(B, 21, 3) -> (B, 21, 3): each joint minus its parent (the wrist's row is 0)."""
    return joints - joints[:, _SELF_PARENTS]


def hand_joint_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor, beta: float,
    bone_weight: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """Smooth-L1 on absolute plus root-relative joints, plus `bone_weight` x the same on the bone
    vectors (`bone_vectors`), per-joint weighted (a bone carries its child joint's weight).

    The root-relative term sums the errors of every bone from the wrist, so a finger's tip pays
    for its palm's orientation; the bone term gives each bone's direction and length its own
    signal (docs/losses.md "Hand"). pred, gt: (B, 21, 3) metres; valid: (B,) bool; weights:
    (21,). Returns metres (scalar).
    """

    def per_joint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.smooth_l1_loss(a, b, reduction="none", beta=beta).sum(-1) * weights).mean(-1)

    gt = gt.to(pred)
    total = per_joint(pred, gt) + per_joint(pred - pred[:, :1], gt - gt[:, :1])
    if bone_weight:
        total = total + bone_weight * per_joint(bone_vectors(pred), bone_vectors(gt))
    return masked_mean(total, valid)


def heatmap_kl(scores: torch.Tensor, uv: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """KL(target || softmax(scores)) per heatmap, nats. scores: (B, K, C) logits over C cells;
    uv: (B, K, 2) true pixels; centres: (C, 2) the cells' pixel centres; sigma: pixels. The
    target is a Gaussian over the cell centres around the true pixel: the dense signal 2D pose
    heatmaps learn from, which a soft-argmax's coordinate loss gives only through the weighted
    mean. Returns (B, K)."""
    d2 = ((uv.to(scores)[:, :, None] - centres.to(scores)) ** 2).sum(-1)  # (B, K, C)
    log_target = torch.log_softmax(-d2 / (2 * float(sigma) ** 2), dim=-1)
    return (log_target.exp() * (log_target - torch.log_softmax(scores, dim=-1))).sum(-1)


def rotation_error(
    pred_R: torch.Tensor, gt_R: torch.Tensor, class_id: torch.Tensor, symmetries: ObjectSymmetries | None = None
) -> torch.Tensor:
    """(N, 3, 3) x2, (N,) YCB ids -> (N,) radians, symmetry-aware: `amt.data.symmetry.
    symmetric_rotation_error` (min over the class's discrete symmetries, the axis angle for a
    continuous one; the plain geodesic angle for asymmetric classes). symmetries: None for
    `ObjectSymmetries.from_tables()` (the rotation error does not depend on the centres)."""
    return symmetric_rotation_error(pred_R, gt_R, class_id, symmetries or ObjectSymmetries.from_tables())


def nan_safe_bce(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Element-wise binary cross-entropy (nats) of probabilities `prob` (clamped to [eps, 1 - eps])
    against targets in [0, 1]. Unlike `F.binary_cross_entropy` it never raises (nor asserts on
    CUDA) for a NaN input or target: the value is NaN and the training step is skipped."""
    p = prob.clamp(eps, 1 - eps)
    return -(target * p.log() + (1 - target) * (1 - p).log())


def focal_bce(
    log_p: torch.Tensor, log_not_p: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float
) -> torch.Tensor:
    """Element-wise focal binary cross-entropy (nats) from log p and log(1 - p).

    -2 alpha_t (1 - p_t)^gamma log p_t; alpha = 0.5, gamma = 0 is the plain BCE.
    """
    positive = target.to(torch.bool)
    log_p_true = torch.where(positive, log_p, log_not_p)
    a = torch.where(positive, torch.full_like(log_p, alpha), torch.full_like(log_p, 1 - alpha))
    return -2.0 * a * (1 - log_p_true.exp()).pow(gamma) * log_p_true


def bend_angles(joints: torch.Tensor) -> torch.Tensor:
    """(B, 21, 3) -> (B, 15) radians: angle between incoming and outgoing bone at each
    articulated joint in `BEND_LIMIT_DEG` order (0 = straight)."""
    ids = list(BEND_LIMIT_DEG)
    bones = bone_vectors(joints)
    incoming, outgoing = bones[:, ids], bones[:, [j + 1 for j in ids]]  # joint j + 1's parent is j
    cross = torch.linalg.cross(incoming, outgoing).norm(dim=-1)
    return torch.atan2(cross, (incoming * outgoing).sum(-1))


def bone_lengths(joints: torch.Tensor) -> torch.Tensor:
    """(B, 21, 3) -> (B, 20) metres, `BONES` order."""
    return bone_vectors(joints)[:, [c for _, c in BONES]].norm(dim=-1)


def batch_std(x: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over dim 0, with an epsilon so a collapsed batch
    (std 0) still has a finite gradient."""
    return (x.var(dim=0, unbiased=False) + 1e-12).sqrt()
