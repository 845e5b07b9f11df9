"""`amt predict`, `amt export` and `amt bench --checkpoint` take the crop size (and normalisation)
from the checkpoint: the demo's 96-px `tiny_conv` and a 224-px `tiny` checkpoint both work, and
the predicted `joints_2d` are the projection of `joints_3d` with the full image's K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amt.checkpoint import load_model
from amt.inference.bench import main as bench_main
from amt.inference.cli import export_main, predict_main
from amt.inference.export import InputSpec
from amt.inference.intrinsics import Intrinsics
from amt.inference.predictor import Predictor
from amt.models import build_model

SIZES = {"tiny_conv_96": ("tiny_conv", 96), "tiny_224": ("tiny", 224)}


@pytest.fixture(scope="module", params=sorted(SIZES))
def checkpoint(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    preset, size = SIZES[request.param]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / request.param
    build_model(preset, load_backbone_weights=False, image_size=size).save_pretrained(folder)
    return folder, size


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Independent pinhole projection (numpy only)."""
    p = np.asarray(points, np.float64)
    uvw = p @ np.asarray(K, np.float64).T
    return uvw[:, :2] / uvw[:, 2:]


def test_predictor_crops_at_the_checkpoints_size_and_projects_with_the_full_K(checkpoint, random_image) -> None:
    folder, size = checkpoint
    predictor = Predictor.from_checkpoint(folder, score_threshold=0.0)
    assert predictor.crop.size == size == InputSpec.of(load_model(folder)).size
    K = Intrinsics(520.0, 515.0, 331.0, 242.0, "test")
    pred = predictor.predict(random_image(480, 640, 1), K, (200, 120, 180))
    assert np.isfinite(pred.joints_3d).all()
    np.testing.assert_allclose(pred.joints_2d, _project(pred.joints_3d, K.K), rtol=1e-5, atol=1e-3)


def test_amt_predict_and_export_and_bench_on_the_checkpoint(checkpoint, random_image, tmp_path: Path, capsys) -> None:
    folder, size = checkpoint
    Image.fromarray(random_image(240, 320, 2)).save(tmp_path / "frame.png")
    out = tmp_path / "pred"
    assert predict_main([str(folder), str(tmp_path / "frame.png"), "--out", str(out), "--bbox", "80,40,240,200"]) == 0
    record = json.loads((out / "frame.json").read_text())
    intr = record["intrinsics"]
    K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]])
    joints = np.asarray(record["hand"]["joints_3d_m"])
    np.testing.assert_allclose(record["hand"]["joints_2d_px"], _project(joints, K), rtol=1e-5, atol=1e-3)

    exported = tmp_path / "m.pt"
    assert export_main([str(folder), "--format", "torchscript", "--out", str(exported)]) == 0
    module = torch.jit.load(str(exported))
    K_crop = torch.tensor([[[300.0, 0.0, size / 2], [0.0, 300.0, size / 2], [0.0, 0.0, 1.0]]])
    assert module(torch.zeros(1, 3, size, size), K_crop)[0].shape == (1, 21, 3)

    report = tmp_path / "bench.json"
    args = ["--checkpoint", str(folder), "--batch", "1", "--iters", "1", "--warmup", "0", "--matmul-n", "128"]
    assert bench_main([*args, "--train", "--train-batch", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["image_size"] == size and result["checkpoint"] == str(folder)
    assert result["inference"][0]["latency_ms"] > 0 and result["train"]["samples_per_s"] > 0
    capsys.readouterr()


def test_bench_names_a_bad_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    assert bench_main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
