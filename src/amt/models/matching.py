"""Hungarian matching of object queries to ground-truth object slots (DETR-style).

Class logits follow the output contract: `obj_logits` is (B, Q, C + 1) with logit index
`class_id - 1` for YCB ids 1..C and the last index (`NO_OBJECT`) for "no object".
The matching is used by the losses (the evaluator scores the model's own top-scoring estimates
instead, docs/metrics.md). Its rotation and position costs are the symmetry-aware errors of
`amt.data.symmetry` (the same function as the loss), so a symmetric object predicted exactly up
to its symmetry costs nothing, and non-finite outputs give a finite (arbitrary) assignment
instead of an error: the loss then returns a non-finite total and the step is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from amt.data.symmetry import ObjectSymmetries, symmetric_pose_error
from amt.data.ycb import NUM_CLASSES
from amt.errors import finite_number, require
from amt.geometry.rotations import quat_wxyz_to_matrix

NO_OBJECT: int = NUM_CLASSES  # index of the "no object" logit
# stands in for non-finite costs (NaN / inf outputs): larger than any finite cost of sane outputs
_NONFINITE_COST = 1e6


@dataclass
class MatchCost:
    """Weights of the three matching costs.

    class_weight multiplies -p(gt class) (probability, in [-1, 0]); translation_weight
    multiplies the distance between the predicted and true symmetry centres in metres (the
    translation error for asymmetric classes); rotation_weight multiplies the symmetry-aware
    geodesic angle in radians (`amt.data.symmetry.symmetric_pose_error`). Defaults: 0.1 m costs
    1.0, 1 rad costs 0.5, a zero-probability class 1.0.
    """

    class_weight: float = 1.0
    translation_weight: float = 10.0
    rotation_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("class_weight", "translation_weight", "rotation_weight"):
            value = getattr(self, name)
            require(finite_number(value) and value >= 0, f"loss.match.{name}", value, "a number >= 0")


class MatchedIndices(NamedTuple):
    """Flat index tensors over all matched pairs of a batch (all int64, shape (N,)).

    `outputs[key][batch, query]` pairs with `batch_dict[key][batch, slot]`.
    """

    batch: torch.Tensor
    query: torch.Tensor
    slot: torch.Tensor


def predicted_rotation(prediction: Mapping) -> torch.Tensor:
    """(B, Q, 3, 3) object rotations of an output (or refinement-step) dict: `obj_R` (top level
    or in `aux`) when the model provides it (no quaternion round trip), else from `obj_quat`."""
    if "obj_R" in prediction:
        return prediction["obj_R"]
    aux_R = prediction.get("aux", {}).get("obj_R")
    return aux_R if aux_R is not None else quat_wxyz_to_matrix(prediction["obj_quat"])


def class_logit_index(class_id: torch.Tensor) -> torch.Tensor:
    """YCB ids (1..C) -> logit indices (0..C-1)."""
    return class_id - 1


def _check_keys(d: Mapping, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise KeyError(f"match_objects: {what} dict lacks {missing}; expected keys {list(keys)}")


def pair_costs(
    prob: torch.Tensor,
    pred_R: torch.Tensor,
    pred_t: torch.Tensor,
    gt_R: torch.Tensor,
    gt_t: torch.Tensor,
    gt_class: torch.Tensor,
    cost: MatchCost,
    sym: ObjectSymmetries,
) -> torch.Tensor:
    """(..., Q, n) matching cost of Q predictions (class probabilities (..., Q, C+1), rotations
    (..., Q, 3, 3), translations (..., Q, 3) m) against n ground-truth objects ((..., n, 3, 3),
    (..., n, 3) m, YCB ids (..., n)): `MatchCost`'s weighted sum; non-finite entries become a
    large finite constant. Leading dims (a batch) are optional and must agree."""
    index = (gt_class - 1).unsqueeze(-2).expand(*prob.shape[:-1], gt_class.shape[-1])
    c_class = -prob.gather(-1, index)  # (..., Q, n)
    c_rot, c_trans = symmetric_pose_error(
        pred_R.unsqueeze(-3), pred_t.unsqueeze(-2), gt_R.unsqueeze(-4), gt_t.unsqueeze(-3), gt_class.unsqueeze(-2), sym
    )
    total = cost.class_weight * c_class + cost.translation_weight * c_trans + cost.rotation_weight * c_rot
    return torch.nan_to_num(total, nan=_NONFINITE_COST, posinf=_NONFINITE_COST, neginf=-_NONFINITE_COST)


@torch.no_grad()
def match_objects(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    cost: MatchCost | None = None,
    symmetries: ObjectSymmetries | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Optimal one-to-one assignment of queries to valid GT slots, per sample.

    outputs: `obj_logits` (B, Q, C+1), `obj_t` (B, Q, 3) metres, `obj_quat` (B, Q, 4) wxyz
    (or `obj_R` (B, Q, 3, 3), top level or in `aux`, used when present).
    batch: `obj_class` (B, M) int64, `obj_t` (B, M, 3), `obj_R` (B, M, 3, 3), `obj_valid` (B, M).
    symmetries: the object symmetries (None: `ObjectSymmetries.from_tables()`, c = 0).
    Returns B pairs `(pred_idx, gt_idx)` of int64 CPU tensors with equal length
    min(Q, number of valid slots); `gt_idx` indexes the M slots (invalid slots never appear).
    Non-finite costs are replaced by a large constant, so NaN outputs never raise. The costs of
    the whole batch are built on the outputs' device and reach the host in one transfer; the
    assignment (scipy's `linear_sum_assignment`) then runs per sample on the host.
    """
    _check_keys(outputs, ("obj_logits", "obj_t", "obj_quat"), "outputs")
    _check_keys(batch, ("obj_class", "obj_t", "obj_R", "obj_valid"), "batch")
    cost = cost or MatchCost()
    prob = outputs["obj_logits"].detach().float().softmax(-1)
    pred_t = outputs["obj_t"].detach().float()
    pred_R = predicted_rotation(outputs).detach().float()
    sym = (symmetries or ObjectSymmetries.from_tables()).to(pred_t.device, torch.float32)
    valid = batch["obj_valid"].to(prob.device).bool()  # (B, M)
    gt_class = batch["obj_class"].to(prob.device)  # (B, M)
    # every slot's cost on the device in one go (invalid slots get class 1 and are dropped below)
    safe_class = torch.where(valid, gt_class, torch.ones_like(gt_class)).clamp(1, NUM_CLASSES)
    total = pair_costs(
        prob, pred_R, pred_t, batch["obj_R"].to(pred_R), batch["obj_t"].to(pred_t), safe_class, cost, sym
    )  # (B, Q, M)
    # one device-to-host transfer for the whole batch: costs, validity and class ids (exact in fp32)
    packed = torch.cat([total, valid[:, None].float(), gt_class[:, None].float()], dim=1).cpu().numpy()
    costs, valid_np, class_np = packed[:, :-2], packed[:, -2] > 0.5, packed[:, -1]
    result: list[tuple[torch.Tensor, torch.Tensor]] = []
    for b in range(costs.shape[0]):
        slots = np.flatnonzero(valid_np[b])
        if slots.size == 0:
            empty = torch.empty(0, dtype=torch.int64)
            result.append((empty, empty.clone()))
            continue
        ids = class_np[b, slots]
        if ((ids < 1) | (ids > NUM_CLASSES)).any():
            raise ValueError(
                f"match_objects: batch['obj_class'][{b}] has a valid slot with id outside 1..{NUM_CLASSES}: "
                f"{ids.astype(np.int64).tolist()}"
            )
        rows, cols = linear_sum_assignment(costs[b][:, slots])
        result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(slots[cols], dtype=torch.int64)))
    return result


def gather_matched(
    indices: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str | None = None
) -> MatchedIndices:
    """Flatten per-sample matches into (batch, query, slot) index tensors on `device`."""
    batch_idx = [torch.full_like(pred, b) for b, (pred, _) in enumerate(indices)]
    return MatchedIndices(
        batch=_cat(batch_idx, device),
        query=_cat([p for p, _ in indices], device),
        slot=_cat([g for _, g in indices], device),
    )


def _cat(parts: list[torch.Tensor], device: torch.device | str | None) -> torch.Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(parts).to(device)


def unmatched_query_mask(matched: MatchedIndices, batch_size: int, num_queries: int) -> torch.Tensor:
    """(B, Q) bool: True for queries assigned to no GT object (their target is `NO_OBJECT`)."""
    mask = torch.ones(batch_size, num_queries, dtype=torch.bool, device=matched.batch.device)
    mask[matched.batch, matched.query] = False
    return mask
