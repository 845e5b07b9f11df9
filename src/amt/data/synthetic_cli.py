"""`amt synth OUT --frames N [--format dexycb|folder]`: write a synthetic dataset in the DexYCB
layout (default) or the plain-folder format (docs/datasets.md)."""

from __future__ import annotations

import argparse
import sys

from amt.argtypes import float_in, int_at_least
from amt.data.synth_folder import generate_folder
from amt.data.synthetic import generate


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amt synth", description=__doc__)
    parser.add_argument("out", help="dataset root to write")
    parser.add_argument(
        "--frames",
        type=int_at_least(1),
        required=True,
        help="total images over all sequences and the 8 cameras (rounded up to a multiple of 8)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--models",
        default=None,
        help="DexYCB-style models/ folder (default: $AMT_YCB_MODELS or shared/data/ycb_models)",
    )
    parser.add_argument("--primitives", action="store_true", help="use textured primitives instead of YCB meshes")
    parser.add_argument(
        "--mano",
        default=None,
        help="MANO_RIGHT.pkl (MANO_LEFT.pkl beside it for left hands) or their folder; default: procedural hand",
    )
    parser.add_argument(
        "--left-fraction",
        type=float_in(0, 1),
        default=0.0,
        help="share of sequences with a left hand (cached as their mirror image; default 0)",
    )
    parser.add_argument("--workers", type=int_at_least(1), default=2)
    parser.add_argument(
        "--format",
        choices=("dexycb", "folder"),
        default="dexycb",
        help="output layout: DexYCB folders (default) or the plain-folder format (images + annotations.jsonl)",
    )
    args = parser.parse_args(argv)
    try:
        writer = generate_folder if args.format == "folder" else generate
        result = writer(
            args.out,
            args.frames,
            seed=args.seed,
            models=args.models,
            mano=args.mano,
            left_fraction=args.left_fraction,
            workers=args.workers,
            primitives=args.primitives,
        )
    except (FileNotFoundError, NotImplementedError, ValueError) as exc:
        print(f"amt synth: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.images} images ({result.instants} instants x 8 cameras) to {result.root} "
        f"in {result.seconds:.1f} s ({result.frames_per_second:.1f} images/s)"
    )
    return 0
