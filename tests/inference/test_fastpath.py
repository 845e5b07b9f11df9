"""FastPath on CPU: exact in fp32, close under bf16 autocast, torch.compile path; CUDA graphs on CUDA."""

from __future__ import annotations

import pytest
import torch

from amt.inference.export import OUTPUT_NAMES, example_inputs
from amt.inference.fastpath import FastPath, FastPathConfig, autocast_dtype


def _reference(model: torch.nn.Module, image: torch.Tensor, K: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model({"image": image, "K": K})


def test_fp32_fast_path_matches_the_model_and_leaves_it_unfolded(tiny_model: torch.nn.Module) -> None:
    from amt.models.sigma_reparam import SigmaReparamLinear

    def count(m: torch.nn.Module) -> int:
        return sum(isinstance(x, SigmaReparamLinear) for x in m.modules())

    n_before = count(tiny_model)
    assert n_before > 0
    image, K = example_inputs(2)
    fast = FastPath(tiny_model, "cpu")
    out = fast(image, K)
    ref = _reference(tiny_model, image, K)
    assert list(out) == list(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-6)
    assert count(fast.model) == 0 and count(tiny_model) == n_before
    unfolded = FastPath(tiny_model, "cpu", FastPathConfig(fold_sigma_reparam=False))
    assert unfolded.model is tiny_model
    for name, t in unfolded(image, K).items():
        assert torch.equal(t, ref[name]), name


def test_bf16_autocast_on_cpu_is_close_and_returns_float32(tiny_model: torch.nn.Module) -> None:
    image, K = example_inputs(2)
    out = FastPath(tiny_model, "cpu", FastPathConfig(autocast="bf16"))(image, K)
    ref = _reference(tiny_model, image, K)
    assert all(t.dtype == torch.float32 for t in out.values())
    # bf16 keeps ~3 significant digits: joints in metres within a few mm, quaternions within 0.05
    assert (out["joints_3d"] - ref["joints_3d"]).abs().max() < 0.02
    assert (out["obj_quat"] - ref["obj_quat"]).abs().max() < 0.1
    assert (out["joints_3d"] - ref["joints_3d"]).abs().max() > 0  # autocast really ran


def test_compiled_fast_path_matches(tiny_model: torch.nn.Module) -> None:
    """torch.compile's graph capture (dynamo) with the eager backend: no C++ toolchain time on CPU."""
    image, K = example_inputs(1)
    out = FastPath(tiny_model, "cpu", FastPathConfig(compile=True, compile_backend="eager"))(image, K)
    ref = _reference(tiny_model, image, K)
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_autocast_resolution() -> None:
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="autocast"):
        autocast_dtype("int8", torch.device("cpu"))
    assert not FastPath(torch.nn.Identity(), "cpu").use_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager(tiny_model: torch.nn.Module) -> None:
    image, K = example_inputs(1)
    graphed = FastPath(tiny_model, "cuda", FastPathConfig(autocast="none"))
    eager = FastPath(tiny_model, "cuda", FastPathConfig(autocast="none", cuda_graph=False))
    for seed in (1, 2):  # the second call replays the captured graph with new inputs
        image, K = example_inputs(1, seed=seed)
        a, b = graphed(image, K), eager(image, K)
        for name in OUTPUT_NAMES:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)
    assert len(graphed._graphs) == 1
