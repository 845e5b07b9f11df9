"""Throughput of the synthetic generator (`amt synth`): 640x480 images written per second.

    python benchmarks/bench_synth.py [--frames 160] [--workers 1 2] [--primitives] [--json FILE]

Each configuration writes a fresh dataset into a temporary folder (JPEG colour + labels +
calibration + models, textured YCB meshes when found) and reports images/s over the whole
`generate` call, start-up (model loading, worker start, GL context) included, and the CPU
time spent per image (this process + its workers, from getrusage). On a shared machine the
wall-clock rate depends on the other load; `projected_images_per_s_2cores` = 2 / CPU seconds
per image is what two otherwise idle cores would sustain with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
from datetime import UTC, datetime

import numpy as np

from amt.data.synthetic import generate


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
            cpu0 = _cpu_seconds()
            res = generate(tmp, args.frames, seed=args.seed, workers=workers, primitives=args.primitives)
            cpu = _cpu_seconds() - cpu0
            kinds = [r["kind"] for r in res.instants_info]
            grasps = [r["contact"] for r in res.instants_info if r["kind"] == "grasp"]
            gaps = np.array([c["finger_gap"] for c in grasps])  # (G, 5) smallest gap of each finger, metres
            pads = np.array([c["finger_contact"] for c in grasps])  # (G, 5) distal segment touching
            rows.append({"workers": workers, "images": res.images, "instants": res.instants,
                         "seconds": round(res.seconds, 2), "images_per_s": round(res.frames_per_second, 2),
                         "cpu_ms_per_image": round(1000 * cpu / res.images, 1),
                         "projected_images_per_s_2cores": round(2 * res.images / cpu, 1),
                         "grasp_instants": kinds.count("grasp"),
                         # generator's own signed distances (metres) of each finger's capsules
                         "fingers_within_5mm_mean": round(float((gaps < 0.005).sum(1).mean()), 2),
                         "fingertip_pads_touching_mean": round(float(pads.sum(1).mean()), 2),
                         "grasps_with_3plus_pads_touching": round(float((pads.sum(1) >= 3).mean()), 3),
                         "median_contact_gap_mm": round(1000 * float(np.median(gaps[gaps < 0.005])), 3),
                         "max_finger_penetration_mm": round(1000 * float(max(0.0, -gaps.min())), 3)})  # fmt: skip
    report = {
        "benchmark": "synth",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "objects": "primitives" if args.primitives else "YCB meshes (if found)",
        "resolution": "640x480",
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    print("\n| workers | images | seconds | images/s | CPU ms/image | projected images/s (2 idle cores) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['images']} | {r['seconds']} | {r['images_per_s']} | {r['cpu_ms_per_image']} "
            f"| {r['projected_images_per_s_2cores']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
