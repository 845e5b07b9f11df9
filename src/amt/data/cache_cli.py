"""`amt cache DATA_ROOT --split s0_train`: build the preprocessed training cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amt.argtypes import float_in, int_at_least
from amt.data.cache import META_FILE, CacheError, build_cache, cache_folder, read_cache_meta
from amt.data.transforms import MAX_CROP_MARGIN, MIN_CROP_SIZE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amt cache", description="Build hand-centred crops + labels for one split.")
    p.add_argument("root", type=Path, help="DexYCB root (subject folders, calibration/, models/)")
    p.add_argument(
        "--format",
        default="dexycb",
        help="how ROOT is read: dexycb | ho3d | folder | python:module.Class (default dexycb)",
    )
    p.add_argument("--split", default="s0_train", help="split name, s{0..3}_{train,val,test} (default s0_train)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default ROOT/cache/<split>_<size>)")
    p.add_argument("--size", type=int_at_least(MIN_CROP_SIZE), default=224, help="crop side in pixels (default 224)")
    p.add_argument(
        "--margin",
        type=float_in(1, MAX_CROP_MARGIN),
        default=1.5,
        help="crop side / extent of the 2D joints (default 1.5)",
    )
    p.add_argument(
        "--min-size", type=int_at_least(1), default=96, help="smallest crop side in image pixels (default 96)"
    )
    p.add_argument(
        "--threshold-mm", type=float_in(0, open_low=True), default=10.0, help="contact distance in mm (default 10)"
    )
    p.add_argument("--models-dir", type=Path, default=None, help="object meshes (default ROOT/models)")
    p.add_argument(
        "--mano-dir",
        type=Path,
        default=None,
        help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl: contacts from MANO vertices (default: skeleton)",
    )
    p.add_argument("--workers", type=int_at_least(1), default=2, help="parallel worker processes (default 2)")
    p.add_argument("--chunk-size", type=int_at_least(1), default=64, help="samples per resumable chunk (default 64)")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete cache exists")
    p.add_argument("--no-resume", action="store_true", help="restart an interrupted build from scratch")
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    p.add_argument(
        "--verify", action="store_true", help="only check an existing cache: marker, sizes and SHA-256 of every file"
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    out = args.out or cache_folder(args.root, args.split, args.size)
    if args.verify:
        try:
            meta = read_cache_meta(out, verify=True)
        except CacheError as exc:
            print(f"amt cache: {exc}", file=sys.stderr)
            return 1
        print(f"{out}: complete, {meta['num_samples']} rows, {len(meta['skipped'])} skipped; checksums match")
        return 0
    try:
        folder = build_cache(
            args.root,
            args.split,
            out,
            size=args.size,
            margin=args.margin,
            min_size=args.min_size,
            workers=args.workers,
            force=args.force,
            resume=not args.no_resume,
            models_dir=args.models_dir,
            mano_dir=args.mano_dir,
            threshold_mm=args.threshold_mm,
            chunk_size=args.chunk_size,
            strict=args.strict,
            format=args.format,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"amt cache: {exc}", file=sys.stderr)
        return 1
    skipped = read_cache_meta(folder)["skipped"]
    print(f"cache written to {folder}; {len(skipped)} sample(s) skipped")
    for entry in skipped[:20]:
        print(f"  skipped row {entry['row']}: {entry['error']}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (key 'skipped' of {folder / META_FILE})")
    return 0
