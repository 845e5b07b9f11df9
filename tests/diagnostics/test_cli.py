"""`amt debug`: Markdown + JSON + PNGs from a checkpoint and a dataset root or cache folder."""

from __future__ import annotations

import json

from amt.cli import main as amt_main
from amt.data.cache import cache_folder

SPLIT, SIZE = "s1_val", 56  # as in conftest.py's debug_data


def test_amt_debug_writes_markdown_json_and_pngs(tiny56, debug_data, tmp_path, capsys):
    ckpt = tiny56().save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "debug"
    argv = ["debug", str(ckpt), "--data", str(debug_data), "--split", SPLIT, "--out", str(out)]
    assert amt_main(argv + ["--batches", "2", "--batch-size", "4", "--attention-images", "1", "--device", "cpu"]) == 0
    report = json.loads((out / "debug.json").read_text())
    assert report["num_samples"] == 8
    assert set(report) >= {"diversity", "dead_units", "gradients", "non_finite", "memory", "attention", "provenance"}
    assert report["non_finite"]["healthy"] and report["gradients"]["hand.out"] > 0
    assert set(report["memory"]) == {"forward", "backward", "optimizer"}
    assert report["attention"]["images"] == ["attention_0.png"] and (out / "attention_0.png").stat().st_size > 1000
    md = (out / "debug.md").read_text()
    for section in ("Prediction diversity", "Dead units", "Gradient health", "Memory per phase", "Attention"):
        assert f"## {section}" in md
    assert "debug.md" in capsys.readouterr().out


def test_amt_debug_accepts_a_cache_folder_and_reports_a_missing_checkpoint(tiny56, debug_data, tmp_path, capsys):
    cache = cache_folder(debug_data, SPLIT, SIZE)
    ckpt = tiny56().save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "debug"
    argv = [
        "debug",
        str(ckpt),
        "--data",
        str(cache),
        "--out",
        str(out),
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--attention-images",
        "0",
    ]
    assert amt_main(argv) == 0
    assert json.loads((out / "debug.json").read_text())["num_samples"] == 2
    assert amt_main(["debug", str(tmp_path / "nope"), "--data", str(cache), "--out", str(out)]) == 1
    assert "nope" in capsys.readouterr().err
