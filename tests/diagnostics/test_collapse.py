"""Prediction diversity: a planted constant head is flagged, streaming spreads are exact."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from amt.diagnostics.collapse import HEADS, RunningMoments, prediction_diversity
from amt.testing import random_batch as fake_batch


class EchoModel(nn.Module):
    """Returns every head of the output contract: ground truth plus noise where the batch has it,
    input-dependent noise elsewhere, and a constant for the head named `planted`."""

    def __init__(self, planted: str) -> None:
        super().__init__()
        self.planted = planted

    def forward(self, batch: dict) -> dict:
        g = torch.Generator().manual_seed(int(batch["seed"][0]))
        b = batch["joints_3d"].shape[0]

        def noise(*shape: int) -> torch.Tensor:
            return torch.randn(b, *shape, generator=g)

        out = {
            "joints_3d": batch["joints_3d"] + 0.005 * noise(21, 3),
            "joint_conf": noise(21).sigmoid(),
            "mano_shape": batch["mano_shape"] + 0.1 * noise(10),
            "obj_t": batch["obj_t"] + 0.01 * noise(10, 3),
            "obj_quat": nn.functional.normalize(noise(10, 4), dim=-1),
            "obj_logits": noise(10, 22),
            "contact_prob": noise(10).sigmoid(),
            "contact_points": batch["contact_points"] + 0.01 * noise(10, 3),
            "contact_force": noise(10, 3),
        }
        out["joints_3d_coarse"] = out["joints_3d"] + 0.005 * noise(21, 3)
        out[self.planted] = torch.full_like(out[self.planted], 0.25)
        return out


def _batches(n: int, b: int = 8) -> list[dict]:
    """n fake batches (amt.testing; tiny images, the echo model reads labels only) with MANO
    labels marked valid and the batch's seed for the echo model's noise."""
    out = []
    for i in range(n):
        batch = fake_batch(b, 8, seed=i + 1)
        batch.update(seed=torch.full((b,), i), mano_valid=torch.ones(b, dtype=torch.bool))
        out.append(batch)
    return out


def test_planted_constant_head_is_flagged_and_no_other():
    for planted in ("joints_3d", "contact_force"):  # one head with ground truth, one without
        result = prediction_diversity(EchoModel(planted), _batches(4))
        assert set(result) == set(HEADS)
        flagged = {name for name, head in result.items() if head.collapsed}
        assert flagged == {planted}, {n: (h.ratio, h.pred_std) for n, h in result.items()}
        assert result[planted].pred_std < 1e-9
    healthy = result["joints_3d"]
    assert healthy.ratio is not None and 0.9 < healthy.ratio < 1.1  # GT + 5 mm noise: about the GT spread


def test_streaming_moments_equal_numpy_on_all_masked_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 4, 3))
    mask = rng.random((50, 4)) < 0.6
    moments = RunningMoments()
    for start in range(0, 50, 7):  # uneven chunks
        moments.update(torch.from_numpy(x[start : start + 7]), torch.from_numpy(mask[start : start + 7]))
    for j in range(4):
        expected = x[mask[:, j], j].std(axis=0, ddof=1)
        np.testing.assert_allclose(moments.std()[j].numpy(), expected, rtol=1e-10)
    assert moments.samples() == mask.sum(0).max()


def test_untrained_amt_reports_every_head(tiny56, random_batch):
    model = tiny56()
    batches = [
        {**random_batch(4, s), "joints_3d": 0.05 * torch.randn(4, 21, 3), "hand_valid": torch.ones(4, dtype=torch.bool)}
        for s in range(2)
    ]
    result = prediction_diversity(model, batches)
    assert set(result) == set(HEADS)
    assert all(np.isfinite(h.pred_std) and h.samples == 8 for h in result.values())
    assert result["joints_3d"].gt_std is not None and result["mano_shape"].gt_std is None  # no mano labels given
