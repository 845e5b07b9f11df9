"""Compiled (`amt bench --compile`: torch.compile with inductor's freezing, one static graph per
batch size) against eager inference, alternated call by call in one process so that a drifting
machine hits both alike; the bare backbone is timed the same way.

    python benchmarks/compiled_vs_eager.py --preset vits14 --batch 8,1 --rounds 8 --threads 2

Prints, per batch size: the first (compiling) calls, the largest output difference from eager,
median latencies of the timed rounds (the first two rounds dropped), the median per-round ratios
model / backbone for each path and eager / compiled for the whole model. The same-run matmul
ceiling is measured at the start and the end. Results: benchmarks/README.md
"Compiled inference on CPU".
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import torch

from amt.inference.bench import BackboneOnly, matmul_ceiling
from amt.inference.export import InputSpec, example_inputs
from amt.inference.fastpath import FastPath, FastPathConfig
from amt.inference.precision import inference_model, parse_dtype
from amt.models import build_model

DROPPED_ROUNDS = 2  # the first rounds after a compile still warm caches and allocators


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a[DROPPED_ROUNDS:], b[DROPPED_ROUNDS:], strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="vits14")
    p.add_argument("--batch", default="8,1", help="comma-separated batch sizes, timed in this order")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="stored dtype of the inference model (float32 | bfloat16)")
    args = p.parse_args()
    if args.rounds <= DROPPED_ROUNDS:
        p.error(f"--rounds must be more than {DROPPED_ROUNDS}")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = build_model(args.preset).eval()
    runners = {}
    runners["compiled"] = FastPath(inference_model(model, args.dtype), device, FastPathConfig(compile=True))
    folded = runners["compiled"].model  # one folded copy shared by the four runners
    runners["compiled_bare"] = FastPath(folded, device, FastPathConfig(compile=True), flat=BackboneOnly(folded))
    runners["eager"] = FastPath(folded, device, FastPathConfig())
    runners["eager_bare"] = FastPath(folded, device, FastPathConfig(), flat=BackboneOnly(folded))
    compute = parse_dtype(args.dtype)
    ceiling = matmul_ceiling(device, compute, 2048)["flops_per_s"] / 1e9
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"{when} {args.preset} {args.dtype}, {args.threads} threads, ceiling {ceiling:.0f} GFLOP/s", flush=True)
    for b in (int(x) for x in args.batch.split(",")):
        image, K = example_inputs(b, InputSpec.of(model).size)
        first = {}
        for name in ("compiled", "compiled_bare"):
            start = time.perf_counter()
            runners[name].run_flat(image, K)
            first[name] = time.perf_counter() - start
        compiled, eager = runners["compiled"].run_flat(image, K), runners["eager"].run_flat(image, K)
        diff = max((x - y).abs().max().item() for x, y in zip(compiled, eager, strict=True) if x.is_floating_point())
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner.run_flat(image, K)
                times[name].append(time.perf_counter() - start)
        medians = ", ".join(f"{k} {1e3 * statistics.median(v[DROPPED_ROUNDS:]):.1f} ms" for k, v in times.items())
        print(
            f"batch {b}: first calls {first['compiled']:.0f} / {first['compiled_bare']:.0f} s, "
            f"max |compiled - eager| {diff:.1e}; {medians}; model / backbone: compiled "
            f"{_ratio(times['compiled'], times['compiled_bare']):.2f}, eager "
            f"{_ratio(times['eager'], times['eager_bare']):.2f}; eager / compiled "
            f"{_ratio(times['eager'], times['compiled']):.2f}",
            flush=True,
        )
    print(f"ceiling at the end {matmul_ceiling(device, compute, 2048)['flops_per_s'] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
