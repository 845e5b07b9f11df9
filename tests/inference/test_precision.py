"""bf16 inference model (`amt.inference.precision`): weights cast once, geometric heads in
float32, outputs within a stated tolerance of the float32 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amt.inference.fastpath import FastPath
from amt.inference.intrinsics import Intrinsics
from amt.inference.precision import FLOAT32_MODULES, PrecisionError, inference_model, parse_dtype
from amt.inference.predictor import Predictor
from amt.models import build_model
from amt.testing import random_batch
from amt.training.losses import AMTLoss
from amt.training.step import TrainStep

# bf16 vs float32 on the briefly trained tiny_conv model below, 8 fake images (measured
# 2026-12-01 on the 2-core CPU VM over several runs and image seeds): joints max 2.0-6.2 mm at
# ~0.9 m depth (0.2-0.7 %: bf16 keeps 8 mantissa bits, ~0.4 % per rounding, and the root depth is
# exp of a raw output); obj_t median over the queries 0.16-0.20 mm but max 7-10 cm on a few
# unconfident queries; contact probability max 0.001-0.002. On the demo's checkpoint (tiny_conv,
# 1800 steps, 16 noise images): joints max 0.9 mm, obj_t median 1.3 mm / max 2.4 cm, contact
# probability max 0.03. The bounds:
JOINTS_TOL_M = 1e-2  # max over joints and images (~1 % of the depth)
OBJ_T_MEDIAN_TOL_M = 2e-3  # median over queries and images
CONTACT_PROB_TOL = 0.01  # max


@pytest.fixture(scope="module")
def trained_tiny() -> torch.nn.Module:
    """tiny_conv (the demo's network) at 64 px after 6 AdamW steps on fake batches: weights
    moved off their initialisation, as a trained model's are."""
    torch.manual_seed(0)
    model = build_model("tiny_conv", image_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = TrainStep(model, AMTLoss(), opt)
    for i in range(6):
        step(random_batch(4, image_size=64, seed=i))
    return model.eval()


def test_bf16_model_stores_bf16_weights_and_fp32_heads(trained_tiny: torch.nn.Module) -> None:
    low = inference_model(trained_tiny, "bfloat16")
    assert low is not trained_tiny and next(trained_tiny.parameters()).dtype == torch.float32
    for name in ("backbone", "pyramid", "decoder"):
        assert {p.dtype for p in getattr(low, name).parameters()} == {torch.bfloat16}
    kept = [name for name in FLOAT32_MODULES if getattr(low, name) is not None]
    assert {"hand", "objects", "refiner", "contact", "camera_in"} <= set(kept)  # tiny_conv's
    for name in kept:
        assert {p.dtype for p in getattr(low, name).parameters()} == {torch.float32}
    assert inference_model(trained_tiny, "float32") is trained_tiny


def test_bf16_outputs_within_tolerance_of_fp32(trained_tiny: torch.nn.Module) -> None:
    batch = random_batch(8, image_size=64, seed=100)
    ref = FastPath(trained_tiny)(batch["image"], batch["K"])
    out = FastPath(inference_model(trained_tiny, "bfloat16"))(batch["image"], batch["K"])
    for key in ref:
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]).all(), key
    assert (out["joints_3d"] - ref["joints_3d"]).norm(dim=-1).max() < JOINTS_TOL_M
    assert (out["obj_t"] - ref["obj_t"]).norm(dim=-1).median() < OBJ_T_MEDIAN_TOL_M
    assert (out["contact_prob"] - ref["contact_prob"]).abs().max() < CONTACT_PROB_TOL


def test_unknown_dtype_is_one_clear_error() -> None:
    with pytest.raises(PrecisionError, match="float16.*float32, bfloat16"):
        parse_dtype("float16")


def test_predictor_runs_the_bf16_model(tiny_model: torch.nn.Module, random_image) -> None:
    image, K = random_image(240, 320, 1), Intrinsics(400, 400, 160, 120, "test")
    ref = Predictor(tiny_model).predict(image, K)
    low = Predictor(tiny_model, dtype="bfloat16").predict(image, K)
    assert low.joints_3d.shape == (21, 3) and np.isfinite(low.joints_3d).all()
    assert np.abs(low.joints_3d - ref.joints_3d).max() < JOINTS_TOL_M
