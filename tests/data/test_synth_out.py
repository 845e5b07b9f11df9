"""`amt synth OUT` never writes into a user's folder (a real DexYCB root above all: synthetic
subjects carry its subject names) without --force, and writing again into its own earlier output
replaces it as a whole, so that two datasets never mix."""

from __future__ import annotations

from pathlib import Path

import pytest

from amt.cli import main as amt_main
from amt.data.dataset import open_dataset
from amt.data.synth_folder import SYNTH_SPLITS
from amt.data.testing import write_fake_dexycb


def _synth(out: Path, frames: int, *extra: str) -> int:
    return amt_main(["synth", str(out), "--frames", str(frames), "--primitives", "--workers", "1", *extra])


def _samples(root: Path, format: str = "dexycb") -> int:
    """Samples over the s0 splits (the plain-folder layout writes only the non-empty ones)."""
    splits = [s for s in SYNTH_SPLITS if format == "dexycb" or (root / s).is_dir()]
    return sum(len(open_dataset(format, root, split, load_image=False)) for split in splits)


def test_a_users_folder_and_a_real_dexycb_root_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert _synth(mine, 8) == 2
    assert "holds files that `amt synth` did not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    real = write_fake_dexycb(tmp_path / "dexycb", subjects=2, labels=False, images=False)
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    assert _synth(real, 8) == 2
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before

    assert _synth(mine, 8, "--force") == 0  # asked for: written beside the user's file, which stays
    assert (mine / "notes.txt").read_text() == "mine" and _samples(mine) == 8


@pytest.mark.parametrize("format", ["dexycb", "folder"])
def test_writing_again_replaces_the_earlier_output_as_a_whole(tmp_path: Path, format: str) -> None:
    out = tmp_path / "synth"
    assert _synth(out, 16, "--format", format) == 0
    assert _samples(out, format) == 16
    (out / "cache").mkdir()  # a cache built there is not synth's to delete
    assert _synth(out, 8, "--format", format) == 0
    assert _samples(out, format) == 8  # not 16 with the first run's sequences left in
    assert (out / "cache").is_dir()
