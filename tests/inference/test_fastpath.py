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


class _SmallHead(torch.nn.Module):
    """(image, K) -> a tuple, as FastPath's `flat` modules: a linear + GELU + linear on the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))

    def forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.mlp(image.flatten(1)[:, :48]) + K.flatten(1)[:, :1],)


def test_inductor_compiles_with_freezing_and_keeps_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """With inductor the weights are frozen into the graph (oneDNN prepacking on CPU): freezing is
    on while the compiled module runs (inductor compiles then), and off again afterwards; the mode
    is passed on, and every input shape gets its own static graph."""
    import torch._inductor.config as inductor_config

    seen: list[dict] = []

    def recording(fn, **kwargs):
        seen.append(kwargs)

        def run(*args):
            seen[-1]["freezing"] = inductor_config.freezing
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", recording)
    cfg = FastPathConfig(compile=True, compile_mode="max-autotune-no-cudagraphs")
    image, K = example_inputs(1)
    FastPath(torch.nn.Identity(), "cpu", cfg, flat=_SmallHead()).run_flat(image, K)
    probe, model = seen  # the toolchain probe, then the model
    assert probe["freezing"] is False
    assert model["mode"] == "max-autotune-no-cudagraphs" and model["freezing"] is True
    assert model["dynamic"] is False  # one static graph per batch size
    assert inductor_config.freezing is False


def test_a_broken_compiler_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from amt.inference.bench import main as bench_main
    from amt.training.step import CompileUnavailable

    def broken(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CompileUnavailable, match=r"--compile: torch.compile does not work here.*InvalidCxxCompiler"):
        FastPath(torch.nn.Identity(), "cpu", FastPathConfig(compile=True), flat=torch.nn.Identity())
    assert bench_main(["--preset", "tiny", "--batch", "1", "--compile", "--iters", "1", "--warmup", "0"]) == 2


@pytest.mark.slow  # inductor builds C++ kernels: ~7 s on 2 CPU cores
def test_inductor_with_freezing_matches_eager_on_cpu() -> None:
    torch.manual_seed(0)
    head = _SmallHead().eval()
    image, K = torch.randn(3, 3, 4, 4), torch.eye(3).expand(3, 3, 3)
    compiled = FastPath(head, "cpu", FastPathConfig(compile=True), flat=head)
    eager = FastPath(head, "cpu", FastPathConfig(), flat=head)
    torch.testing.assert_close(compiled.run_flat(image, K), eager.run_flat(image, K), rtol=1e-5, atol=1e-5)


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
