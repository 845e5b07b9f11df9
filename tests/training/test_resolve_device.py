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
