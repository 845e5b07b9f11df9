"""`amt synth OUT --frames N [--format dexycb|folder]`: write a synthetic dataset in the DexYCB
layout (default) or the plain-folder format (docs/datasets.md).

OUT is a new or empty folder, or an earlier `amt synth` output, which is replaced as a whole (its
subject / split folders, calibration and models; a cache folder beside them is kept, and its
source check tells whether it still fits). Any other folder, a real DexYCB root for one, is
refused unless --force: synthetic subjects carry DexYCB's subject names and would replace its
files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from amt.argtypes import float_in, int_at_least
from amt.data.dexycb import SUBJECTS
from amt.data.synth.layout import SYNTHETIC_MARKER, is_synthetic
from amt.data.synth_folder import SYNTH_SPLITS, TMP_PREFIX, generate_folder
from amt.data.synthetic import generate
from amt.outputs import OutputExistsError, claim_output_folder

# What `amt synth` writes in OUT, in either layout: replaced as a whole when it writes there again.
SYNTH_ENTRIES: tuple[str, ...] = (*SUBJECTS, "calibration", "models", *SYNTH_SPLITS, SYNTHETIC_MARKER)


def prepare_root(out: Path, force: bool) -> None:
    """Make `out` ready for a new synthetic dataset (see the module docstring)."""
    if out.is_dir() and is_synthetic(out):
        print(f"amt synth: replacing the earlier synthetic dataset in {out}", file=sys.stderr)
        for path in out.iterdir():  # a killed `--format folder` run leaves its temporary tree too
            if path.name in SYNTH_ENTRIES or path.name.startswith(TMP_PREFIX):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return
    claim_output_folder(out, SYNTHETIC_MARKER, force, "amt synth")


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
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty folder that `amt synth` did not write"
    )
    args = parser.parse_args(argv)
    try:
        prepare_root(Path(args.out), args.force)
    except OutputExistsError as exc:
        print(f"amt synth: {exc}", file=sys.stderr)
        return 2
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
