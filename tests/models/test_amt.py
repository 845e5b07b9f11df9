"""AMT assembly: the output contract, persistence, export, optimiser groups."""

from __future__ import annotations

import pytest
import torch

from amt.data.ycb import NUM_CLASSES
from amt.models import OUTPUT_KEYS, AMT

EXPECTED_SHAPES = {
    "joints_3d": (21, 3), "joints_3d_coarse": (21, 3), "joint_conf": (21,), "mano_shape": (10,),
    "obj_t": (10, 3), "obj_quat": (10, 4), "obj_logits": (10, NUM_CLASSES + 1),
    "contact_points": (10, 3), "contact_prob": (10,), "contact_force": (10, 3),
}  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_keys_shapes_and_units(tiny_model: AMT, make_batch, batch_size: int) -> None:
    with torch.no_grad():
        out = tiny_model(make_batch(batch_size))
    assert set(out) == set(OUTPUT_KEYS) | {"aux"}
    for key, shape in EXPECTED_SHAPES.items():
        assert out[key].shape == (batch_size, *shape), key
        assert torch.isfinite(out[key]).all(), key
    # metres in front of the camera at a hand-object working distance, not millimetres
    assert ((out["joints_3d"][..., 2] > 0.05) & (out["joints_3d"][..., 2] < 5.0)).all()
    assert ((out["obj_t"][..., 2] > 0.05) & (out["obj_t"][..., 2] < 5.0)).all()
    torch.testing.assert_close(out["obj_quat"].norm(dim=-1), torch.ones(batch_size, 10))
    for key in ("joint_conf", "contact_prob"):
        assert ((out[key] >= 0) & (out[key] <= 1)).all(), key
    aux = out["aux"]
    assert torch.equal(aux["joints_3d_coarse"], out["joints_3d_coarse"])
    assert len(aux["refine_steps"]) == tiny_model.config.refine_steps
    for step in aux["refine_steps"]:
        assert step["joints_3d"].shape == (batch_size, 21, 3)
        assert step["obj_t"].shape == (batch_size, 10, 3)
        assert step["obj_quat"].shape == (batch_size, 10, 4)
    assert torch.equal(aux["refine_steps"][-1]["joints_3d"], out["joints_3d"])
    assert aux["hand_points"].shape == (batch_size, 101, 3)
