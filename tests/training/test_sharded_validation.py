"""Validation sharded across 2 gloo ranks gives the single-process metrics (`amt.training.validation`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Subset

from amt.data.loaders import CachedDataset
from amt.evaluation.evaluator import collect_predictions, concat_predictions
from amt.models import AMT
from amt.testing import free_port, set_rank_env
from amt.training.config import load_run_config
from amt.training.distributed import DistContext, cleanup, init_distributed
from amt.training.trainer import Trainer
from amt.training.validation import ShardedEvaluator, shard_bounds

from .conftest import IMAGE_SIZE, TRAIN_SPLIT


@pytest.mark.parametrize(("size", "world"), [(16, 2), (7, 3), (2, 4), (0, 2)])
def test_shards_are_contiguous_disjoint_and_cover_the_dataset(size: int, world: int):
    bounds = [shard_bounds(size, r, world) for r in range(world)]
    assert [i for a, b in bounds for i in range(a, b)] == list(range(size))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_concatenated_shards_equal_the_whole_collection(tiny_train_root: Path):
    dataset = CachedDataset(tiny_train_root / "cache" / f"{TRAIN_SPLIT}_{IMAGE_SIZE}")
    torch.manual_seed(0)
    model = AMT(load_run_config("tiny", [f"model.image_size={IMAGE_SIZE}"]).model)
    whole = collect_predictions(model, dataset, batch_size=4)
    parts = [collect_predictions(model, Subset(dataset, range(a, b)), batch_size=4) for a, b in [(0, 4), (4, 16)]]
    joined = concat_predictions(parts)
    assert joined.position.tolist() == list(range(16)) and joined.index.tolist() == whole.index.tolist()
    for name in ("joints_3d", "obj_t", "obj_R", "obj_prob", "contact_points", "contact_prob"):
        assert (getattr(joined, name) == getattr(whole, name)).all(), name
    assert all((joined.gt[k] == whole.gt[k]).all() for k in whole.gt)


def _worker(rank: int, world_size: int, port: int, cfg, out: str) -> None:
    set_rank_env(rank, world_size, port)
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        trainer = Trainer(cfg, ctx)
        assert isinstance(trainer.evaluator, ShardedEvaluator)
        metrics = trainer.validate()
        Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))
        del trainer  # free DDP's reducer before the process group goes (see amt.training.cli)
    finally:
        cleanup(ctx)


def test_two_process_sharded_validation_equals_single_process(tmp_path, tiny_run_config):
    # the same per-rank batch (8) on both sides: the single process sees the two shards as its batches
    val = [f"data.val_split={TRAIN_SPLIT}", "training.ema.enabled=false"]
    single = Trainer(tiny_run_config(tmp_path / "single", "training.batch_size=8", *val), DistContext())
    expected = single.validate()
    cfg = tiny_run_config(tmp_path / "ddp", "training.batch_size=16", *val)
    mp.spawn(_worker, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1  # broadcast to every rank
    assert set(rank0) == set(expected) and len(expected) > 20
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(rank0[name]), name
        else:
            assert rank0[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
