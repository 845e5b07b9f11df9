"""Reliability of checkpoints and runs (issue 14, items 1-3): no pickle is ever loaded, saves are
atomic and durable, and a run killed at any moment (kill -9, SIGTERM) resumes to the same
parameters as an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import amt
import amt.checkpoint as checkpoint_module
import amt.models.amt as model_module
from amt.checkpoint import (
    CHECKPOINTS,
    LEGACY_STATE,
    CheckpointError,
    decode_state,
    encode_state,
    find_checkpoint,
    is_complete,
    load_trainer_state,
    newest_checkpoint,
    remove_leftovers,
)
from amt.checkpoint_cli import main as convert_main
from amt.evaluation.cli import main as eval_main
from amt.inference.cli import predict_main
from amt.models import build_model
from amt.testing import free_port, set_rank_env
from amt.training import cli as train_cli
from amt.training.callbacks import Callback
from amt.training.checkpointing import save
from amt.training.preemption import EXIT_PREEMPTED
from amt.training.trainer import Trainer, train

from .conftest import IMAGE_SIZE, TRAIN_SPLIT

STEPS = 40  # 16 samples, global batch 8: 2 steps per epoch, 20 epochs
BASE = ["training.batch_size=8", f"training.max_steps={STEPS}", "data.augment=true", "checkpoint.every_minutes=0"]


class PlantedPickle:
    """Unpickling this creates `path`: the payload of a malicious trainer.pt."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _legacy_folder(folder: Path, marker: Path) -> Path:
    """An old-format checkpoint folder (config.yaml, model.safetensors) whose trainer.pt would create `marker`."""
    build_model("tiny", image_size=IMAGE_SIZE).save_pretrained(folder)
    torch.save({"model": {}, "step": PlantedPickle(marker)}, folder / LEGACY_STATE)
    return folder


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_train_root) -> dict[str, torch.Tensor]:
    """Raw weights after STEPS uninterrupted steps."""
    out = tmp_path_factory.mktemp("reference")
    trainer = Trainer(_config(tiny_train_root, out / "run"), evaluator=None)
    trainer.fit()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _config(root: Path, out: Path, *extra: str):
    return amt.load_run_config("tiny", _overrides(root, out, *extra))


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}", f"data.split={TRAIN_SPLIT}", "data.val_split=null", f"data.image_size={IMAGE_SIZE}",
        f"model.image_size={IMAGE_SIZE}", "training.device=cpu", f"training.output_dir={out}",
        "checkpoint.every_epochs=0", "logging.tensorboard=false", "logging.progress=false", *BASE, *extra,
    ]  # fmt: skip


# -- 1. no code execution on load ----------------------------------------------------------------
def test_state_encoding_round_trips_exactly():
    state = {
        "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
                      "param_groups": [{"betas": (0.9, 0.999), "params": [0], "name": "heads"}]},
        "best_value": float("nan"), "none": None, "bf16": torch.ones(2, dtype=torch.bfloat16),
    }  # fmt: skip
    tree, tensors = encode_state(state)
    back = decode_state(json.loads(json.dumps(tree)), tensors)
    random.setstate(back["rng"][0]["python"])  # accepted by the RNGs: exact types restored
    np.random.set_state(back["rng"][0]["numpy"])
    torch.set_rng_state(back["rng"][0]["torch"])
    assert back["rng"][0]["python"] == state["rng"][0]["python"]
    assert np.array_equal(back["rng"][0]["numpy"][1], state["rng"][0]["numpy"][1])
    assert list(back["optimizer"]["state"]) == [0] and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["bf16"].dtype == torch.bfloat16 and back["none"] is None and np.isnan(back["best_value"])
    with pytest.raises(TypeError, match="without pickle"):
        encode_state({"x": object()})


