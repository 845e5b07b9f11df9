"""Throughput of the synthetic generator (`amt synth`): 640x480 images written per second.

    python benchmarks/bench_synth.py [--frames 160] [--workers 1 2] [--primitives] [--json FILE]

Each configuration writes a fresh dataset into a temporary folder (JPEG colour + labels +
calibration + models, textured YCB meshes when found) and reports images/s over the whole
`generate` call, start-up (model loading, worker spawn, GL context) included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import datetime, timezone

from amt.data.synthetic import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--primitives", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            res = generate(tmp, args.frames, seed=args.seed, workers=workers, primitives=args.primitives)
            kinds = [r["kind"] for r in res.instants_info]
            rows.append({"workers": workers, "images": res.images, "instants": res.instants,
                         "seconds": round(res.seconds, 2), "images_per_s": round(res.frames_per_second, 2),
                         "grasp_instants": kinds.count("grasp")})  # fmt: skip
    report = {
        "benchmark": "synth",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "objects": "primitives" if args.primitives else "YCB meshes (if found)",
        "resolution": "640x480",
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    print(f"\n| workers | images | seconds | images/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['images']} | {r['seconds']} | {r['images_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
