"""`amt debug CKPT --data DIR --out DIR`: diagnose a checkpoint on a few batches of a split.

Writes under --out: debug.md (tables), debug.json (every number), attention_<i>.png (input,
last-block CLS attention, rollout, top object queries). Sections: prediction diversity per head
(collapse), dead units per layer, gradient health (per-module grad norms, first module with a
NaN/Inf), memory per training phase (CUDA peak on GPU, RSS on CPU), attention maps.

--data is a dataset root in the DexYCB layout (the split's cache is built when missing) or a
cache folder (holding meta.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amt debug", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (config.yaml + model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root (DexYCB layout) or a cache folder")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--split", default="s0_val", help="split of a dataset root (default s0_val)")
    p.add_argument("--batches", type=int, default=8, help="batches scanned for diversity and dead units")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--attention-images", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    p.add_argument("--workers", type=int, default=2, help="processes for building a missing cache")
    return p


def _cache_folder(data: Path, split: str, size: int, workers: int) -> Path:
    from amt.data.cache import META_FILE
    from amt.evaluation.cli import open_or_build_cache

    if (data / META_FILE).exists():
        return data
    return open_or_build_cache(data.expanduser().resolve(), split, size, None, workers)


def main(argv: list[str]) -> int:
    from amt.data.loaders import CachedDataset, batch_to_device, collate
    from amt.diagnostics.report import format_markdown, run_diagnostics, write_debug_report
    from amt.evaluation.cli import CheckpointError, load_checkpoint
    from amt.training.config import build_loss_config
    from amt.training.losses import AMTLoss

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model, config = load_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    except CheckpointError as exc:
        print(f"amt debug: {exc}", file=sys.stderr)
        return 1
    try:
        cache = _cache_folder(args.data, args.split, int(model.config.image_size), args.workers)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"amt debug: {args.data}: cannot open the data ({exc})", file=sys.stderr)
        return 1
    dataset = CachedDataset(cache, mode="memmap")
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    batches = []
    for batch in loader:
        if len(batches) >= args.batches:
            break
        batches.append(batch_to_device(batch, args.device))
    if not batches:
        print(f"amt debug: {cache}: the dataset is empty", file=sys.stderr)
        return 1
    model.to(args.device)
    loss_values = (config.get("train") or {}).get("loss") or {}
    loss_fn = AMTLoss(build_loss_config(loss_values)).to(args.device)
    result = run_diagnostics(model, batches, args.out, loss_fn=loss_fn, attention_images=args.attention_images)
    result["provenance"] = {
        "checkpoint": str(args.checkpoint.resolve()),
        "weights": config["weights"],
        "data": str(cache.resolve()),
        "device": args.device,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    paths = write_debug_report(result, args.out)
    print(format_markdown(result))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