def test_planted_pickle_is_refused_everywhere_and_never_runs(tmp_path, tiny_train_root, capsys):
    marker = tmp_path / "pwned"
    # the payload is real: unpickling a copy of it creates its file
    probe = _legacy_folder(tmp_path / "probe", tmp_path / "probe_pwned")
    torch.load(probe / LEGACY_STATE, weights_only=False)
    assert (tmp_path / "probe_pwned").exists()

    folder = _legacy_folder(tmp_path / "planted", marker)
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    run = tmp_path / "run"  # a run folder whose checkpoints/last is the planted folder (resume_from=auto)
    (run / CHECKPOINTS).mkdir(parents=True)
    shutil.copytree(folder, run / CHECKPOINTS / "last")
    (run / "config.yaml").write_text("experiment_name: x\n")

    assert eval_main([str(folder), "--data", str(tiny_train_root)]) == 1  # amt eval
    assert predict_main([str(folder), str(image), "--out", str(tmp_path / "pred")]) != 0  # amt predict
    for resume in (f"checkpoint.resume_from={folder}", "checkpoint.resume_from=auto"):  # amt train resume
        argv = ["--config-name", "tiny", *_overrides(tiny_train_root, run, resume)]
        assert train_cli.train_main(argv) == 2
    with pytest.raises(CheckpointError, match="convert-checkpoint"):  # the notebooks: amt.load_model, Trainer
        amt.load_model(folder)
    with pytest.raises(CheckpointError, match="convert-checkpoint"):
        Trainer(_config(tiny_train_root, tmp_path / "nb", f"checkpoint.resume_from={folder}"), evaluator=None)
    assert convert_main([str(folder)]) == 2  # conversion reads with weights_only=True: refused too
    err = capsys.readouterr().err
    assert err.count("amt convert-checkpoint") >= 4 and "unsafe-pickle" in err
    assert not marker.exists()


def test_convert_checkpoint_makes_an_old_folder_loadable(tmp_path, tiny_train_root, capsys):
    trainer = Trainer(_config(tiny_train_root, tmp_path / "run", "training.max_steps=1"), evaluator=None)
    trainer.fit()
    new = (tmp_path / "run" / CHECKPOINTS / "last").resolve()
    old = tmp_path / "old"  # what the previous version wrote: the same files, the state pickled in trainer.pt
    old.mkdir()
    for name in ("config.yaml", "model.safetensors", "train_config.yaml"):
        shutil.copy(new / name, old / name)
    state = load_trainer_state(new)
    torch.save(state, old / LEGACY_STATE)
    with pytest.raises(CheckpointError, match=f"convert-checkpoint {old}"):
        find_checkpoint(old)

    assert convert_main([str(old), "--out", str(tmp_path / "converted")]) == 0
    assert convert_main([str(old), "--out", str(tmp_path / "converted")]) == 2  # never overwrites
    assert convert_main([str(old)]) == 0  # in place: new files next to trainer.pt
    assert convert_main([str(old)]) == 2
    assert "pickle" in capsys.readouterr().err
    for folder in (tmp_path / "converted", old):
        assert find_checkpoint(folder) == folder
        back = load_trainer_state(folder)
        _same(back["model"], state["model"])
        assert back["rng"][0]["python"] == state["rng"][0]["python"] and back["step"] == 1


# -- 2. atomic, durable saves --------------------------------------------------------------------
class Died(BaseException):
    """The process 'dies' here (a BaseException: nothing in the writer catches it)."""


