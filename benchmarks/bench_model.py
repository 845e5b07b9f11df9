"""Model speed benchmark: a thin wrapper around `amt bench` (amt.inference.bench).

    python benchmarks/bench_model.py --preset vitb14 --batch 1,8 --train --json runs/bench_vitb14.json

Arguments are those of `amt bench --help`. Results and the commands behind them: benchmarks/README.md.
"""

from __future__ import annotations

import sys

from amt.inference.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
