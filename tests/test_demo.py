"""`amt demo` smoke test (a few frames and steps; `make demo` runs the full size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amt.demo import MARKER, MIN_FRAMES, main, prepare_out


def test_demo_runs_end_to_end_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the demo's data never depends on files outside the repository: without --models it neither
    # reads $AMT_YCB_MODELS nor searches parent folders (this value would raise if it were read)
    monkeypatch.setenv("AMT_YCB_MODELS", str(tmp_path / "no_such_models"))
    out = tmp_path / "demo"
    # the fewest frames the demo accepts still give it a held-out split (test_samples > 0 below)
    argv = ["--out", str(out), "--frames", str(MIN_FRAMES), "--steps", "2", "--batch-size", "8", "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Learning checks" in printed and "baseline" in printed and "matmul ceiling" in printed
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["synthetic_data"] is True
    assert [c["name"] for c in report["demo"]["checks"]] == [
        "root-relative MPJPE (mm)", "grasped-object recall", "grasped-object class accuracy",
        "grasped-object translation error (mm)", "contact F1", "collapse ratio",
    ]  # fmt: skip
    marker = json.loads((out / MARKER).read_text())
    for ceiling in (report["demo"]["matmul_ceiling"], marker["matmul_ceiling"]):
        assert ceiling["start"]["flops_per_s"] > 0 and ceiling["end"]["dtype"] == "float32"
    assert marker["timings"]["total_s"] > 0
    assert report["baselines"]["hand_root_relative_mpjpe"] > 0
    assert report["baselines"]["object_translation_error"] > 0
    assert report["baselines"]["object_translation_error_grasped"] > 0
    assert report["demo"]["test_samples"] > 0 and report["demo"]["train_samples"] > 0
    for name in ("training_curves.png", "pck_curves.png", "hpe_submission.txt", "bop_results.csv", "report.md"):
        assert (out / "eval" / name).stat().st_size > 0, name
    assert list((out / "eval" / "overlays").glob("*.png"))
    assert (out / "train" / "checkpoints" / "last" / "model.safetensors").exists()

    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_strict_fails_on_a_failed_check_and_a_bad_models_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = {"demo": {"all_checks_passed": False}}
    monkeypatch.setattr("amt.demo.run_demo", lambda out, cfg, force=False: result)
    assert main(["--out", str(tmp_path / "a")]) == 0  # without --strict a failed check is reported only
    assert main(["--out", str(tmp_path / "b"), "--strict"]) == 1
    assert "learning checks failed" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "c"), "--models", str(tmp_path / "missing")]) == 2
    assert "--models" in capsys.readouterr().err


def test_fewer_frames_than_a_held_out_scene_needs_is_a_usage_line(tmp_path: Path, capsys) -> None:
    """--frames 8 used to synthesise, then stop with an EmptySplitError traceback at the s0_test cache."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "d"), "--frames", str(MIN_FRAMES - 8)])
    assert exit_info.value.code == 2
    assert f"--frames: '{MIN_FRAMES - 8}': expected a whole number >= {MIN_FRAMES}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_settings_that_cannot_make_a_run_are_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    """--image-size 100 (the conv stem needs a multiple of 8) used to synthesise and cache, then
    stop with a ConfigError traceback."""
    assert main(["--out", str(tmp_path / "d"), "--image-size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "amt demo: config model.image_size=100: expected a multiple of patch_size=8 (backbone_stem='conv')"
    assert not (tmp_path / "d").exists()


def test_force_never_deletes_files_of_a_folder_the_demo_did_not_make(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data").mkdir()
    (user / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_out(user, force=False)
    target = prepare_out(user, force=True)
    assert target.parent == user and target.name.startswith("demo_") and not any(target.iterdir())
    assert (user / "data" / "precious.txt").read_text() == "keep me"


def test_force_replaces_only_the_outputs_of_a_previous_demo(tmp_path: Path) -> None:
    previous = tmp_path / "demo"
    (previous / "train").mkdir(parents=True)
    (previous / "train" / "old.txt").write_text("old run")
    (previous / "notes.txt").write_text("user notes")
    (previous / MARKER).write_text("{}")
    assert prepare_out(previous, force=True) == previous
    assert not (previous / "train").exists()
    assert (previous / "notes.txt").read_text() == "user notes"