def test_a_save_killed_between_any_two_system_calls_leaves_a_complete_checkpoint(tmp_path, tiny_train_root,
                                                                                 monkeypatch):  # fmt: skip
    trainer = Trainer(_config(tiny_train_root, tmp_path / "run", "training.max_steps=1"), evaluator=None)
    trainer.fit()  # checkpoints/step_000001, last -> it
    checkpoints = tmp_path / "run" / CHECKPOINTS
    pristine = tmp_path / "pristine"
    shutil.copytree(checkpoints, pristine, symlinks=True)
    trainer.step = 2  # the next save: step_000002 (keep=False: the old folder is pruned once `last` moves)
    targets = [(os, "open"), (os, "fsync"), (os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"),
               (shutil, "rmtree"), (Path, "write_text"), (Path, "mkdir"), (checkpoint_module, "save_file"),
               (model_module, "save_file")]  # fmt: skip
    originals = {(owner, name): getattr(owner, name) for owner, name in targets}
    outcomes = set()
    for die_at in range(1000):
        shutil.rmtree(checkpoints)
        shutil.copytree(pristine, checkpoints, symlinks=True)

        def counting(fn, calls=[0], die_at=die_at):  # noqa: B006 (one counter shared by every wrapper of this round)
            def wrapper(*args, **kwargs):
                calls[0] += 1
                if calls[0] > die_at:
                    raise Died
                return fn(*args, **kwargs)

            return wrapper

        for (owner, name), fn in originals.items():
            monkeypatch.setattr(owner, name, counting(fn))
        try:
            save(trainer, ["last"], keep=False)
            finished = True
        except Died:
            finished = False
        finally:
            monkeypatch.undo()
        # the next start: leftovers removed, `last` and the newest folder complete and loadable
        remove_leftovers(checkpoints)
        assert not list(checkpoints.glob("*.tmp"))
        assert is_complete(checkpoints / "last")
        newest = newest_checkpoint(checkpoints)
        step = load_trainer_state(newest)["step"]
        assert step in (1, 2) and load_trainer_state(checkpoints / "last")["step"] in (1, step)
        outcomes.add(step)
        if finished:
            break
    assert finished and die_at > 10 and outcomes == {1, 2}
    print(f"the save survived a death before each of its {die_at} file-system calls")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_000002"]  # step_000001 pruned


# -- 3. kills, restarts, signals -----------------------------------------------------------------
def _fork(fn) -> int:
    """Run fn() in a forked child that never returns into pytest; its exit code is fn's result."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            code = fn()
        except BaseException:  # noqa: BLE001 (the child must reach os._exit whatever happens)
            import traceback  # why: the child's only report of an unexpected error

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def test_kill_9_at_20_random_moments_then_resume_is_bit_identical(tmp_path, tiny_train_root, reference):
    run, progress = tmp_path / "run", tmp_path / "progress"
    cfg = _config(tiny_train_root, run, "checkpoint.every_steps=1")
    rng = random.Random(14)
    steps_seen = []
    for kill in range(20):
        progress.unlink(missing_ok=True)
        pid = _fork(lambda: (Trainer(cfg, evaluator=None, callbacks=[StepFile(progress)]).fit(), 0)[1])
        # a random moment: during start-up and resume (every 4th kill), else inside the save after a
        # step (on_step_end comes just before it) or the next step; timed from the child's progress,
        # so that a loaded machine moves the moments, not the coverage (waiting for 2 steps past the
        # resumed one guarantees progress: the first step's save is complete then)
        target = (steps_seen[-1] if steps_seen else 0) + rng.choice([1, 2, 2])
        deadline = time.monotonic() + 60
        while kill % 4 and not (progress.exists() and progress.read_text() and int(progress.read_text()) >= target):
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        newest = newest_checkpoint(run / CHECKPOINTS)
        if newest is not None:  # resume works from a complete checkpoint
            assert find_checkpoint(run) == newest
            steps_seen.append(load_trainer_state(newest)["step"])
            # `last` names a complete folder: the newest, or the one before when the kill fell between the two
            assert load_trainer_state(run / CHECKPOINTS / "last")["step"] in (steps_seen[-1], steps_seen[-1] - 1)
    assert len(set(steps_seen)) > 5 and steps_seen[-1] < STEPS, f"the kills landed too late: {steps_seen}"
    trainer = Trainer(cfg, evaluator=None)  # resume_from=auto: the newest complete checkpoint
    assert trainer.step == steps_seen[-1]
    trainer.fit()
    _same(trainer.model.state_dict(), reference)
    assert not list((run / CHECKPOINTS).glob("*.tmp"))  # the leftovers of killed saves went at the next start


def test_timed_saves_replace_each_other(tmp_path, tiny_train_root, caplog):
    # every_minutes elapsed at every step boundary: a save each step, each superseded one deleted
    caplog.set_level("INFO", logger="amt.training.checkpointing")
    Trainer(_config(tiny_train_root, tmp_path / "run", "training.max_steps=3", "checkpoint.every_minutes=1e-9"),
            evaluator=None).fit()  # fmt: skip
    checkpoints = tmp_path / "run" / CHECKPOINTS
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_000003"]
    assert load_trainer_state(checkpoints / "last")["step"] == 3
    assert "deleted step_000001" in caplog.text and "deleted step_000002" in caplog.text


class StepFile(Callback):
    """Writes the step count to a file after every step (how the test knows the run is under way)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, trainer, info) -> None:
        # written aside and renamed: the polling test never reads a half-written (empty) file
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(str(info.step))
        os.replace(tmp, self.path)


