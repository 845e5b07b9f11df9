"""Non-finite model outputs: the loss returns a non-finite total without raising, the training step
is marked bad, and the trainer skips, counts and logs it on every rank alike."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from amt.models.amt import OUTPUT_KEYS
from amt.testing import free_port, random_batch, set_rank_env
from amt.training.callbacks import Callback
from amt.training.distributed import cleanup, init_distributed
from amt.training.losses import AMTLoss
from amt.training.step import TrainStep
from amt.training.trainer import Trainer

AUX_HEADS = ("hand_points", "obj_R", "contact_logit")
HEADS = (*OUTPUT_KEYS, *(f"aux.{k}" for k in AUX_HEADS))
OVERRIDES = ["training.batch_size=4", "data.augment=false", "training.ema.enabled=true", "training.log_every_steps=1"]


def _plant_nan(model: torch.nn.Module, plan: dict[int, str]) -> None:
    """A forward hook writing NaN into head `plan[call]` on the model's call number `call`."""
    calls = {"n": 0}

    def hook(module, args, out):
        head = plan.get(calls["n"])
        calls["n"] += 1
        if head is None:
            return out
        where, key = (out["aux"], head[4:]) if head.startswith("aux.") else (out, head)
        value = where[key].clone()
        value.view(-1)[0] = float("nan")
        where[key] = value
        return out

    model.register_forward_hook(hook)


@pytest.mark.parametrize("head", HEADS)
def test_loss_does_not_raise_and_the_step_is_marked_bad(head: str, tiny_model_and_batch) -> None:
    model, batch = tiny_model_and_batch
    _plant_nan(model, {0: head})
    step = TrainStep(model, AMTLoss(), torch.optim.SGD(model.parameters(), lr=0.0))
    result = step.accumulate([batch])
    assert result.nonfinite


@pytest.fixture
def tiny_model_and_batch():
    from amt.models import build_model

    torch.manual_seed(0)
    return build_model("tiny", load_backbone_weights=False, image_size=56).train(), random_batch(2, image_size=56)


def test_nan_in_every_head_in_turn_is_skipped_counted_and_the_run_finishes(
    tmp_path: Path, tiny_run_config, caplog: pytest.LogCaptureFixture
) -> None:
    plan = {1 + i: head for i, head in enumerate(HEADS)}  # step 1: the first head, step 2: the next, ...
    steps = len(HEADS) + 2
    trainer = Trainer(tiny_run_config(tmp_path, *OVERRIDES, f"training.max_steps={steps}"), evaluator=None)
    _plant_nan(trainer.model, plan)
    with caplog.at_level(logging.WARNING, logger="amt.training.trainer"):
        trainer.fit()
    assert trainer.step == steps
    assert trainer.skipped_steps == len(HEADS)
    assert sum("update skipped" in r.getMessage() for r in caplog.records) == len(HEADS)
    for name, p in trainer.model.state_dict().items():
        assert torch.isfinite(p).all(), name
    for name, p in trainer.ema.module.state_dict().items():
        assert torch.isfinite(p).all(), name


def _worker(rank: int, world_size: int, port: int, cfg, out: str) -> None:
    set_rank_env(rank, world_size, port)
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        trainer = Trainer(cfg, ctx, evaluator=None)
        if rank == 1:  # only rank 1 sees a NaN (its joints at step 1): rank 0 must skip the same step
            _plant_nan(trainer.model, {1: "joints_3d"})
        skipped = []
        trainer.callbacks.append(_Recorder(skipped))
        trainer.fit()
        finite = all(bool(torch.isfinite(p).all()) for p in trainer.model.state_dict().values())
        (Path(out) / f"rank{rank}.json").write_text(
            json.dumps({"skipped": skipped, "count": trainer.skipped_steps, "finite": finite})
        )
        torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
        del trainer  # free DDP's reducer before the process group goes (see amt.training.cli)
    finally:
        cleanup(ctx)


class _Recorder(Callback):
    """Records which steps were skipped."""

    def __init__(self, skipped: list[int]) -> None:
        self.skipped = skipped

    def on_step_end(self, trainer, info) -> None:
        if info.skipped:
            self.skipped.append(info.step)


def test_two_gloo_ranks_skip_the_same_step_and_neither_hangs(tmp_path: Path, tiny_run_config) -> None:
    cfg = tiny_run_config(tmp_path / "ddp", *OVERRIDES, "training.max_steps=3", "training.batch_size=8")
    procs = mp.spawn(_worker, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("a rank hung after the non-finite step")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2]  # StepInfo.step counts from 1
    assert ranks[0]["count"] == ranks[1]["count"] == 1
    assert ranks[0]["finite"] and ranks[1]["finite"]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"{name}: ranks disagree"
