"""The trainer's loss takes the object tables of the data it trains on (issue 15, item 3), and the
batch-size probe builds its model without reading backbone weights (item 4's probe)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amt.data.object_tables import ObjectTables, core_radius_table
from amt.models.amt import AMT
from amt.testing import random_batch
from amt.training.batch_size import TrainingStepProbe
from amt.training.trainer import Trainer


def test_the_trainer_loss_uses_the_tables_of_its_data(tmp_path: Path, tiny_run_config, tiny_train_root) -> None:
    cfg = tiny_run_config(tmp_path / "run", "training.batch_size=4", "training.max_steps=1")
    trainer = Trainer(cfg, evaluator=None)
    want = ObjectTables.from_models(tiny_train_root / "models")  # the fake tree's random boxes
    torch.testing.assert_close(trainer.loss_fn.core_radius, want.core_radius)
    torch.testing.assert_close(trainer.loss_fn.symmetries.centres, want.symmetries.centres)
    assert not torch.allclose(trainer.loss_fn.core_radius, core_radius_table(), atol=1e-4)
    assert (tiny_train_root / "cache" / "object_tables.json").is_file()  # cached next to the split caches


def test_the_batch_size_probe_reads_no_backbone_weights(tmp_path: Path, tiny_run_config, monkeypatch) -> None:
    missing = tmp_path / "no_such_weights.pth"
    cfg = tiny_run_config(tmp_path / "run", f"model.backbone_weights={missing}")
    with pytest.raises(Exception, match="no_such_weights"):  # the run itself would read them
        AMT(cfg.model)
    probe = TrainingStepProbe(cfg, torch.device("cpu"), lambda b: random_batch(b, image_size=cfg.model.image_size))
    probe(2)  # one real training step at micro-batch 2, random backbone
