"""Dead units: a planted dead layer is found by name; the scan's memory is flat in batches."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import tracemalloc

import torch
from torch import nn

from amt.diagnostics.dead_units import DeadUnitScanner, find_dead_units
from amt.diagnostics.memory import rss_bytes


def test_planted_dead_layer_is_flagged_by_name(tiny56, random_batch):
    model = tiny56()
    batches = [random_batch(4, s) for s in range(2)]
    assert not [x.name for x in find_dead_units(model, batches) if x.flagged]
    with torch.no_grad():
        model.hand.out[0].gamma.zero_()  # sigma-reparam scale collapsed: output = bias for every input
    layers = find_dead_units(model, batches)
    flagged = [x for x in layers if x.flagged]
    assert flagged and flagged[0].name == "hand.out.0"  # the first in module order is the planted one
    assert flagged[0].dead == flagged[0].units and flagged[0].rows == 8


def test_relu_units_that_never_fire_are_dead():
    layer = nn.Linear(4, 6)
    with torch.no_grad():
        layer.bias[:3] = -100.0  # units 0-2 never positive after the ReLU
        layer.bias[3:] = 100.0  # units 3-5 always are
    model = nn.Sequential(layer, nn.ReLU())
    layers = {x.name: x for x in find_dead_units(model, [torch.rand(16, 4) for _ in range(3)])}
    assert layers["1"].dead_indices == [0, 1, 2] and layers["1"].flagged
    assert layers["0"].dead == 0


def _live_rss() -> int:
    """RSS after returning freed heap pages to the OS (glibc), so that it tracks live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def test_scan_memory_does_not_grow_with_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()).eval()
    x = torch.randn(128, 64)
    per_batch = 4 * 128 * 1024 * 4  # bytes of the four hooked outputs of one batch (2 MiB)
    with torch.no_grad(), DeadUnitScanner(model) as scan:
        for _ in range(10):
            model(x)
        state, rss = scan.state_bytes(), _live_rss()
        for _ in range(30):
            model(x)
        rss_growth = _live_rss() - rss
        assert scan.state_bytes() == state  # per-unit statistics only
        tracemalloc.start()
        for _ in range(10):
            model(x)
        python_growth = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    # keeping the activations of the 30 batches would take 60 MiB
    assert rss_growth < 4 * per_batch, rss_growth
    assert python_growth < 256 << 10, python_growth
    assert scan.result()[0].rows == 50 * 128
