"""`amt eval --report html`: one self-contained HTML file that parses, embeds every image as a
PNG data URI and references nothing outside itself."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amt.cli import main as amt_main

CHROMIUM = Path("/usr/bin/chromium")
URL_ATTRS = {"src", "href", "srcset", "data", "poster", "action", "background"}


class Collect(HTMLParser):
    """Every tag and its attributes, and whether the tags balance."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> tuple[Path, Path]:
    """(report.html, checkpoint folder) from `amt eval --report html` on 8 synthetic-marked samples."""
    from amt.data.testing import write_fake_dexycb
    from amt.models import build_model

    tmp = tmp_path_factory.mktemp("html")
    root = write_fake_dexycb(tmp / "data", subjects=[6], sequences_per_subject=1)
    torch.manual_seed(0)
    ckpt = build_model("tiny", image_size=56).save_pretrained(tmp / "ckpt")
    out = tmp / "eval"
    argv = ["eval", str(ckpt), "--data", str(root), "--split", "s1_val", "--out", str(out), "--report", "html"]
    assert amt_main(argv + ["--device", "cpu", "--workers", "1", "--batch-size", "4", "--synthetic"]) == 0
    return out / "report.html", ckpt


def test_report_parses_embeds_every_image_and_references_nothing_external(html_report):
    path, ckpt = html_report
    text = path.read_text(encoding="utf-8")
    parser = Collect()
    parser.feed(text)
    parser.close()
    tags = [t for t, _ in parser.tags]
    assert tags[0] == "html" and "body" in tags and "table" in tags
    images = [a for t, a in parser.tags if t == "img"]
    assert len(images) >= 4  # PCK, ADD, ADD-S, at least one gallery pair
    for attrs in images:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and np.asarray(img.convert("L")).std() > 1  # decodes, not blank
    for tag, attrs in parser.tags:
        assert tag not in ("link", "script", "iframe", "object", "embed"), tag
        for name, value in attrs.items():
            if name in URL_ATTRS:
                assert value.startswith("data:"), (tag, name, value[:80])
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text
    words = " ".join(parser.text)
    assert "SYNTHETIC DATA" in words and "Provenance" in words and "Worst" in words
    for section in ("Hand", "Objects", "Contacts", "Baselines"):
        assert section in words
    sha = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert sha in words and "s1_val" in words


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (make report-check installs it)")
def test_headless_chromium_screenshot_is_not_blank(html_report, tmp_path):
    path, _ = html_report
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
           "--window-size=1200,2000", path.as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 5 and (pixels < 200).mean() > 0.01  # text, tables and plots were drawn
    assert shutil.which(str(CHROMIUM))
