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
from typing import Any

import torch
import yaml

from amt.evaluation.evaluator import evaluate

log = logging.getLogger(__name__)

CACHE_SUBDIR = "cache"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be loaded; the message names the path and the problem."""


def load_checkpoint(folder: str | Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Model from a checkpoint folder (config.yaml + model.safetensors [+ trainer.pt]).

    The trainer saves the EMA weights (the evaluated ones) as model.safetensors when EMA is on;
    `use_ema=False` loads the raw weights from trainer.pt (key "model") instead. Returns
    (model, {"model": model config dict, "weights": "ema" | "raw" | "saved", "train": run config
    or None}).
    """
    from amt.models import AMT

    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    for name in ("config.yaml", "model.safetensors"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; a checkpoint folder holds config.yaml and model.safetensors")
    try:
        model = AMT.from_pretrained(path)
    except Exception as exc:  # any failure of the loader means the folder is unusable
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(exc).__name__}: {exc})") from exc
    weights = "saved"
    state = _trainer_state(path / "trainer.pt")
    if state is not None:
        weights = "ema" if state.get("ema") is not None else "raw"
        if not use_ema and state.get("ema") is not None:
            model.load_state_dict(state["model"], strict=True)
            weights = "raw"
    train_config = path / "train_config.yaml"
    try:
        config = {
            "model": yaml.safe_load((path / "config.yaml").read_text()),
            "weights": weights,
            "train": yaml.safe_load(train_config.read_text()) if train_config.is_file() else None,
        }
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: a config file is not valid YAML ({exc})") from exc
    log.info("%s: evaluating the %s weights", path, weights)
    return model, config


def _trainer_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        # weights_only=False: trainer.pt holds numpy/python RNG states next to the tensors.
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the trainer state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: expected a dict with key 'model' (the trainer's checkpoint state)")
    return state


def train_split_of(split: str) -> str:
    """s0_test -> s0_train (the training split of the same setup)."""
    return split.split("_")[0] + "_train"


def open_or_build_cache(root: Path, split: str, size: int, cache_dir: Path | None, workers: int) -> Path:
    """The cache folder of `split` (default ROOT/cache/<split>_<size>), built if incomplete."""
    from amt.data.cache import META_FILE, build_cache

    folder = cache_dir or root / CACHE_SUBDIR / f"{split}_{size}"
    if not (folder / META_FILE).exists():
        log.info("building the %s cache in %s", split, folder)
        build_cache(root, split, folder, size=size, workers=workers)
    return folder


def _bop_ids(root: Path, split: str, indices: Any) -> list[tuple[int, int]]:
    from amt.data.dexycb import DexYCB

    reader = DexYCB(root, split, load_image=False)
    return [(int(reader.scene_id[i]), int(reader.im_id[i])) for i in indices]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amt eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (config.yaml + model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the DexYCB layout")
    p.add_argument("--split", default="s0_test", help="split to evaluate (default s0_test)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder of the split (default ROOT/cache/<split>_<size>)")
    p.add_argument("--train-cache", type=Path, default=None, help="training split's cache for the baselines")
    p.add_argument("--out", type=Path, default=None, help="report folder (default CKPT/eval_<split>)")
    p.add_argument("--report", choices=("md", "html"), default="md", help="also write an HTML report (html)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="processes for building caches")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights even if EMA weights exist")
    p.add_argument("--synthetic", action="store_true", help="mark the report as computed on synthetic data")
    return p


def is_synthetic(root: Path) -> bool:
    """`amt synth` output: its MANO calibration folders are named `mano_<date>_synthetic_...`."""
    return any((root / "calibration").glob("mano_*_synthetic_*"))


def main(argv: list[str]) -> int:
    from amt.data.loaders import CachedDataset
    from amt.evaluation.report import format_tables, provenance, write_report

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model, config = load_checkpoint(args.checkpoint, use_ema=not args.no_ema)
    except CheckpointError as exc:
        print(f"amt eval: {exc}", file=sys.stderr)
        return 1
    root = args.data.expanduser().resolve()
    size = int(getattr(getattr(model, "config", None), "image_size", 224) or 224)
    cache = open_or_build_cache(root, args.split, size, args.cache, args.workers)
    dataset = CachedDataset(cache, mode="memmap")
    train_cache = args.train_cache or root / CACHE_SUBDIR / f"{train_split_of(args.split)}_{size}"
    train_dataset = CachedDataset(train_cache, mode="memmap") if (train_cache / "meta.json").exists() else None
    if train_dataset is None:
        log.warning("%s: no training cache, the baselines are not computed (pass --train-cache)", train_cache)
    result = evaluate(
        model, dataset, root / "models", batch_size=args.batch_size, device=args.device, train_dataset=train_dataset
    )
    out = args.out or args.checkpoint / f"eval_{args.split}"
    info = provenance(args.checkpoint, config, root, args.split, args.synthetic or is_synthetic(root), args.device)
    paths = write_report(result, out, info, bop_ids=_bop_ids(root, args.split, result["predictions"].index))
    if args.report == "html":
        # Hook: amt.evaluation.html_report.write_html_report(result, out_dir, provenance, dataset) -> Path.
        from amt.evaluation.html_report import write_html_report

        paths["html"] = write_html_report(result, out, info, dataset)
    print(format_tables(result))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
