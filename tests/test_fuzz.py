"""The short fuzz pass (issue 14, "Fuzzed inputs"): 2,000 mutated files across every format the
project reads, fed to the readers, `amt cache`, `amt eval`, `amt predict` and
`AMT.from_pretrained`; every outcome is a success or a named error naming the file, none is an
uncaught exception or a hang. The longer pass: `python benchmarks/fuzz.py --n 100000`."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from amt.checkpoint import CheckpointError, load_model
from amt.cli import main as amt_main
from amt.models import AMT, build_model
from amt.models.amt import ModelFileError

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("amt_benchmarks_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~35 s on one core
def test_two_thousand_mutated_files_give_no_uncaught_exception_and_no_hang(tmp_path: Path) -> None:
    fuzz = _fuzz_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL / numpy warn about the broken files they are handed
        report = fuzz.run(n=2000, seed=0, workdir=tmp_path, case_timeout=20.0)
    print(report.summary())
    assert report.total >= 2000
    assert report.failures == [], "\n".join(f"{k} ({how}) {p}\n{err}" for k, how, p, err in report.failures[:5])
    assert report.hangs == 0
    for kind in ("labels npz", "meta.yml", "calibration yml", "colour jpg", "image .png", "image .jpg",
                 "cache meta.json", "cache labels npy", "cache images.u8", "config.yaml", "model.safetensors",
                 "boxes json"):  # fmt: skip
        assert report.cases[kind] >= 50, kind
    assert report.outcomes["named error"] > 500 and report.outcomes["ok"] > 200
    assert report.outcomes["verb ok"] + report.outcomes["verb refused"] >= 8  # the verbs ran in-process


# --- what the fuzzer found, pinned as plain tests ----------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_model("tiny", load_backbone_weights=False, image_size=56).save_pretrained(
        tmp_path_factory.mktemp("fuzz_ckpt") / "tiny"
    )


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}, sort_keys=False))


@pytest.mark.parametrize(
    ("change", "file", "message"),
    [
        ({"hidden_dim": 10**12}, "config.yaml", "not a number in"),
        ({"pyramid_scales": [4096.0, 2.0, 1.0, 0.5]}, "config.yaml", "GiB, far more than its weights"),
        ({"hidden_dim": 96}, "model.safetensors", "has shape"),
        ({"depth_per_focal": float("nan")}, "config.yaml", "not a number in"),
        ({"backbone_stem": "pickle"}, "config.yaml", "cannot build a model"),
        ({"no_such_key": 1}, "config.yaml", "unknown model config key"),
    ],
)
def test_from_pretrained_refuses_a_hostile_config_naming_the_file(
    checkpoint: Path, tmp_path: Path, change: dict, file: str, message: str
) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    _edit_config(folder, **change)
    with pytest.raises(ModelFileError, match=rf"{file}.*{message}|{message}.*{file}") as info:
        AMT.from_pretrained(folder)
    assert str(folder) in str(info.value)
    with pytest.raises(CheckpointError, match=str(folder)):
        load_model(folder)


def test_from_pretrained_refuses_damaged_weights_naming_the_file(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(ModelFileError, match=rf"model\.safetensors: {re.escape(key)} holds NaN or inf"):
        AMT.from_pretrained(folder)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: not a readable safetensors file"):
        AMT.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors does not exist"):  # ModelFileMissing
        AMT.from_pretrained(folder)


def test_eval_on_a_missing_dataset_is_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    rc = amt_main(["eval", str(checkpoint), "--data", str(tmp_path / "nowhere"), "--split", "s0_val", "--device",
                   "cpu", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "nowhere" in err and "Traceback" not in err
