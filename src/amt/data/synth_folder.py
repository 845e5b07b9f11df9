"""`amt synth --format folder`: the synthetic generator's output in the plain-folder format.

The scenes are generated exactly as for the DexYCB layout (`amt.data.synthetic.generate`, same
seed, same files), into a temporary DexYCB tree beside `out`; each non-empty split of it is then
written through the dataset interface by `amt.data.folder.write_folder` (images copied byte for
byte, labels as JSON that round-trips float32 exactly), and the temporary tree is removed. So a
cache built from either layout holds the same bytes, which the tests check end to end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from amt.data.dexycb import DexYCB
from amt.data.folder import write_folder
from amt.data.synth.layout import SYNTHETIC_MARKER
from amt.data.synthetic import GenerateResult, generate

# The splits `amt synth` plans for (amt.data.synth.layout): DexYCB's s0 setup.
SYNTH_SPLITS: tuple[str, ...] = ("s0_train", "s0_val", "s0_test")
TMP_PREFIX = ".synth-dexycb-"  # the temporary DexYCB tree inside `out`


def generate_folder(out: str | os.PathLike, frames: int, **kwargs: Any) -> GenerateResult:
    """`generate(out, frames, **kwargs)` written in the plain-folder format; splits s0_train,
    s0_val and s0_test (those with samples) become the split folders of `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    try:
        result = generate(tmp, frames, **kwargs)
        for split in SYNTH_SPLITS:
            dataset = DexYCB(tmp, split, load_image=False)
            if len(dataset):
                write_folder(dataset, out)
        (out / SYNTHETIC_MARKER).write_text("written by `amt synth --format folder`\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.root = out
    return result