def test_sigterm_saves_at_the_next_step_and_exits_75_then_resume_is_exact(tmp_path, tiny_train_root, reference,
                                                                         monkeypatch):  # fmt: skip
    run, progress = tmp_path / "run", tmp_path / "progress"
    argv = ["--config-name", "tiny", *_overrides(tiny_train_root, run)]  # no periodic checkpoints

    def child() -> int:
        monkeypatch.setattr(train_cli, "train", lambda cfg, ctx: train(cfg, ctx, callbacks=[StepFile(progress)]))
        return train_cli.train_main(argv)

    pid = _fork(child)
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == EXIT_PREEMPTED
    stopped = load_trainer_state(run / CHECKPOINTS / "last")["step"]
    assert stopped == int(progress.read_text()) and 2 <= stopped < STEPS  # the step boundary after the signal
    assert train_cli.train_main(argv) == 0  # the same command continues the run
    _same(load_trainer_state(run / CHECKPOINTS / "last")["model"], reference)


def _torchrun(out: Path, root: Path, *extra: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 --max-restarts=1 -m amt train` (gloo on CPU), 24 steps."""
    overrides = _overrides(root, out, "training.max_steps=24", "checkpoint.every_steps=1", *extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.2", "-m", "amt", "train", "--config-name", "tiny", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _live_step(last: Path) -> int:
    """The step of a running job's `last` checkpoint, -1 while there is none. The run prunes old
    folders (checkpoint.keep_last) as it goes, so `last` can move on and its old target vanish
    between our check and our read: that is a clean CheckpointError, and we poll again."""
    try:
        return load_trainer_state(last)["step"] if is_complete(last) else -1
    except CheckpointError:
        return -1


def test_torchrun_restarts_a_killed_worker_and_ends_as_an_uninterrupted_run(tmp_path, tiny_train_root):
    psutil = pytest.importorskip("psutil")
    reference = _torchrun(tmp_path / "reference", tiny_train_root)
    out = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, out[-3000:]

    run = tmp_path / "killed"
    proc = _torchrun(run, tiny_train_root)
    last, deadline = run / CHECKPOINTS / "last", time.monotonic() + 300
    while _live_step(last) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "amt" in p.cmdline()]
    victim = next(p for p in workers if p.environ().get("LOCAL_RANK") == "1")
    victim.send_signal(signal.SIGKILL)  # mid-run: the agent restarts the group, which resumes (auto)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out
    final, expected = load_trainer_state(last), load_trainer_state(tmp_path / "reference" / CHECKPOINTS / "last")
    assert final["step"] == expected["step"] == 24
    _same(final["model"], expected["model"])
    _same(final["ema"], expected["ema"])


def _two_ranks(argv: list[str], progress: Path | None = None) -> list[int]:
    """Fork two gloo ranks running `amt train argv`; returns their pids."""
    port = free_port()

    def rank_main(rank: int) -> int:
        set_rank_env(rank, 2, port)
        if progress is not None:
            file = progress.with_name(f"{progress.name}{rank}")
            train_cli.train = lambda cfg, ctx: train(cfg, ctx, callbacks=[StepFile(file)])
        return train_cli.train_main(argv)

    return [_fork(lambda r=rank: rank_main(r)) for rank in range(2)]


def _exit_codes(pids: list[int]) -> list[int]:
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resume_is_exact(tmp_path, tiny_train_root):
    def argv(out: Path) -> list[str]:
        return ["--config-name", "tiny", *_overrides(tiny_train_root, out, "training.max_steps=16")]

    assert _exit_codes(_two_ranks(argv(tmp_path / "reference"))) == [0, 0]
    run, progress = tmp_path / "run", tmp_path / "progress"
    pids = _two_ranks(argv(run), progress)
    deadline = time.monotonic() + 120
    rank1 = progress.with_name("progress1")
    while not (rank1.exists() and rank1.read_text() and int(rank1.read_text()) >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(pids[1], signal.SIGTERM)  # only rank 1 sees it: the all-reduce at the step boundary tells rank 0
    assert _exit_codes(pids) == [EXIT_PREEMPTED, EXIT_PREEMPTED]
    state = load_trainer_state(run / CHECKPOINTS / "last")
    assert 2 <= state["step"] < 16 and len(state["rng"]) == 2
    assert int(progress.with_name("progress0").read_text()) == int(rank1.read_text()) == state["step"]
    assert _exit_codes(_two_ranks(argv(run))) == [0, 0]  # the same command resumes (resume_from=auto)
    final, expected = (load_trainer_state(p / CHECKPOINTS / "last") for p in (run, tmp_path / "reference"))
    _same(final["model"], expected["model"])
