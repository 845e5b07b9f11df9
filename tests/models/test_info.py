"""`amt model-info`: parameter counts on the meta device."""

from __future__ import annotations

import pytest

from amt.models.config import PAPER_PARAMS_M
from amt.models.info import count_parameters, main


def test_paper_preset_freezes_exactly_what_the_paper_froze() -> None:
    counts = count_parameters("vitl14")
    frozen_m = (counts["total"] - counts["trainable"]) / 1e6
    # embeddings + blocks 0-11 of ViT-L/14: the published total minus trainable
    assert frozen_m == pytest.approx(PAPER_PARAMS_M["total"] - PAPER_PARAMS_M["trainable"], abs=0.05)
    assert counts["backbone"] / 1e6 == pytest.approx(304.4, abs=0.1)  # DINOv2 ViT-L/14 at 518 px
    assert counts["total"] == counts["backbone"] + counts["head"]


def test_cli_prints_every_requested_preset_and_the_paper_figures(capsys: pytest.CaptureFixture) -> None:
    assert main(["--preset", "tiny", "--preset", "vitl14"]) == 0
    text = capsys.readouterr().out
    assert "tiny" in text and "vitl14" in text and "516.1" in text and "362.9" in text
