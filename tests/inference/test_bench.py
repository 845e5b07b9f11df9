"""`amt bench` smoke test and the FLOP counting it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from amt.inference.bench import count_flops, matmul_ceiling
from amt.inference.bench import main as bench_main
from amt.testing import random_batch


def test_flop_count_of_linear_and_cpu_attention() -> None:
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    assert count_flops(lambda: lin(x)) == 2 * 5 * 64 * 32
    q = torch.randn(2, 3, 17, 8)
    # QK^T and AV: 2 matmuls of 2*B*H*L*L*D FLOPs each
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 2 * (
        2 * 2 * 3 * 17 * 17 * 8
    )


def test_matmul_ceiling_is_positive() -> None:
    c = matmul_ceiling(torch.device("cpu"), torch.float32, 128, iters=2)
    assert c["n"] == 128 and c["dtype"] == "float32" and c["flops_per_s"] > 1e6


def test_random_batch_is_self_consistent() -> None:
    from amt.geometry.camera import project

    b = random_batch(3, device=torch.device("cpu"))
    torch.testing.assert_close(project(b["joints_3d"], b["K"]), b["joints_2d"])
    assert b["obj_valid"].sum(1).min() >= 2 and (b["obj_class"][~b["obj_valid"]] == 0).all()


def test_bench_tiny_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = bench_main(
        [
            "--preset",
            "tiny",
            "--batch",
            "1,2",
            "--train",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--matmul-n",
            "256",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert [r["batch"] for r in result["inference"]] == [1, 2]
    for r in result["inference"]:
        assert r["latency_ms"] > 0 and r["flops_per_image"] > result["flops_per_image_backbone"] > 0
        assert r["ceiling_ratio"] > 0 and r["model_over_backbone"] > 0 and r["peak_memory_mb"] > 0
    t = result["train"]
    assert t["loss"] == "AMTLoss" and t["samples_per_s"] > 0
    assert t["flops_per_step"] > t["batch"] * result["inference"][0]["flops_per_image"]  # forward + backward
    assert "random" in result["weights"]
    assert "% of ceiling" in capsys.readouterr().out


def test_bench_trains_from_a_cache_folder(tmp_path: Path) -> None:
    # `amt bench --cache DIR` reads training batches through GPUCachedDataset (on the CPU here).
    from amt.data.cache import build_cache
    from amt.data.testing import write_fake_dexycb

    root = write_fake_dexycb(tmp_path / "root", subjects=2, sequences_per_subject=5, serials=8, frames=1)
    build_cache(root, "s0_val", tmp_path / "cache", size=224, workers=1, progress=False)
    out = tmp_path / "bench.json"
    rc = bench_main(
        [
            "--preset",
            "tiny",
            "--batch",
            "1",
            "--train",
            "--train-batch",
            "4",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--matmul-n",
            "256",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert str(tmp_path / "cache") in out.read_text()
