"""The diversity and kl loss terms over the global batch of a distributed step
(`amt.training.losses.distributed_stats`), and DDP's unused-parameter search only when a stage
switches a term off (`amt.training.distributed.terms_switched_off`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from amt.models import build_model
from amt.testing import free_port, random_batch, set_rank_env
from amt.training.distributed import cleanup, init_distributed, terms_switched_off
from amt.training.losses import AMTLoss
from amt.training.losses.distributed_stats import cross_rank_statistics, gather_batch, reducing

BATCH, WORLD = 8, 2
TERMS = ("diversity", "kl")


def _take(value: Any, part: slice) -> Any:
    """The samples `part` of a batch or an output dict (tensors and lists with the batch first)."""
    if isinstance(value, dict):
        return {k: _take(v, part) for k, v in value.items()}
    if isinstance(value, list):
        return [_take(v, part) for v in value] if value and isinstance(value[0], dict) else value[part]
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == BATCH:
        return value[part]
    return value


def _outputs_and_batch() -> tuple[dict[str, Any], dict[str, Any]]:
    """The same tiny-model outputs (leaf tensors for the gradient check) and batch on every call."""
    torch.manual_seed(0)
    batch = random_batch(BATCH, image_size=64, seed=3)
    with torch.no_grad():
        out = build_model("tiny", image_size=64)(batch)
    for key in ("joints_3d", "obj_t", "obj_logits"):
        out[key] = out[key].clone().requires_grad_(True)
    return out, batch


def _terms_and_grads(outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    _, terms = AMTLoss()(outputs, batch)
    (terms["diversity"] + terms["kl"]).backward()
    res = {t: terms[t].detach() for t in TERMS}
    res.update({f"grad_{k}": outputs[k].grad for k in ("joints_3d", "obj_t", "obj_logits")})
    return res


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, WORLD, port)
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        outputs, batch = _outputs_and_batch()
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)

        def half() -> dict[str, Any]:  # this rank's samples, as fresh leaves
            local = _take(outputs, part)
            for key in ("joints_3d", "obj_t", "obj_logits"):
                local[key] = local[key].detach().requires_grad_(True)
            return local

        with cross_rank_statistics():
            assert reducing()
            reduced = _terms_and_grads(half(), _take(batch, part))
        assert not reducing()  # only inside the block
        plain = _terms_and_grads(half(), _take(batch, part))
        torch.save({"reduced": reduced, "plain": plain}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        cleanup(ctx)


def test_reduced_statistics_equal_the_single_process_ones_on_the_whole_batch(tmp_path: Path) -> None:
    outputs, batch = _outputs_and_batch()
    whole = _terms_and_grads(outputs, batch)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(ranks):
        for t in TERMS:
            torch.testing.assert_close(res["reduced"][t], whole[t], rtol=0, atol=1e-6, msg=f"rank {r} {t}")
        part = slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD)
        # every rank holds the same global term, so its backward reaches this rank's samples once
        # per rank; DDP's mean over the ranks then gives the single-process gradient
        for key in ("joints_3d", "obj_t", "obj_logits"):
            torch.testing.assert_close(
                res["reduced"][f"grad_{key}"] / WORLD, whole[f"grad_{key}"][part], rtol=1e-5, atol=1e-7
            )
    # per rank, without the reduction, the statistics are the local half's (they differ)
    assert not torch.allclose(ranks[0]["plain"]["diversity"], whole["diversity"], atol=1e-6) or not torch.allclose(
        ranks[0]["plain"]["kl"], whole["kl"], atol=1e-6
    )


def test_helpers_are_identity_without_a_process_group() -> None:
    x = torch.randn(4, 3)
    with cross_rank_statistics():
        assert not reducing() and gather_batch(x) is x


def test_unused_parameter_search_only_when_a_stage_switches_a_term_off() -> None:
    weights = {"contact": 0.4, "kl": 0.001, "diversity": 0.06}
    assert terms_switched_off(weights, []) == []
    assert terms_switched_off(weights, [{}, {"contact": 2.0}]) == []
    assert terms_switched_off(weights, [{"contact": 0.0}, {}]) == ["contact"]
    assert terms_switched_off({**weights, "kl": 0.0}, [{}]) == ["kl"]
