"""The device check every verb runs on its --device / training.device (amt.errors.check_device)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from amt.errors import ConfigError, check_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_cpu_and_auto_pass_and_a_bad_name_is_named() -> None:
    check_device("cpu")
    check_device("auto")
    with pytest.raises(ConfigError, match=r"^--device gpu: not a device name"):
        check_device("gpu")


@no_cuda
def test_cuda_without_cuda_is_one_line_per_verb(tmp_path: Path, capsys) -> None:
    from amt.cli import main as amt_main
    from amt.training.cli import train_main

    with pytest.raises(ConfigError, match=r"^training.device=cuda:1: CUDA is not available on this machine"):
        check_device("cuda:1", "training.device=cuda:1")
    ckpt, data = str(tmp_path / "ckpt"), str(tmp_path / "data")
    for argv in (
        ["eval", ckpt, "--data", data, "--device", "cuda"],
        ["debug", ckpt, "--data", data, "--out", str(tmp_path / "d"), "--device", "cuda"],
        ["predict", ckpt, str(tmp_path), "--out", str(tmp_path / "p"), "--device", "cuda"],
        ["bench", "--preset", "tiny", "--device", "cuda"],
    ):
        assert amt_main(argv) in (1, 2)
        err = capsys.readouterr().err.strip()
        assert err == f"amt {argv[0]}: --device cuda: CUDA is not available on this machine " + (
            "(this torch is built without CUDA); use cpu"
            if torch.version.cuda is None
            else "(no GPU is visible); use cpu"
        ), err
    assert train_main(["--config-name", "tiny", "training.device=cuda", f"training.output_dir={tmp_path / 't'}"]) == 2
    assert capsys.readouterr().err.strip().startswith("amt train: training.device=cuda: CUDA is not available")
    assert not any((tmp_path / name).exists() for name in ("d", "p", "t"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_full_or_forbidden_disk_is_one_line_from_any_verb(code, tmp_path: Path, capsys, monkeypatch) -> None:
    """The machine's storage (a full disk, a read-only or forbidden folder) is not a bug: one
    line naming the file, exit 1, instead of a traceback."""
    from amt.cli import main as amt_main

    target = tmp_path / "data" / "labels_000000.npz"

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr("amt.data.synthetic_cli.generate", fail)
    assert amt_main(["synth", str(tmp_path / "data"), "--frames", "8", "--primitives"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"amt synth: [Errno {code}] {os.strerror(code)}: '{target}'", err
    monkeypatch.setattr(
        "amt.data.synthetic_cli.generate", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O"))
    )
    with pytest.raises(OSError):  # anything else is still a bug report's traceback
        amt_main(["synth", str(tmp_path / "d2"), "--frames", "8", "--primitives"])
