"""ONNX / TorchScript export of the tiny model: outputs match PyTorch to 1e-4, also with a free batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amt.inference.cli import export_main
from amt.inference.export import OUTPUT_NAMES, ExportParityError, FlatOutputs, example_inputs, export, parity

TOL = 1e-4


def _independent_check(model: torch.nn.Module, path: Path, fmt: str, batch: int) -> float:
    """Run the file ourselves on a fresh input and compare with the model's dict output."""
    image, K = example_inputs(batch, seed=7)
    with torch.inference_mode():
        ref = model({"image": image, "K": K})
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"image": image.numpy(), "K": K.numpy()}
        )
    else:
        with torch.inference_mode():
            got = [t.numpy() for t in torch.jit.load(str(path))(image, K)]
    assert len(got) == len(OUTPUT_NAMES)
    return max(float(np.abs(ref[n].numpy() - g).max()) for n, g in zip(OUTPUT_NAMES, got))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_export_matches_pytorch(tiny_model: torch.nn.Module, tmp_path: Path, fmt: str, dynamic: bool) -> None:
    path = tmp_path / f"tiny.{fmt}"
    result = export(tiny_model, path, fmt, dynamic_batch=dynamic)
    assert path.stat().st_size > 0
    assert set(result.max_abs_diff) == set(OUTPUT_NAMES) and result.worst <= TOL
    assert result.parity_batches == ((1, 3) if dynamic else (1,))
    assert _independent_check(tiny_model, path, fmt, batch=2 if dynamic else 1) <= TOL


def test_parity_detects_a_different_model(tiny_model: torch.nn.Module, tmp_path: Path) -> None:
    import copy

    path = tmp_path / "tiny.pt"
    export(tiny_model, path, "torchscript")
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert max(parity(other, path, "torchscript", (1,)).values()) > 1e-3
    with pytest.raises(ExportParityError, match="tolerance"):
        export(tiny_model, tmp_path / "strict.pt", "torchscript", tolerance=-1.0)


def test_flat_outputs_follow_the_contract_order(tiny_model: torch.nn.Module) -> None:
    image, K = example_inputs(2)
    with torch.inference_mode():
        flat = FlatOutputs(tiny_model)(image, K)
        ref = tiny_model({"image": image, "K": K})
    for name, t in zip(OUTPUT_NAMES, flat):
        assert torch.equal(t, ref[name])


def test_export_cli_prints_the_parity_table(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.onnx"
    assert export_main([str(tiny_checkpoint), "--format", "onnx", "--dynamic-batch", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "worst" in text and all(n in text for n in OUTPUT_NAMES)
    assert export_main([str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "missing" in capsys.readouterr().err
    # an existing file, the export's own included, is replaced only with --force
    before = out.read_bytes()
    assert export_main([str(tiny_checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"amt export: {out}: exists; pass --force to replace it, or choose another --out"
    assert out.read_bytes() == before
    assert export_main([str(tiny_checkpoint), "--format", "onnx", "--out", str(out), "--force"]) == 0
