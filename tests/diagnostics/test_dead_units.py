"""Dead units: a planted dead layer is found by name; the scan's memory is flat in batches."""

from __future__ import annotations

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


def test_scan_memory_does_not_grow_with_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU()).eval()
    x = torch.randn(256, 64)
    per_batch = 4 * 256 * 2048 * 4  # bytes of the four hooked outputs of one batch (16 MiB)
    with torch.no_grad(), DeadUnitScanner(model) as scan:
        for _ in range(10):
            model(x)
        gc.collect()
        state, rss = scan.state_bytes(), rss_bytes()
        tracemalloc.start()
        for _ in range(40):
            model(x)
        python_growth = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        gc.collect()
        assert scan.state_bytes() == state  # per-unit statistics only
        rss_growth = rss_bytes() - rss
    # keeping the activations of 40 more batches would take 640 MiB
    assert rss_growth < 2 * per_batch, rss_growth
    assert python_growth < 1 << 20, python_growth
    assert scan.result()[0].rows == 50 * 256
