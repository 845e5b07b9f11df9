"""`amt eval CKPT [--data ROOT] [--split s0_test] [--out DIR] [--report html]`.

Loads a checkpoint folder (EMA weights when its trainer state holds them), builds or opens the
split's cache, evaluates, writes the report (evaluation/report.py) and prints the tables.
Baselines come from the training split's cache (`--train-cache`, default
ROOT/cache/<train split>_<size>); without one the report says they were not computed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from amt.argtypes import int_at_least
from amt.checkpoint import CheckpointError, load_checkpoint
from amt.data.cache import CacheError, cache_folder, cache_problem, ensure_cache
from amt.data.dataset import READER_ERRORS
from amt.data.dexycb import train_split_of
from amt.data.loaders import CachedDataset
from amt.data.synth.layout import is_synthetic
from amt.errors import ConfigError, check_device
from amt.evaluation.evaluator import evaluate
from amt.evaluation.ho3d import SUBMISSION_ZIP, predict_ho3d_submission
from amt.evaluation.html_report import write_html_report
from amt.evaluation.report import REPORT_JSON, format_tables, provenance, write_report
from amt.evaluation.submission import bop_ids
from amt.models.config import recorded_crop_margin
from amt.outputs import OutputExistsError, claim_output_folder

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amt eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (config.yaml + model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the DexYCB layout")
    p.add_argument("--split", default="s0_test", help="split to evaluate (default s0_test)")
    p.add_argument(
        "--format", default="dexycb", help="how --data is read: dexycb | ho3d | folder | python:module.Class"
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="cache folder of the split (default ROOT/cache/<split>_<size>)"
    )
    p.add_argument("--train-cache", type=Path, default=None, help="training split's cache for the baselines")
    p.add_argument("--out", type=Path, default=None, help="report folder (default CKPT/eval_<split>)")
    p.add_argument("--force", action="store_true", help="write into an --out folder holding other files")
    p.add_argument("--report", choices=("md", "html"), default="md", help="also write an HTML report (html)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="processes for building caches")
    p.add_argument("--mano", type=Path, default=None, help="MANO_RIGHT.pkl: vertices of the HO-3D submission")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights even if EMA weights exist")
    p.add_argument("--synthetic", action="store_true", help="mark the report as computed on synthetic data")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    submission = args.format == "ho3d" and args.split == "evaluation"  # no ground truth: the challenge file only
    out = args.out or args.checkpoint / ("eval_ho3d" if submission else f"eval_{args.split}")
    try:  # before the checkpoint, the cache and the (long) evaluation
        check_device(args.device)
        claim_output_folder(out, SUBMISSION_ZIP if submission else REPORT_JSON, args.force, "amt eval")
    except (ConfigError, OutputExistsError) as exc:
        print(f"amt eval: {exc}", file=sys.stderr)
        return 1
    try:
        model, config = load_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    except CheckpointError as exc:
        print(f"amt eval: {exc}", file=sys.stderr)
        return 1
    root = args.data.expanduser().resolve()
    size = int(getattr(getattr(model, "config", None), "image_size", 224) or 224)
    try:
        margin = recorded_crop_margin(model)  # crops framed as in training
        cache = ensure_cache(root, args.split, size, args.cache, args.workers, format=args.format, margin=margin)
        dataset = CachedDataset(cache, mode="memmap")
    except (CacheError, *READER_ERRORS, FileExistsError) as exc:  # a bad dataset or cache: one line, no traceback
        print(f"amt eval: {exc}", file=sys.stderr)
        return 1
    if submission:
        try:
            archive = predict_ho3d_submission(
                model, root, cache, out, args.mano, batch_size=args.batch_size, device=args.device
            )
        except ValueError as exc:
            print(f"amt eval: {exc}", file=sys.stderr)
            return 1
        print(f"HO-3D submission: {archive} (upload to the HO-3D challenge)")
        return 0
    if dataset.skipped:
        log.warning(
            "%s: %d sample(s) were skipped when the cache was built (listed in its meta.json)", cache, dataset.skipped
        )
    train_split = train_split_of(args.split) if args.format == "dexycb" else "train"
    train_cache = args.train_cache or cache_folder(root, train_split, size)
    problem = cache_problem(train_cache)
    train_dataset = CachedDataset(train_cache, mode="memmap") if problem is None else None
    if train_dataset is None:
        log.warning("%s; the baselines are not computed (pass --train-cache)", problem)
    result = evaluate(
        model, dataset, root / "models", batch_size=args.batch_size, device=args.device, train_dataset=train_dataset
    )
    info = provenance(args.checkpoint, config, root, args.split, args.synthetic or is_synthetic(root), args.device)
    paths = write_report(
        result,
        out,
        info,
        bop_ids=bop_ids(root, args.split, result["predictions"].index) if args.format == "dexycb" else None,
    )
    if args.report == "html":
        paths["html"] = write_html_report(result, out, info, dataset)
    print(format_tables(result))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
