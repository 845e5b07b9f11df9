"""CUDA-only paths of `amt.data.loaders`, checked on CPU with the CUDA calls stubbed."""

from __future__ import annotations

import threading

import pytest
import torch

from amt.data.loaders import Prefetcher


def test_prefetch_thread_runs_on_the_consumers_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new thread starts on CUDA device 0: the producer must switch to the consumer's device
    (else a DataLoader's pinning there makes a context on GPU 0 from every rank)."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append((d, threading.current_thread().name)))
    assert list(Prefetcher(range(4))) == [0, 1, 2, 3]
    assert calls == [(3, "amt-prefetch")]


def test_prefetch_thread_leaves_cuda_alone_when_it_is_not_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device without CUDA"))
    assert list(Prefetcher(range(3))) == [0, 1, 2]
