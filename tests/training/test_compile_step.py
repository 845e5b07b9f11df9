"""`training.compile=true`: the training step with the compiled model computes the eager step's loss."""

from __future__ import annotations

import time

import pytest
import torch

from amt.models import build_model
from amt.testing import random_batch
from amt.training import step as step_module
from amt.training.losses import AMTLoss
from amt.training.step import CompileUnavailable, TrainStep


def _step(compile: bool) -> TrainStep:
    torch.manual_seed(0)
    model = build_model("tiny", load_backbone_weights=False, image_size=56).eval()  # eval: no dropout noise
    return TrainStep(model, AMTLoss(), torch.optim.SGD(model.parameters(), lr=0.0), compile=compile)


@pytest.mark.slow  # inductor compiles the forward: ~75 s on 2 busy CPU cores
def test_compiled_step_loss_equals_the_eager_loss():
    batch = random_batch(2, image_size=56)
    eager_total, eager_terms, _ = _step(False).forward(batch)
    start = time.perf_counter()
    result = _step(True).accumulate([batch])  # forward through the compiled model, backward through its graph
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    assert not result.nonfinite
    assert abs(result.loss - float(eager_total.detach())) <= 1e-5
    assert result.terms.keys() == eager_terms.keys()
    for name, value in result.terms.items():
        assert value == pytest.approx(float(eager_terms[name].detach()), abs=1e-5), name


def test_a_broken_compiler_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    def broken(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

        return run

    monkeypatch.setattr(step_module.torch, "compile", broken)
    with pytest.raises(CompileUnavailable, match=r"training\.compile=true.*InvalidCxxCompiler.*compile=false"):
        _step(True)


def test_the_compiler_probe_runs_on_the_models_device(monkeypatch: pytest.MonkeyPatch):
    """The probe must exercise the toolchain the model's device uses (Triton on CUDA, C++ on CPU)."""
    seen: list[torch.device] = []

    def recording(fn, *args, **kwargs):
        def run(*a, **k):
            seen.extend(x.device for x in a if isinstance(x, torch.Tensor))
            return fn(*a, **k)

        return run

    monkeypatch.setattr(step_module.torch, "compile", recording)
    step_module.compile_step(lambda x: x, torch.device("meta"))
    _step(True)
    assert [d.type for d in seen] == ["meta", "cpu"]
