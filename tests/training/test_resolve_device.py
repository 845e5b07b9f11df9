"""`resolve_device`: the rank's GPU, also when the scheduler shows each process only its own."""

from __future__ import annotations

import pytest
import torch

from amt.training.distributed import resolve_device


@pytest.mark.parametrize(("visible", "local_rank", "expected"), [(4, 3, 3), (1, 3, 0), (2, 3, 1)])
def test_cuda_rank_maps_onto_the_visible_gpus(monkeypatch, visible: int, local_rank: int, expected: int) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert resolve_device("cuda", local_rank) == torch.device("cuda", expected)


def test_cpu_stays_cpu() -> None:
    assert resolve_device("cpu", 3) == torch.device("cpu")


def test_one_explicit_gpu_for_several_ranks_is_refused_in_one_line(monkeypatch, capsys) -> None:
    from amt.training.cli import train_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert train_main(["training.device=cuda:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amt train: config training.device=cuda:1 with 2 ranks") and err.count("\n") == 1
