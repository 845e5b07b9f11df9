"""`amt bench` smoke test and the FLOP counting it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_heads_profile_lists_every_head_and_its_flops_sum_to_the_model_count() -> None:
    from amt.models import build_model
    from amt.models.info import HEAD_MODULES, count_flops, profile_modules

    torch.manual_seed(0)
    model = build_model("tiny", image_size=64).eval()
    batch = random_batch(2, image_size=64)

    def call() -> None:
        with torch.inference_mode():
            model(batch)

    rows = {r.name: r for r in profile_modules(model, call, iters=1)}
    for name in ("backbone", "pyramid", "decoder", "hand", "objects", "refiner", "contact", "other", "total"):
        assert name in rows, name
    with torch.inference_mode():
        whole = count_flops(lambda: model(batch))
    total = rows["total"]
    assert total.flops == pytest.approx(whole, rel=1e-3)
    assert sum(rows[n].flops for n in (*HEAD_MODULES, "backbone", "other")) == total.flops
    assert rows["backbone"].flops > 0 and rows["decoder"].flops > 0 and rows["pyramid"].flops > 0
    # parameters and kernel traffic are counted per module and add up
    assert total.parameters == sum(p.numel() for p in model.parameters())
    assert all(rows[n].traffic_bytes >= rows[n].param_bytes > 0 for n in ("backbone", "decoder", "refiner"))
    assert total.seconds >= rows["backbone"].seconds > 0


def test_bench_prints_the_heads_table_next_to_the_backbone(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--batch", "1,2", "--iters", "1", "--warmup", "0", "--matmul-n", "128"]
    assert bench_main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "heads per module" in text
    for name in ("pyramid", "decoder", "hand", "objects", "refiner", "contact", "**backbone**", "**total**"):
        assert f"| {name} |" in text, name
    heads = json.loads(out.read_text())["heads"]
    assert [h["batch"] for h in heads] == [1, 2]
    assert all({"flops", "seconds", "traffic_bytes"} <= set(m) for h in heads for m in h["modules"])


def test_bench_bf16_and_config_overrides(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--batch", "1", "--iters", "1", "--warmup", "0", "--matmul-n", "128"]
    assert bench_main([*argv, "--dtype", "bfloat16", "--set", "decoder_levels=[2,3]", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["stored_dtype"] == "bfloat16" and result["ceiling"]["dtype"] == "bfloat16"
    assert result["overrides"] == {"decoder_levels": [2, 3]}


def test_train_variants_report_each_switch(tmp_path: Path) -> None:
    from amt.inference.bench_train import bench_train
    from amt.models import build_model

    model = build_model("tiny", image_size=64)
    variants = ("default", "ema_per_tensor", "ddp_find_unused_off", "ddp_find_unused_on")
    t = bench_train(model, torch.device("cpu"), 2, iters=1, warmup=0, ceiling=1e9, variants=variants)
    assert [v["variant"] for v in t["variants"]] == list(variants)
    assert (
        all(v["samples_per_s"] > 0 for v in t["variants"]) and t["samples_per_s"] == t["variants"][0]["samples_per_s"]
    )


def test_reset_peak_before_cuda_is_initialised_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allocator has no devices before CUDA's lazy init, where resetting its peak raises."""
    from amt.inference import timing

    def boom(device=None):
        raise RuntimeError("Invalid device argument 0: did you call init?")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", boom)
    timing.reset_peak(torch.device("cuda"))
    timing.reset_peak(torch.device("cpu"))


def test_fp16_training_bench_is_refused_with_one_line(capsys) -> None:
    assert bench_main(["--train", "--autocast", "fp16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amt bench: --train") and err.count("\n") == 1


def test_an_existing_json_file_is_refused_before_the_run_unless_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    out.write_text("mine")
    argv = [
        "--preset",
        "tiny",
        "--batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--matmul-n",
        "128",
        "--json",
        str(out),
    ]
    assert bench_main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"amt bench: {out}: exists; pass --force to replace it, or choose another --json"
    )
    assert out.read_text() == "mine"
    assert bench_main([*argv, "--force"]) == 0 and json.loads(out.read_text())["preset"] == "tiny"
