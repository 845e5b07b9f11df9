"""`amt debug CKPT --data DIR --out DIR`: diagnose a checkpoint on a few batches of a split.

Writes under --out: debug.md (tables), debug.json (every number), attention_<i>.png (input,
last-block CLS attention, rollout, top object queries). Sections: prediction diversity per head
(collapse), dead units per layer, gradient health (per-module grad norms, first module with a
NaN/Inf), memory per training phase (CUDA peak on GPU, RSS on CPU), attention maps.

--data is a dataset root in the DexYCB layout (the split's cache is built when missing, at the
checkpoint's own crop size `image_size`) or a cache folder (holding meta.json), whose crop size
must be the checkpoint's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

import torch

from amt.argtypes import int_at_least
from amt.checkpoint import CheckpointError, load_checkpoint
from amt.data.cache import META_FILE, ensure_cache
from amt.data.loaders import CachedDataset, batch_to_device, collate
from amt.data.object_tables import ObjectTables
from amt.diagnostics.report import DEBUG_JSON, format_markdown, run_diagnostics, write_debug_report
from amt.errors import ConfigError, check_device
from amt.models.config import recorded_crop_margin
from amt.outputs import OutputExistsError, claim_output_folder
from amt.training.config import RunConfig
from amt.training.losses import AMTLoss, LossConfig
from amt.training.optim import adamw
from amt.training.step import TrainStep

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amt debug", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (config.yaml + model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root (DexYCB layout) or a cache folder")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--force", action="store_true", help="write into an --out folder holding other files")
    p.add_argument("--split", default="s0_val", help="split of a dataset root (default s0_val)")
    p.add_argument("--batches", type=int_at_least(1), default=8, help="batches scanned for diversity and dead units")
    p.add_argument("--batch-size", type=int_at_least(1), default=8)
    p.add_argument("--attention-images", type=int_at_least(0), default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="processes for building a missing cache")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        check_device(args.device)
        claim_output_folder(args.out, DEBUG_JSON, args.force, "amt debug")
        model, config = load_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    except (CheckpointError, OutputExistsError, ConfigError) as exc:
        print(f"amt debug: {exc}", file=sys.stderr)
        return 1
    try:
        if (args.data / META_FILE).exists():  # --data is a cache folder
            cache = args.data
        else:
            root = args.data.expanduser().resolve()
            cache = ensure_cache(root, args.split, int(model.config.image_size), workers=args.workers,
                                 margin=recorded_crop_margin(model))  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"amt debug: {args.data}: cannot open the data ({exc})", file=sys.stderr)
        return 1
    dataset = CachedDataset(cache, mode="memmap")
    size = int(model.config.image_size)
    if len(dataset) and dataset[0]["image"].shape[-1] != size:
        print(f"amt debug: {cache}: {dataset[0]['image'].shape[-1]}-px crops, but {args.checkpoint} was trained "
              f"on {size}-px crops (model.image_size); pass the dataset root to build a matching cache",
              file=sys.stderr)  # fmt: skip
        return 1
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
    loss_cfg = RunConfig.from_resolved(config["train"]).loss if config.get("train") else LossConfig()
    train_root = (config.get("train") or {}).get("data", {}).get("root")
    # the training run's object tables (symmetries, core radii), as its trainer's loss had them;
    # read-only here: amt debug never writes into the data root
    tables = ObjectTables.for_root(train_root, write=False)
    loss_fn = AMTLoss(loss_cfg, tables.symmetries, tables.core_radius).to(args.device)
    # the memory profile's step: AdamW at lr 1e-6, so the weights barely move
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], 1e-6, torch.device(args.device))
    result = run_diagnostics(
        model, batches, args.out, loss_fn=loss_fn, attention_images=args.attention_images,
        memory_step=TrainStep(model, loss_fn, optimizer),
    )  # fmt: skip
    result["provenance"] = {
        "checkpoint": str(args.checkpoint.resolve()),
        "weights": config["weights"],
        "data": str(cache.resolve()),
        "device": args.device,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    paths = write_debug_report(result, args.out)
    print(format_markdown(result))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
