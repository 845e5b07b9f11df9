"""Training aids: loss-spike / non-finite skipping, per-module grad norms in TensorBoard,
batch_size=auto, sequence batches with the temporal loss."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from amt.data.augment import AugmentConfig, BatchAugment
from amt.training.batch_size import TrainingStepProbe, resolve_batch_size, search_batch_size
from amt.training.callbacks import GRAD_EVENTS_SUFFIX, Callback, GradientMonitor, LossSpikeGuard
from amt.training.config import StageConfig, load_run_config
from amt.training.distributed import DistContext
from amt.training.losses import AMTLoss, LossConfig
from amt.training.sequence import ClipAugment, SequenceSampler, clip_positions
from amt.training.trainer import Trainer


# --- loss spikes, non-finite losses, gradient monitor -------------------------------------------
def test_planted_nan_and_spike_steps_are_skipped_counted_logged_and_the_run_continues(
    tmp_path, tiny_run_config, caplog
):
    cfg = tiny_run_config(
        tmp_path / "aids", "training.batch_size=4", "training.max_steps=8", "training.learning_rate=1e-4",
        "data.augment=false", "training.loss_spike_factor=3", "training.grad_monitor_every=4", "logging.tensorboard=true",
    )  # fmt: skip
    cfg.training.stages = [StageConfig("main")]  # one stage: the spike history is never reset
    trainer = Trainer(cfg, evaluator=None)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, LossSpikeGuard))
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, GradientMonitor))
    loss_forward = trainer.loss_fn.forward
    planted = {2: float("nan"), 6: 100.0}  # step index -> factor on the loss

    def poisoned(outputs, batch):
        total, terms = loss_forward(outputs, batch)
        return total * planted.get(trainer.step, 1.0), terms

    trainer.loss_fn.forward = poisoned
    records = []

    class Record(Callback):
        def on_step_end(self, trainer, info):
            records.append((info.skipped, trainer.model.hand.out[2].weight.detach().clone()))

    trainer.callbacks.append(Record())
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert [r[0] for r in records] == [False, False, True, False, False, False, True, False]
    assert trainer.step == 8 and trainer.skipped_steps == 2 and guard.spikes == 1
    assert torch.equal(records[5][1], records[6][1])  # the spike step changed nothing
    assert "non-finite loss or gradient, update skipped" in caplog.text and "loss spike" in caplog.text

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "aids" / "tensorboard").glob(f"*{GRAD_EVENTS_SUFFIX}"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"grad_norm/hand.out", "grad_norm/objects.out", "grad_norm/backbone.model"} <= set(tags)
    steps = [e.step for e in acc.Scalars("grad_norm/hand.out")]
    assert steps == [4, 8] and monitor.last_step == 8
    assert acc.Scalars("grad_norm/hand.out")[-1].value == pytest.approx(monitor.last["hand.out"], rel=1e-6)


# --- batch_size=auto ------------------------------------------------------------------------------
def _memory_limit(max_batch: int, calls: list[int]):
    def try_step(b: int) -> None:
        calls.append(b)
        if b > max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (planted: {b} > {max_batch})")

    return try_step


def test_search_finds_the_largest_fitting_micro_batch_in_few_probes():
    calls: list[int] = []
    size, probes = search_batch_size(_memory_limit(37, calls), high=1024)
    assert size == 37 and len(calls) <= 2 * math.log2(1024)
    assert [b for b, ok in probes if not ok] and all(ok == (b <= 37) for b, ok in probes)
    assert search_batch_size(_memory_limit(37, []), high=16)[0] == 16  # the bound holds
    with pytest.raises(RuntimeError, match="even a micro-batch of 1"):
        search_batch_size(_memory_limit(0, []), high=8)

    def broken(b: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        search_batch_size(broken, high=8)


def test_auto_batch_size_with_an_injected_memory_limit_and_cpu_fallback(tmp_path, tiny_run_config, caplog):
    cfg = tiny_run_config(
        tmp_path / "auto", "training.batch_size=auto", "training.grad_accum_steps=2", "training.auto_batch_max=64",
        "training.auto_batch_fallback=8", "training.max_steps=1",
    )  # fmt: skip
    calls: list[int] = []
    assert resolve_batch_size(cfg, DistContext(), _memory_limit(12, calls)) == 24  # micro 12 x 2 accumulation
    assert max(calls) <= 32  # bound 64 global = 32 per micro-batch
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg, evaluator=None)
    assert trainer.cfg.training.batch_size == 8 and trainer.micro_batch == 4
    assert "auto_batch_fallback=8" in caplog.text
    probe = TrainingStepProbe(cfg, torch.device("cpu"), lambda b: next(iter(trainer.data.epoch(0, 0, 1, b, 1)))[0])
    probe(2)  # one real step at micro-batch 2 runs and leaves no gradients behind
    assert all(p.grad is None for p in probe.model.parameters())


# --- sequence batches -----------------------------------------------------------------------------
def _meta(serial: str, frames: list[int]) -> list[dict]:
    return [{"subject": "s", "sequence": "q", "serial": serial, "frame": f} for f in frames]


def test_clips_are_consecutive_frames_of_one_camera():
    meta = _meta("A", [0, 2, 4, 6, 8, 12, 14]) + _meta("B", [5, 3, 1]) + _meta("C", [0])
    clips = clip_positions(meta, 2)
    assert clips.tolist() == [[0, 1], [2, 3], [5, 6], [9, 8]]  # step 2 in A (gap 8->12), B sorted by frame
    assert clip_positions(meta, 3).tolist() == [[0, 1, 2], [9, 8, 7]]
    sampler = SequenceSampler(meta, 2, seed=0)
    chunks = sampler.chunks(epoch=0, first_step=0, stop_step=2, micro=2, accum=1)
    assert sorted(c.tolist() for c in chunks) != [] and all(c.tolist() in clips.tolist() for c in chunks)
    assert [c.tolist() for c in chunks] == [c.tolist() for c in sampler.chunks(0, 0, 2, 2, 1)]  # deterministic
    assert sampler.steps_per_epoch(4) == 2
    with pytest.raises(ValueError, match="data.sequence_length=2 must divide"):
        sampler.chunks(0, 0, 1, 3, 1)
    with pytest.raises(ValueError, match="no 6 consecutive frames"):
        SequenceSampler(meta, 6, seed=0)


def test_clip_augment_shares_parameters_within_a_clip():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), generator=g, dtype=torch.uint8).expand(4, 3, 32, 32).clone()
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]).expand(4, 3, 3).clone()
    batch = {"image": image, "K": K, "joints_3d": torch.ones(4, 21, 3), "joints_2d": torch.ones(4, 21, 2)}
    out = ClipAugment(BatchAugment(AugmentConfig(noise_std=0.0)), 2)(batch, torch.Generator().manual_seed(1))
    assert torch.equal(out["image"][0], out["image"][1]) and torch.equal(out["K"][2], out["K"][3])
    assert not torch.equal(out["image"][0], out["image"][2])


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> Path:
    """Subject 6, one sequence, 8 cameras x 3 frames (24 samples), 56-px cache of s1_val."""
    from amt.data.cache import build_cache
    from amt.data.testing import write_fake_dexycb

    root = write_fake_dexycb(tmp_path_factory.mktemp("clips"), subjects=[6], sequences_per_subject=1, frames=3)
    build_cache(root, "s1_val", root / "cache" / "s1_val_56", size=56, workers=1, progress=False)
    return root


def test_temporal_loss_is_active_on_clips_and_its_gradient_reaches_the_hand_head(clip_root, tmp_path):
    overrides = [
        f"data.root={clip_root}", "data.split=s1_val", "data.val_split=null", "data.image_size=56", "model.image_size=56",
        "data.sequence_length=3", "training.batch_size=6", "training.max_steps=1", "training.device=cpu",
        f"training.output_dir={tmp_path / 'run'}", "checkpoint.every_epochs=0", "logging.tensorboard=false",
        "logging.progress=false",
    ]  # fmt: skip
    trainer = Trainer(load_run_config("tiny", overrides), evaluator=None)
    assert isinstance(trainer.augment, ClipAugment) and trainer.steps_per_epoch == 4  # 8 clips of 3, 2 per step
    batch = next(iter(trainer.data.epoch(0, 0, 1, 6, 1)))[0]
    assert batch["sequence_length"] == 3
    for clip in (batch["meta"][:3], batch["meta"][3:]):
        assert len({m["serial"] for m in clip}) == 1 and [m["frame"] for m in clip] == [0, 1, 2]

    model = trainer.model
    loss = AMTLoss(LossConfig())
    _, terms = loss(model(batch), batch)
    assert float(terms["temporal"].detach()) > 0
    model.zero_grad()
    terms["temporal"].backward()
    grads = [p.grad for p in model.hand.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    _, single = loss(model(batch), {**batch, "sequence_length": 1})
    assert float(single["temporal"].detach()) == 0.0

    temporal = []

    class Record(Callback):
        def on_step_end(self, trainer, info):
            temporal.append(info.terms["temporal"])

    trainer.callbacks.append(Record())
    trainer.fit()  # one optimizer step on two clips, through the trainer's own loop
    assert len(temporal) == 1 and temporal[0] > 0
