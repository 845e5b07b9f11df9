"""`amt model-info`: total and trainable parameter counts of every preset.

Models are built on the meta device, so even ViT-g costs no memory. The paper preset (vitl14)
is shown next to the published figures.
"""

from __future__ import annotations

import argparse

import torch

from amt.models.amt import AMT
from amt.models.config import PAPER_PARAMS_M, PRESETS, make_config


def count_parameters(preset: str, **overrides) -> dict[str, int]:
    """{"total", "trainable", "backbone", "backbone_trainable", "head"} for a preset, built on meta."""
    cfg = make_config(preset, **{"mano_path": None, **overrides})
    with torch.device("meta"):
        model = AMT(cfg, load_backbone_weights=False)
    backbone = list(model.backbone.parameters())
    head = model.head_parameters()
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone": sum(p.numel() for p in backbone),
        "backbone_trainable": sum(p.numel() for p in backbone if p.requires_grad),
        "head": sum(p.numel() for p in head),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amt model-info", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="only these presets (repeatable)")
    parser.add_argument("--hidden-dim", type=int, default=None, help="override the head width of every preset")
    args = parser.parse_args(argv)
    overrides = {} if args.hidden_dim is None else {"hidden_dim": args.hidden_dim}
    header = f"{'preset':<8} {'total (M)':>10} {'trainable (M)':>14} {'backbone (M)':>13} {'head (M)':>9}  note"
    print(header)
    print("-" * len(header))
    for preset in args.preset or list(PRESETS):
        c = count_parameters(preset, **overrides)
        note = ""
        if preset == "vitl14":
            note = f"paper: {PAPER_PARAMS_M['total']:.1f} total / {PAPER_PARAMS_M['trainable']:.1f} trainable"
        print(
            f"{preset:<8} {c['total'] / 1e6:>10.1f} {c['trainable'] / 1e6:>14.1f} "
            f"{c['backbone'] / 1e6:>13.1f} {c['head'] / 1e6:>9.1f}  {note}"
        )
    return 0
