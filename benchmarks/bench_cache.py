"""Loader throughput of the training cache: samples/s for disk, memmap, ram and device-resident reads.

    python benchmarks/bench_cache.py [--cache DIR] [--samples 1024] [--batch-size 64] [--workers 0 2]
                                     [--augment] [--json runs/bench_cache.json]

Without --cache, a synthetic DexYCB tree (s0_val, 224 px crops) is written and cached in a
temporary folder first. Each loader runs `--epochs` full epochs after one warm-up epoch; the
figure is samples delivered per second, as a batch on the target device (normalised float32
images, `BatchAugment` applied when --augment). Files are read from the page cache after the
warm-up, so "disk" measures the read path, not the drive.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from amt.data.augment import BatchAugment
from amt.data.cache import build_cache
from amt.data.loaders import CachedDataset, GPUCachedDataset, batch_to_device, make_loader
from amt.data.testing import write_fake_dexycb
from amt.data.transforms import normalize_images

SPLIT = "s0_val"  # 2 subjects x 1 sequence x 8 serials in a synthetic tree


def _synthetic_cache(folder: Path, samples: int, size: int, workers: int) -> Path:
    frames = max(1, -(-samples // 16))
    root = write_fake_dexycb(folder / "data", subjects=2, serials=8, frames=[0, 0, 0, 0, frames] * 2, seed=0)
    return build_cache(root, SPLIT, folder / "cache", size=size, workers=workers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_epochs(
    epoch: Callable[[], Iterable[dict[str, Any]]],
    finish: Callable[[dict[str, Any]], Any],
    device: torch.device,
    epochs: int,
) -> float:
    """Samples per second over `epochs` epochs, after one warm-up epoch."""
    for batch in epoch():
        finish(batch)
    _sync(device)
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in epoch():
            finish(batch)
            count += int(batch["image"].shape[0])
    _sync(device)
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    augment = BatchAugment() if args.augment else None
    gen = torch.Generator(device=device).manual_seed(0)

    def read(batch: dict[str, Any]) -> dict[str, Any]:
        """The loader alone: the uint8 batch on the device."""
        return batch_to_device(batch, device)

    def ready(batch: dict[str, Any]) -> dict[str, Any]:
        """What a training step receives: on the device, normalised (and augmented)."""
        batch = batch_to_device(batch, device)
        if augment is not None:
            return augment(batch, gen)
        return {**batch, "image": normalize_images(batch["image"])}

    with tempfile.TemporaryDirectory() as tmp:
        cache = (
            Path(args.cache) if args.cache else _synthetic_cache(Path(tmp), args.samples, args.size, args.build_workers)
        )
        loaders: list[tuple[str, int, Callable[[], Iterable[dict[str, Any]]]]] = []
        for mode in ("disk", "memmap", "ram"):
            ds = CachedDataset(cache, mode=mode, normalize=False)
            for workers in args.workers:
                loader = make_loader(
                    ds,
                    args.batch_size,
                    shuffle=True,
                    num_workers=workers,
                    drop_last=True,
                    pin_memory=device.type == "cuda",
                )
                loaders.append((f"CachedDataset({mode})", workers, lambda loader=loader: loader))
        resident = GPUCachedDataset(cache, device, normalize=False)
        loaders.append(("GPUCachedDataset", 0, lambda: resident.batches(args.batch_size, True, gen, True)))
        rows = [
            {
                "loader": name,
                "workers": workers,
                "device": str(device),
                "read_samples_per_s": _time_epochs(epoch, read, device, args.epochs),
                "ready_samples_per_s": _time_epochs(epoch, ready, device, args.epochs),
            }
            for name, workers, epoch in loaders
        ]
        n = len(resident)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cache": str(args.cache) if args.cache else f"synthetic {SPLIT}",
        "num_samples": n,
        "size": args.size,
        "batch_size": args.batch_size,
        "augment": bool(args.augment),
        "epochs": args.epochs,
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="an existing cache folder (default: build a synthetic one)")
    p.add_argument("--samples", type=int, default=1024, help="synthetic cache size (rounded up to a multiple of 16)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--build-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per loader and figure")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--augment", action="store_true", help="apply BatchAugment on the device to each batch")
    p.add_argument("--json", type=Path, default=Path("runs/bench_cache.json"))
    args = p.parse_args(argv)
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(
        f"{report['num_samples']} samples at {report['size']} px, batch {report['batch_size']}, "
        f"augment={report['augment']}, {report['device_name']}, {report['date']}"
    )
    ready = "normalised+augmented" if report["augment"] else "normalised"
    print(f"| {'loader':<22} | workers | device | read samples/s | {ready} samples/s |")
    print(f"|{'-' * 24}|---------|--------|----------------|{'-' * (len(ready) + 12)}|")
    for r in report["results"]:
        print(
            f"| {r['loader']:<22} | {r['workers']:>7} | {r['device']:>6} | {r['read_samples_per_s']:>14.0f} "
            f"| {r['ready_samples_per_s']:>{len(ready) + 10}.0f} |"
        )
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
