"""Numeric flags out of their range are one usage line (exit 2) from every verb, and the crop and
contact settings refuse impossible values wherever they are built."""

from __future__ import annotations

import re

import pytest

from amt.cli import main as amt_main
from amt.data.contacts import ContactConfig
from amt.data.transforms import CropConfig
from amt.errors import ConfigError


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "ck", "img.png", "--out", "o", "--hfov", "0"], r"--hfov: '0': expected a number in \(0, 180\)"),
        (["predict", "ck", "img.png", "--out", "o", "--hfov", "200"], r"--hfov: '200'"),
        (["predict", "ck", "img.png", "--out", "o", "--margin", "0"], r"--margin: '0': expected a number in \[1, 10\]"),
        (["predict", "ck", "img.png", "--out", "o", "--margin", "nan"], r"--margin: 'nan'"),
        (["predict", "ck", "img.png", "--out", "o", "--score-threshold", "2"], r"--score-threshold: '2'"),
        (["predict", "ck", "img.png", "--out", "o", "--fps", "0"], r"--fps: '0': expected a number in \(0, inf\)"),
        (["predict", "ck", "img.png", "--out", "o", "--max-pixels", "0"], r"--max-pixels: '0'"),
        (["export", "ck", "--format", "onnx", "--tolerance", "-1"], r"--tolerance: '-1'"),
        (["cache", "d", "--size", "0"], r"--size: '0': expected a whole number >= 16"),
        (["cache", "d", "--margin", "0.5"], r"--margin: '0.5'"),
        (["cache", "d", "--threshold-mm", "-1"], r"--threshold-mm: '-1'"),
        (["cache", "d", "--workers", "0"], r"--workers: '0': expected a whole number >= 1"),
        (["cache", "d", "--chunk-size", "two"], r"--chunk-size: 'two'"),
        (["synth", "d", "--frames", "0"], r"--frames: '0'"),
        (["synth", "d", "--frames", "8", "--left-fraction", "2"], r"--left-fraction: '2'"),
        (["bench", "--iters", "0"], r"--iters: '0'"),
        (["bench", "--threads", "0"], r"--threads: '0'"),
        (["bench", "--warmup", "-1"], r"--warmup: '-1': expected a whole number >= 0"),
        (["eval", "ck", "--workers", "0"], r"--workers: '0'"),
        (["eval", "ck", "--batch-size", "0"], r"--batch-size: '0'"),
        (["debug", "ck", "--batches", "0"], r"--batches: '0'"),
        (["demo", "--steps", "0"], r"--steps: '0'"),
        (["demo", "--crop-margin", "0.5"], r"--crop-margin: '0.5'"),
        (["demo", "--lr", "0"], r"--lr: '0'"),
    ],
)
def test_out_of_range_flags_are_one_usage_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        amt_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"amt {argv[0]}: error: argument ") and "Traceback" not in err, err
    assert re.search(message, last), last


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"size": 0}, r"crop size must be a whole number of pixels >= 16, got 0"),
        ({"size": 64.5}, r"crop size"),
        ({"margin": 0.0}, r"crop margin \(crop side / hand box side\) must lie in 1..10, got 0.0"),
        ({"margin": float("nan")}, r"crop margin"),
        ({"min_size": 0}, r"crop min_size"),
    ],
)
def test_crop_config_refuses_impossible_crops(fields, message):
    with pytest.raises(ConfigError, match=message):
        CropConfig(**fields)


def test_model_info_names_a_head_width_the_heads_cannot_have(capsys):
    assert amt_main(["model-info", "--hidden-dim", "30"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "amt model-info: config model.hidden_dim=30: expected a multiple of 4, >= 4", err


def test_contact_config_refuses_a_non_positive_threshold():
    with pytest.raises(ConfigError, match="contact threshold must be a positive number of millimetres, got -1"):
        ContactConfig(threshold_mm=-1)
    with pytest.raises(ConfigError, match="num_points"):
        ContactConfig(num_points=0)
    assert ContactConfig(threshold_mm=5).threshold_mm == 5
