"""Attention maps: the reductions point where the attention points; PNGs are written."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from amt.diagnostics.attention import attention_rollout, cls_to_patch, query_maps, save_attention_maps


def _focused(tokens: int, target: int) -> torch.Tensor:
    """(1, 2, T, T): every token attends to `target` (0.9) and uniformly elsewhere."""
    a = torch.full((1, 2, tokens, tokens), 0.1 / (tokens - 1))
    a[..., target] = 0.9
    return a


def test_cls_map_and_rollout_peak_at_the_attended_patch():
    grid = (3, 4)
    target_patch = 7  # row 1, column 3
    attn = _focused(1 + 12, 1 + target_patch)
    for m in (cls_to_patch(attn, grid), attention_rollout([attn, attn], grid)):
        assert m.shape == (1, 3, 4) and float(m.max()) == 1.0 and float(m.min()) == 0.0
        assert divmod(int(m.flatten().argmax()), 4) == (1, 3)


def test_rollout_of_one_block_without_residual_is_its_cls_row():
    attn = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    rollout = attention_rollout([attn], (2, 2), residual=0.0)
    expected = cls_to_patch(attn, (2, 2))
    torch.testing.assert_close(rollout, expected)


def test_query_map_upsamples_each_level_to_the_image():
    shapes = [(4, 4), (2, 2)]
    cross = torch.zeros(1, 1, 2, 20)
    cross[0, 0, 0, 4 * 0 + 3] = 1.0  # query 0: token (0, 3) of the 4x4 level -> top-right
    cross[0, 0, 1, 16 + 2] = 1.0  # query 1: token (1, 0) of the 2x2 level -> bottom-left
    maps = query_maps(cross, shapes, 32)
    assert maps.shape == (1, 2, 32, 32)
    y, x = divmod(int(maps[0, 0].argmax()), 32)
    assert y < 8 and x >= 24
    y, x = divmod(int(maps[0, 1].argmax()), 32)
    assert y >= 16 and x < 16


def test_attention_pngs_for_the_tiny_model(tiny56, random_batch, tmp_path):
    paths = save_attention_maps(tiny56(), random_batch(2), tmp_path, max_images=2, top_queries=2)
    assert [p.name for p in paths] == ["attention_0.png", "attention_1.png"]
    img = np.asarray(Image.open(paths[0]))
    assert img.shape[1] > 5 * 160 and img.std() > 10  # input + CLS + rollout + 2 queries, not blank
