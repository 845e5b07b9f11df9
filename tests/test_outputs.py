"""The verbs' rule for output locations (amt.outputs): new, empty or their own folder; no file replaced unasked."""

from __future__ import annotations

from pathlib import Path

import pytest

from amt.outputs import OutputExistsError, claim_output_file, claim_output_folder


def test_a_new_empty_or_own_folder_is_accepted(tmp_path: Path) -> None:
    claim_output_folder(tmp_path / "new", "summary.json", False, "amt x")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "empty").mkdir()
    claim_output_folder(tmp_path / "empty", "summary.json", False, "amt x")
    own = tmp_path / "own"
    own.mkdir()
    (own / "summary.json").write_text("{}")
    (own / "a.json").write_text("{}")
    claim_output_folder(own, "summary.json", False, "amt x")
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "results.csv").write_text("")
    claim_output_folder(sweep, ("study.db", "trials"), False, "amt x")  # any one of several markers
    with pytest.raises(OutputExistsError):
        claim_output_folder(sweep, ("study.db", "summary.json"), False, "amt x")


def test_a_folder_of_other_files_needs_force(tmp_path: Path) -> None:
    for name in ("a.json", "b.png", "c.txt", "d.txt"):
        (tmp_path / name).write_text("mine")
    with pytest.raises(OutputExistsError, match=r"did not write \(a.json, b.png, c.txt, \.\.\.\); .*--force"):
        claim_output_folder(tmp_path, "summary.json", False, "amt x")
    claim_output_folder(tmp_path, "summary.json", True, "amt x")
    with pytest.raises(OutputExistsError, match="must be a folder"):
        claim_output_folder(tmp_path / "a.json", "summary.json", False, "amt x")


def test_an_existing_file_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    claim_output_file(target, False)
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        claim_output_file(target, False, "--video-out")
    claim_output_file(target, True)
    with pytest.raises(OutputExistsError, match="names a folder"):
        claim_output_file(tmp_path, True)


@pytest.mark.parametrize(("verb", "marker"), [("eval", "report.json"), ("debug", "debug.json")])
def test_report_verbs_refuse_a_users_folder_before_loading_anything(verb, marker, tmp_path: Path, capsys) -> None:
    from amt.cli import main as amt_main

    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.md").write_text("mine")
    argv = [verb, str(tmp_path / "no_checkpoint"), "--data", str(tmp_path / "no_data"), "--out", str(out)]
    assert amt_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"amt {verb}: {out}: holds files that `amt {verb}` did not write (README.md)"), err
    assert [p.name for p in out.iterdir()] == ["README.md"]
    (out / marker).write_text("{}")  # a folder the verb wrote before: the checkpoint is the next problem
    assert amt_main(argv) == 1
    assert "no_checkpoint" in capsys.readouterr().err
