"""`amt convert-checkpoint OLD_FOLDER [--out NEW]`: an old-format checkpoint (pickled trainer.pt)
to the pickle-free format (trainer.safetensors + trainer.json + complete.json).

Run it only on folders you trust. The pickle is read with `torch.load(weights_only=True)` plus the
numpy types an RNG state needs, which cannot run code; a file needing more is refused unless
`--unsafe-pickle` is given, which loads it with `weights_only=False` (then any code in it runs).
Nothing is overwritten: without --out the new files are added next to trainer.pt (the loaders
ignore trainer.pt from then on); --out must name a folder that does not exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amt.checkpoint import LEGACY_STATE, CheckpointError, convert_legacy


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="amt convert-checkpoint",
        description="Convert an old-format checkpoint folder (pickled trainer.pt) to the pickle-free format.",
    )
    p.add_argument("folder", type=Path, help="checkpoint folder holding trainer.pt")
    p.add_argument("--out", type=Path, default=None, help="new folder (default: add the new files to FOLDER)")
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="load trainer.pt with weights_only=False: runs any code it holds; only for files you trust",
    )
    args = p.parse_args(argv)
    print(
        f"amt convert-checkpoint: reading {args.folder / LEGACY_STATE}, a pickle; convert only checkpoints "
        "from a source you trust" + (" (--unsafe-pickle: any code in it WILL run)" if args.unsafe_pickle else ""),
        file=sys.stderr,
    )
    try:
        out = convert_legacy(args.folder, args.out, unsafe_pickle=args.unsafe_pickle)
    except CheckpointError as exc:
        print(f"amt convert-checkpoint: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (trainer.safetensors, trainer.json, complete.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
