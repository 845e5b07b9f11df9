"""benchmarks/gpu_session.sh, the prepared GPU session, runs its phases on CPU and leaves a summary
line, log and JSON per phase in $OUT (on the GPU machine the same script runs with DEVICE=cuda)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_session.sh"


def test_gpu_session_script_runs_its_phases_and_writes_each_result(tmp_path: Path):
    out = tmp_path / "out"
    env = dict(
        os.environ,
        OUT=str(out),
        PYTHON=sys.executable,
        DEVICE="cpu",
        PRESETS="tiny",
        BATCH="1",
        RUN_TESTS="0",
        GPU_WHEELS=str(tmp_path / "no_wheels"),  # nothing to carry here: the venv has every package
        GPU_SITE=str(tmp_path / "site"),
        GPU_DATA=str(tmp_path / "no_data"),  # no training cache: the training phases are skipped
    )
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["env", "rc=0"], ["bench_tiny", "rc=0"]], summary
    assert "torch" in (out / "env.log").read_text()
    result = json.loads((out / "bench_tiny.json").read_text())
    assert result["preset"] == "tiny" and result["ceiling"] and result["train"]  # ceiling and step in one run
    assert [row["batch"] for row in result["inference"]] == [1]
    assert (out / "bench_tiny.log").read_text().strip()
