"""`amt sweep`: spaces (Hydra group, overrides, W&B yaml), pruning, and a real tiny sweep on CPU
that is killed mid-trial, resumed without losing finished trials, and whose best trial trains."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from amt.cli import main as amt_main
from amt.training.sweep import PruningCallback, from_wandb, load_space, suggest
from amt.training.sweep import main as sweep_main

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_default_space_is_the_system_description_and_overridable():
    space = load_space("default")
    assert space.params["lr"].values == [1e-4, 5e-4, 1e-3, 5e-3]
    assert space.params["batch"].values == [16, 32, 64] and space.params["hidden"].values == [512, 768, 1024]
    assert space.params["w_hand_coarse"].key == "loss.hand_coarse" and space.params["w_hand_coarse"].around_default == 2
    small = load_space("default", ["params.lr.values=[0.01]", "direction=maximize"])
    assert small.params["lr"].values == [0.01] and small.direction == "maximize"
    with pytest.raises(ValueError, match="direction"):
        load_space("default", ["direction=sideways"])


def test_around_default_samples_within_a_factor_of_the_configured_weight():
    space = load_space("tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), space, {"loss": {"hand_coarse": 1.326}, "training": {}, "model": {}})
        assert 1.326 / 2 <= params["loss.hand_coarse"] <= 1.326 * 2
        assert params["training.batch_size"] in (4, 8)


def test_wandb_sweep_yaml_translates_to_the_same_space(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "program": "train.py", "method": "random",
        "metric": {"name": "val/hand.procrustes.mpjpe", "goal": "minimize"},
        "parameters": {
            "training.learning_rate": {"values": [1e-4, 5e-4, 1e-3, 5e-3]},
            "training.batch_size": {"values": [16, 32, 64]},
            "loss.contact": {"distribution": "log_uniform_values", "min": 0.1, "max": 1.0},
            "loss.physics": {"distribution": "log_uniform", "min": math.log(0.01), "max": math.log(0.1)},
            "model.decoder_layers": {"distribution": "int_uniform", "min": 2, "max": 6},
            "training.epochs": {"value": 5},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 2},
    }))  # fmt: skip
    space = from_wandb(path)
    assert space.metric == "hand.procrustes.mpjpe" and space.direction == "minimize"
    assert space.sampler == "random" and space.pruner == "hyperband" and space.fixed == {"training.epochs": 5}
    lr = space.params["training_learning_rate"]
    assert lr.key == "training.learning_rate" and lr.values == [1e-4, 5e-4, 1e-3, 5e-3]
    physics = space.params["loss_physics"]
    assert physics.log and physics.low == pytest.approx(0.01) and physics.high == pytest.approx(0.1)
    trial = optuna.create_study().ask()
    params = suggest(trial, space, {})
    assert isinstance(params["model.decoder_layers"], int) and 0.1 <= params["loss.contact"] <= 1.0


def test_pruning_callback_reports_per_epoch_and_prunes():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=100.0))
    trial = study.ask()
    callback = PruningCallback(trial, "hand.root-relative.mpjpe")

    class FakeTrainer:
        epoch = 1

    callback.on_validation_end(FakeTrainer(), {"hand.root-relative.mpjpe": 50.0})
    FakeTrainer.epoch = 2
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(FakeTrainer(), {"hand.root-relative.mpjpe": 150.0})
    assert study.trials[0].intermediate_values == {1: 50.0, 2: 150.0}


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> Path:
    """Subject 6, one sequence, 8 cameras (8 samples), 56-px cache of s1_val."""
    from amt.data.cache import build_cache
    from amt.data.testing import write_fake_dexycb

    root = write_fake_dexycb(tmp_path_factory.mktemp("sweep_data"), subjects=[6], sequences_per_subject=1)
    build_cache(root, "s1_val", root / "cache" / "s1_val_56", size=56, workers=1, progress=False)
    return root


def _mid_trial(storage: str) -> bool:
    """Both workers have claimed trials, one trial is complete and one is running with its
    parameters drawn (False while a worker's write locks the database)."""
    try:
        trials = optuna.load_study(study_name="t", storage=storage).get_trials(deepcopy=False)
    except OperationalError:
        return False
    running = [t for t in trials if t.state == TrialState.RUNNING and t.params]
    workers = {t.user_attrs.get("worker") for t in trials} - {None}
    return bool(running) and len(workers) == 2 and any(t.state == TrialState.COMPLETE for t in trials)


def _finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tiny_sweep_with_two_workers_resumes_after_a_kill_and_its_best_trial_trains(sweep_root, tmp_path):
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    args = [
        "--config-name", "tiny", "--space", "tiny", "--study", "t", "--out", str(out), "--trials", "4", "--seed", "0",
        "--heartbeat", "1", "--grace", "2",
        f"data.root={sweep_root}", "data.split=s1_val", "data.val_split=s1_val", "data.image_size=56",
        "model.image_size=56", "training.device=cpu", "training.max_steps=8", "checkpoint.every_epochs=0",
        "logging.tensorboard=false", "logging.progress=false", "training.ema.enabled=false",
    ]  # fmt: skip
    out.mkdir()
    optuna.create_study(study_name="t", storage=storage)  # both workers load it (no creation race)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    workers = [
        subprocess.Popen([sys.executable, "-m", "amt", "sweep", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        for f in logs
    ]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            time.sleep(0.5)
            if not _mid_trial(storage):
                continue
            # Freeze both workers, then look again: a trial seen running may have finished since,
            # and only a frozen sweep is killed at a known point (a kill that lands after the last
            # trial finished would leave nothing to resume).
            for w in workers:
                w.send_signal(signal.SIGSTOP)
            if _mid_trial(storage):
                break
            for w in workers:
                w.send_signal(signal.SIGCONT)
        assert all(w.poll() is None for w in workers), (tmp_path / "worker0.log").read_text()[-3000:]
    finally:
        for w in workers:  # the whole sweep dies, mid-trial
            w.send_signal(signal.SIGKILL)
            w.wait()
        for f in logs:
            f.close()
    study = optuna.load_study(study_name="t", storage=storage)
    before = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    killed = {t.number: t.params for t in study.get_trials() if t.state == TrialState.RUNNING}
    assert len({t.user_attrs["worker"] for t in study.get_trials()}) == 2  # two workers shared the study
    assert before and killed
    time.sleep(3)  # past the grace period: the killed trials' heartbeats are stale

    assert sweep_main(args) == 0  # the same command resumes the sweep
    study = optuna.load_study(study_name="t", storage=storage)
    trials = study.get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before  # finished trials kept
    assert len(_finished(study)) == 4
    for number, params in killed.items():
        assert trials[number].state == TrialState.FAIL
        retried = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == number]
        assert retried  # the killed trial ran again, with the same parameters once it had drawn them
        assert not params or retried[0].params == params

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(trials) and {r["state"] for r in rows} >= {"COMPLETE", "FAIL"}
    assert "| COMPLETE" in (out / "results.md").read_text() and (out / "importance.png").stat().st_size > 1000

    best = study.best_trial
    run = tmp_path / "best_run"
    argv = [
        "train",
        f"@{out / 'best_overrides.txt'}",
        f"training.output_dir={run}",
        "training.max_steps=1",
        "data.val_split=null",
    ]
    assert amt_main(argv) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["training"]["learning_rate"] == pytest.approx(best.params["lr"])
    assert (
        config["model"]["hidden_dim"] == best.params["hidden"]
        and config["training"]["batch_size"] == best.params["batch"]
    )


def test_a_bad_shared_override_stops_the_sweep_before_any_trial(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep_main(["--config-name", "tiny", "--trials", "1", "--out", str(out), "training.batchsize=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "amt sweep: Could not override 'training.batchsize': Key 'batchsize' not in 'TrainingConfig'"
    assert not out.exists()


def test_an_out_folder_with_a_users_files_is_refused_before_any_trial(tmp_path, capsys):
    """results.csv / results.md / importance.png would replace a user's files of those names."""
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "results.csv").write_text("mine\n")
    assert sweep_main(["--config-name", "tiny", "--trials", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"amt sweep: {out}: holds files that `amt sweep` did not write (results.csv)")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"] and (out / "results.csv").read_text() == "mine\n"
