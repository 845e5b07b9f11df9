"""Tests for amt.models.matching (Hungarian matching of object queries)."""

from __future__ import annotations

import itertools

import pytest
import torch

from amt.geometry.rotations import geodesic_angle, matrix_to_quat_wxyz, quat_wxyz_to_matrix
from amt.models.matching import (
    NO_OBJECT,
    MatchCost,
    gather_matched,
    match_objects,
    unmatched_query_mask,
)

Q, M, C1 = 5, 4, NO_OBJECT + 1


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=gen)
    return quat_wxyz_to_matrix(q / q.norm(dim=-1, keepdim=True))


def _batch(b: int, valid: list[list[bool]], gen: torch.Generator) -> dict:
    return {
        "obj_class": torch.randint(1, NO_OBJECT + 1, (b, M), generator=gen),
        "obj_t": torch.randn(b, M, 3, generator=gen) * 0.1,
        "obj_R": _random_rotations(b * M, gen).reshape(b, M, 3, 3),
        "obj_valid": torch.tensor(valid),
    }


def _outputs(b: int, gen: torch.Generator) -> dict:
    return {
        "obj_logits": torch.randn(b, Q, C1, generator=gen),
        "obj_t": torch.randn(b, Q, 3, generator=gen) * 0.1,
        "obj_quat": torch.randn(b, Q, 4, generator=gen),
    }


def _pair_cost(outputs, batch, b, q, s, cost: MatchCost) -> float:
    p = outputs["obj_logits"][b, q].softmax(-1)[batch["obj_class"][b, s] - 1]
    dt = (outputs["obj_t"][b, q] - batch["obj_t"][b, s]).norm()
    dr = geodesic_angle(quat_wxyz_to_matrix(outputs["obj_quat"][b, q]), batch["obj_R"][b, s])
    return float(-cost.class_weight * p + cost.translation_weight * dt + cost.rotation_weight * dr)


def test_matching_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    valid = [[True, True, False, True], [True, False, False, False]]
    batch, outputs = _batch(2, valid, gen), _outputs(2, gen)
    cost = MatchCost()
    for b, (pred, gt) in enumerate(match_objects(outputs, batch, cost)):
        slots = [s for s in range(M) if valid[b][s]]
        assert sorted(gt.tolist()) == slots  # every valid slot matched, invalid ones never
        got = sum(_pair_cost(outputs, batch, b, q, s, cost) for q, s in zip(pred.tolist(), gt.tolist()))
        best = min(
            sum(_pair_cost(outputs, batch, b, q, s, cost) for q, s in zip(perm, slots))
            for perm in itertools.permutations(range(Q), len(slots))
        )
        assert got == pytest.approx(best, abs=1e-5)


def test_exact_predictions_in_shuffled_queries_are_recovered():
    gen = torch.Generator().manual_seed(1)
    batch = _batch(1, [[True, True, True, False]], gen)
    perm = torch.tensor([3, 0, 4])  # query holding slot 0, 1, 2
    outputs = _outputs(1, gen)
    outputs["obj_t"][0, perm] = batch["obj_t"][0, :3]
    outputs["obj_quat"][0, perm] = matrix_to_quat_wxyz(batch["obj_R"][0, :3])
    ((pred, gt),) = match_objects(outputs, batch)
    assert dict(zip(gt.tolist(), pred.tolist())) == {0: 3, 1: 0, 2: 4}


def test_empty_samples_and_flat_indices():
    gen = torch.Generator().manual_seed(2)
    batch = _batch(3, [[False] * M, [True, False, True, False], [False] * M], gen)
    indices = match_objects(_outputs(3, gen), batch)
    assert [len(p) for p, _ in indices] == [0, 2, 0]
    flat = gather_matched(indices)
    assert flat.batch.tolist() == [1, 1] and flat.batch.dtype == torch.int64
    assert sorted(flat.slot.tolist()) == [0, 2]
    mask = unmatched_query_mask(flat, 3, Q)
    assert mask.shape == (3, Q) and int((~mask).sum()) == 2 and bool(mask[0].all())
    empty = gather_matched(match_objects(_outputs(1, gen), _batch(1, [[False] * M], gen)))
    assert empty.batch.numel() == empty.query.numel() == empty.slot.numel() == 0


def test_invalid_class_in_valid_slot_is_reported():
    gen = torch.Generator().manual_seed(3)
    batch = _batch(1, [[True, False, False, False]], gen)
    batch["obj_class"][0, 0] = 0
    with pytest.raises(ValueError, match="obj_class"):
        match_objects(_outputs(1, gen), batch)
