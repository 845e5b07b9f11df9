"""GPU memory planning (issue 15, item 4) and batched cache reads (issue 17), on the CPU: the
GPU-resident loader's code path runs with device="cpu" and the free memory is injected.

- a rank's cache shard is placed only when it fits the budget (`data.gpu_cache_max_gb`, else a
  fraction of the free memory); past it the loader reads pinned host memory with prefetch and
  says so, giving the same batches;
- under DDP each rank holds only its own shard: disjoint, together the whole split;
- `training.batch_size=auto` probes after the cache is placed, on its samples, and the size it
  picks then trains;
- `CachedDataset.__getitems__` (one fancy-index per array) equals per-item reads.
"""

from __future__ import annotations

import logging

import pytest
import torch

import amt.training.data as training_data
import amt.training.trainer as trainer_module
from amt.data.loaders import CacheBudgetError, CachedDataset, GPUCachedDataset, Prefetcher, collate
from amt.training.batch_size import TrainingStepProbe, resolve_batch_size
from amt.training.config import DataConfig
from amt.training.data import TrainBatches
from amt.training.distributed import DistContext
from amt.training.trainer import Trainer

from .conftest import IMAGE_SIZE, TRAIN_SPLIT

CPU = torch.device("cpu")


@pytest.fixture
def folder(tiny_train_root):
    return tiny_train_root / "cache" / f"{TRAIN_SPLIT}_{IMAGE_SIZE}"


def _free(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(training_data, "free_device_memory", lambda device: nbytes)


def _data(**kw) -> DataConfig:
    return DataConfig(loader="gpu", augment=False, **kw)


@pytest.mark.parametrize("mode", ["disk", "memmap", "ram"])
@pytest.mark.parametrize("normalize", [True, False])
def test_batched_reads_equal_per_item_reads(folder, mode, normalize):
    dataset = CachedDataset(folder, mode, normalize, rank=1, world_size=2)
    items = [3, 0, 5, 3, 7]
    batched, single = dataset.__getitems__(items), [dataset[i] for i in items]
    for a, b in zip(batched, single, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    # what the DataLoader makes of it: the same batch as collating the items
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[items], collate_fn=collate)
    got, want = next(iter(loader)), collate(single)
    assert all(torch.equal(got[k], want[k]) for k in want if isinstance(want[k], torch.Tensor))


def test_the_placed_shard_never_exceeds_the_budget(folder, monkeypatch, caplog):
    need = GPUCachedDataset.shard_bytes(folder)
    _free(monkeypatch, 3 * need)  # default budget: half the free memory = 1.5 x the cache
    fits = TrainBatches(folder, _data(), DistContext(device=CPU), seed=0)
    assert fits.kind == "gpu" and fits.dataset.nbytes == need <= 1.5 * need
    with pytest.raises(CacheBudgetError, match="data.gpu_cache_max_gb"):  # the loader itself refuses too
        GPUCachedDataset(folder, CPU, max_bytes=need - 1)

    _free(monkeypatch, need)  # budget need / 2: over it
    with caplog.at_level(logging.WARNING, logger="amt.training.data"):
        falls_back = TrainBatches(folder, _data(), DistContext(device=CPU), seed=0)
    assert falls_back.kind == "dataset" and falls_back.prefetch
    assert any("pinned host memory with asynchronous prefetch" in r.getMessage() for r in caplog.records)
    explicit = TrainBatches(folder, _data(gpu_cache_max_gb=need / 2e9), DistContext(device=CPU), seed=0)
    assert explicit.kind == "dataset"
    # the fallback (prefetched) gives the batches the device-resident cache gives
    for a, b in zip(fits.epoch(1, 0, 3, micro=4, accum=1), falls_back.epoch(1, 0, 3, micro=4, accum=1), strict=True):
        assert all(torch.equal(a[0][k], b[0][k]) for k in ("image", "index", "joints_3d"))


def test_ranks_hold_disjoint_shards_covering_the_split(folder, monkeypatch):
    world = 3
    whole = GPUCachedDataset.shard_bytes(folder)
    _free(monkeypatch, whole)  # budget whole / 2: the whole cache does not fit, a third does
    shards = []
    for rank in range(world):
        batches = TrainBatches(folder, _data(), DistContext(rank=rank, world_size=world, device=CPU), seed=0)
        assert batches.kind == "gpu" and batches.dataset.nbytes <= whole / 2
        shards.append(set(batches.dataset.labels["index"].tolist()))
    assert all(not (shards[i] & shards[j]) for i in range(world) for j in range(i + 1, world))
    assert set().union(*shards) == set(CachedDataset(folder).__getitems__(list(range(16)))[i]["index"].item()
                                       for i in range(16))  # fmt: skip


def test_batch_size_auto_probes_the_placed_cache_and_its_size_trains(tmp_path, tiny_run_config, monkeypatch):
    _free(monkeypatch, 10**12)
    seen = {}

    def limited(cfg, ctx, try_step=None, samples=None):
        placed = samples.__self__  # the trainer's TrainBatches: the cache was placed before the probe
        seen["kind"], seen["cache"] = placed.kind, placed.dataset.nbytes
        probe = TrainingStepProbe(cfg, ctx.device, samples)
        per_sample = samples(1)["image"].nbytes
        limit = placed.dataset.nbytes + 5.5 * per_sample  # an injected device with this much memory

        def step(b: int) -> None:
            if placed.dataset.nbytes + b * per_sample > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            probe(b)

        return resolve_batch_size(cfg, ctx, try_step=step)

    monkeypatch.setattr(trainer_module, "resolve_batch_size", limited)
    cfg = tiny_run_config(tmp_path / "run", "training.batch_size=auto", "training.auto_batch_max=16",
                          "data.loader=gpu", "training.max_steps=2")  # fmt: skip
    trainer = Trainer(cfg, evaluator=None)
    assert seen["kind"] == "gpu" and seen["cache"] > 0
    assert cfg.training.batch_size == trainer.micro_batch == 5
    trainer.fit()
    assert trainer.step == 2


def test_prefetcher_keeps_order_raises_errors_and_stops_early():
    assert list(Prefetcher(range(7), depth=2)) == list(range(7))

    def failing():
        yield 1
        raise OSError("disk read failed")

    got = []
    with pytest.raises(OSError, match="disk read failed"):
        for item in Prefetcher(failing()):
            got.append(item)
    assert got == [1]
    it = iter(Prefetcher(range(10**6), depth=2))
    assert next(it) == 0
    it.close()  # the consumer stops early: the thread is told to stop and joins
