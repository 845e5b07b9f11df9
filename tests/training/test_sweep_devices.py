"""One sweep trial per GPU (issue 15, item 5), tested without GPUs: `--devices` gives each worker
process its own device, and the Python `Trainer` trains on `training.device`."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import amt.training.sweep_workers as sweep_workers
import amt.training.trainer as trainer_module
from amt.training.sweep import main as sweep_main
from amt.training.sweep_workers import assign_devices, in_process, worker_argv
from amt.training.trainer import Trainer


def test_each_worker_gets_its_own_gpu():
    workers = assign_devices("0,1,2,3", visible="")
    assert [w.device for w in workers] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [w.env for w in workers] == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)]
    assert {w.override for w in workers} == {"training.device=cuda"}  # cuda:0 of its one visible GPU
    # indices count within the parent's visible GPUs
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in assign_devices("0,cuda:2", visible="4,5,6,7")] == ["4", "6"]
    assert [(w.device, w.env, w.override) for w in assign_devices("cpu,cpu")] == [
        ("cpu", {}, "training.device=cpu")
    ] * 2
    for bad, match in [("0,0", "listed twice"), ("gpu1", "neither"), ("3", "not among")]:
        with pytest.raises(ValueError, match=match):
            assign_devices(bad, visible="0,1")


def test_worker_arguments_drop_devices_and_keep_the_overrides_together():
    argv = ["--trials", "4", "--devices", "0,1", "--out", "o", "data.root=r", "training.max_steps=2"]
    worker = assign_devices("1", visible="")[0]
    assert worker_argv(argv, worker) == [
        "--worker", "training.device=cuda", "--trials", "4", "--out", "o", "data.root=r", "training.max_steps=2",
    ]  # fmt: skip
    assert worker_argv(["--devices=0,1", "x=1"], worker) == ["--worker", "training.device=cuda", "x=1"]


def test_one_device_runs_in_this_process(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert in_process(assign_devices("1")) == ["training.device=cuda"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert in_process(assign_devices("0,1", visible="")) == [] and in_process([]) == []


def test_sweep_starts_one_worker_process_per_device(tmp_path, monkeypatch, capsys):
    started = []

    class FakeProcess:
        def __init__(self, cmd, env):
            started.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(sweep_workers.subprocess, "Popen", FakeProcess)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    code = sweep_main(["--space", "tiny", "--out", str(tmp_path), "--devices", "0,1,2,3", "--trials", "2",
                       "training.max_steps=1"])  # fmt: skip
    assert code == 1  # the fake workers finished no trial
    assert len(started) == 4
    for i, (cmd, env) in enumerate(started):
        assert cmd[:4] == [sys.executable, "-m", "amt.cli", "sweep"] and "--devices" not in cmd
        assert cmd[4:6] == ["--worker", "training.device=cuda"] and cmd[-1] == "training.max_steps=1"
        assert env["CUDA_VISIBLE_DEVICES"] == str(i)
    assert (tmp_path / "study.db").exists()  # created once by the parent, before the workers


def test_the_python_trainer_trains_on_training_device(tmp_path, tiny_run_config, monkeypatch):
    asked = []
    real = trainer_module.resolve_device

    def recording(name, local_rank=0):
        asked.append(name)
        return real(name, local_rank)

    monkeypatch.setattr(trainer_module, "resolve_device", recording)
    trainer = Trainer(tiny_run_config(tmp_path / "run", "training.batch_size=16", "training.max_steps=1"),
                      evaluator=None)  # fmt: skip
    assert asked == ["cpu"] and trainer.device == torch.device("cpu")
    assert next(trainer.model.parameters()).device == torch.device("cpu")
