"""Checkpoint folders: their files, writing them atomically and durably, finding and loading them.

A checkpoint folder (`<run>/checkpoints/step_000123`) holds no pickle:

    config.yaml          model config   } `AMT.save_pretrained`; the weights are the EMA weights
    model.safetensors    model weights  } when the run used EMA (those evaluated)
    train_config.yaml    the resolved run config
    trainer.safetensors  every tensor of the trainer state: raw model weights, optimizer state,
                         EMA weights, loss state, torch CPU/CUDA generator states (uint8)
    trainer.json         the rest: scheduler state, counters, python/numpy RNG states (ints),
                         the resolved config; tensors appear as {"__tensor__": key}
    complete.json        written last: format, step, size of every other file (the marker)

Writing (`write_checkpoint`): the files go to `<name>.tmp`, each is fsynced, complete.json last,
then the folder is fsynced, renamed to `<name>` and the parent fsynced. The names `last`, `best`
and `epoch_0005` are symlinks to a step folder, replaced with one `os.replace` (`point_alias`).
So at every instant each name points to a complete folder, and a kill between any two system
calls leaves at most `*.tmp` entries, which `remove_leftovers` deletes at the next start.
`newest_checkpoint` picks the complete folder with the highest step. A save first checks the
free space (`check_free_space`) and on any write error (a full disk: ENOSPC) deletes its
`*.tmp` folder and raises CheckpointError, so the previous checkpoints stay as they were.
`prune_checkpoints(keep_last=K)` keeps the newest K periodic folders plus every folder a name
other than `epoch_*` points to (`best`, `last`); the `epoch_*` names of the others go with them.
(Over 450 lines: the folder format, its atomic writing and its pruning are one idea.)

Loading never unpickles (safetensors, JSON, `yaml.safe_load`); an old-format folder (a pickled
`trainer.pt`, no complete.json) is refused, naming `amt convert-checkpoint` (`convert_legacy`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from amt.jsonio import fsync_path
from amt.models import AMT
from amt.models.amt import CONFIG_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.yaml"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
COMPLETE = "complete.json"  # the completion marker, written last
LEGACY_STATE = "trainer.pt"  # the old pickled trainer state: refused, converted knowingly
CHECKPOINTS = "checkpoints"  # the run folder's sub-folder holding the checkpoint folders
TMP_SUFFIX = ".tmp"  # anything under checkpoints/ ending so is a leftover of a killed save
FORMAT = 2  # complete.json "format"; 1 was the pickled trainer.pt

__all__ = [
    "CHECKPOINTS",
    "COMPLETE",
    "CONFIG_FILE",
    "LEGACY_STATE",
    "TRAINER_JSON",
    "TRAINER_TENSORS",
    "TRAIN_CONFIG",
    "WEIGHTS_FILE",
    "CheckpointError",
    "check_free_space",
    "convert_legacy",
    "decode_state",
    "encode_state",
    "find_checkpoint",
    "folder_bytes",
    "is_complete",
    "load_checkpoint",
    "load_model",
    "load_trainer_state",
    "newest_checkpoint",
    "point_alias",
    "prune_checkpoints",
    "remove_leftovers",
    "write_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing or cannot be loaded; the message names the path and the problem."""


def _refuse_legacy(folder: Path) -> None:
    """Raise for a folder whose trainer state is the old pickle (never opened here)."""
    if (folder / LEGACY_STATE).exists() and not (folder / COMPLETE).exists():
        raise CheckpointError(
            f"{folder / LEGACY_STATE}: old checkpoint format (a pickle, which can run code when loaded); "
            f"it is not loaded. If you trust its source, convert it with `amt convert-checkpoint {folder} "
            "[--out NEW_FOLDER]`"
        )


# -- the trainer state without pickle ---------------------------------------------------------
def encode_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, {key: tensor}) of a nested state of dicts, lists, tuples, tensors, numpy
    arrays and plain values. Tensors are replaced by {"__tensor__": key} (key: their path), tuples
    by {"__tuple__": [...]}, dicts with non-string keys by {"__items__": [[key, value], ...]},
    numpy arrays by {"__ndarray__": values, "dtype": name}. `decode_state` inverts it exactly."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def enc(value: Any, path: tuple[str, ...]) -> Any:
        where = "/".join(path) or "state"
        if isinstance(value, torch.Tensor):
            if where in tensors:
                raise ValueError(f"trainer state: two tensors at {where}")
            t = value.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():  # safetensors refuses tensors sharing memory
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            tensors[where] = t
            return {"__tensor__": where}
        if isinstance(value, np.ndarray):
            return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, tuple):
            return {"__tuple__": [enc(v, (*path, str(i))) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, (*path, str(i))) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: enc(v, (*path, k)) for k, v in value.items()}
            return {"__items__": [[enc(k, path), enc(v, (*path, str(k)))] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"trainer state: {where} is a {type(value).__name__}, which cannot be stored without pickle")

    return enc(obj, ()), tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor], source: Path | str = "trainer state") -> Any:
    """Invert `encode_state`; an unknown tensor key or a non-numeric array is an error naming `source`."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            if value["__tensor__"] not in tensors:
                raise CheckpointError(f"{source}: refers to tensor {value['__tensor__']!r}, missing from the file")
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            dtype = np.dtype(str(value.get("dtype")))
            if dtype.kind not in "biuf":
                raise CheckpointError(f"{source}: array of dtype {dtype} (only numbers are stored)")
            return np.asarray(value["__ndarray__"], dtype=dtype)
        if "__tuple__" in value:
            return tuple(dec(v) for v in value["__tuple__"])
        if "__items__" in value:
            return {dec(k): dec(v) for k, v in value["__items__"]}
        return {k: dec(v) for k, v in value.items()}

    return dec(tree)


# -- completeness -------------------------------------------------------------------------------
def _read_marker(folder: Path) -> dict[str, Any] | None:
    """complete.json of `folder` if every file it lists exists with its size, else None."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
        files = marker["files"]
        if marker.get("format") != FORMAT or not isinstance(marker.get("step"), int):
            return None
        if all((folder / name).stat().st_size == size for name, size in files.items()):
            return marker
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def is_complete(folder: Path) -> bool:
    """Whether `folder` is a checkpoint whose save finished (marker present, every file its size)."""
    return _read_marker(Path(folder)) is not None


def _check_folder(path: Path) -> None:
    """Refuse the old format and a half-written trainer state before anything is read."""
    _refuse_legacy(path)
    if ((path / COMPLETE).exists() or (path / TRAINER_JSON).exists()) and not is_complete(path):
        raise CheckpointError(
            f"{path}: incomplete checkpoint ({COMPLETE} missing or a file's size differs from it: "
            "a save was interrupted or the copy is partial)"
        )


# -- loading ------------------------------------------------------------------------------------
def _pin(path: str | Path) -> Path:
    """A name such as checkpoints/last resolved once, so that every file is read from one folder
    even while a running trainer points the name elsewhere."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _refuse_near_miss(path: Path) -> None:
    """CheckpointError pointing at the checkpoint folder when `path` is the path next to it that
    users pass: a file inside a checkpoint folder, a run folder or its checkpoints/ folder."""

    def holds_model(folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()

    if path.is_file() and holds_model(path.parent):
        raise CheckpointError(f"{path}: a file of the checkpoint folder {path.parent}; pass the folder")
    if not path.is_dir() or holds_model(path):
        return
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and holds_model(p)) if folder.is_dir() else []
    if names:
        what = "a run folder" if folder != path else "a folder of checkpoints"
        preferred = [n for n in ("last", "best") if n in names] or names[-1:]
        shown = ", ".join(names if len(names) <= 6 else [*names[:2], "...", *names[-3:]])
        raise CheckpointError(
            f"{path}: {what}, not a checkpoint; pass one of its checkpoints, e.g. {folder / preferred[0]} "
            f"(here: {shown})"
        )


def load_model(path: str | Path) -> nn.Module:
    """`AMT.from_pretrained(path)` (the saved weights: EMA when the run used it), with an error
    that names the path when it is missing, unreadable, incomplete or in the old format."""
    path = _pin(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path}: no such file or folder (expected a folder with config.yaml and model.safetensors)"
        )
    _refuse_near_miss(path)
    if path.is_dir():
        _check_folder(path)
    try:
        return AMT.from_pretrained(path)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded: {type(exc).__name__}: {exc}") from exc


def load_checkpoint(folder: str | Path, use_ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Model from a checkpoint folder (config.yaml + model.safetensors [+ trainer state]) and what it holds.

    The trainer saves the EMA weights (the evaluated ones) as model.safetensors when EMA is on;
    `use_ema=False` loads the raw weights of the trainer state (key "model") instead. Returns
    (model, {"model": model config dict, "weights": "ema" | "raw" | "saved", "train": run config
    or None}).
    """
    path = _pin(folder)
    if path.exists():
        _refuse_near_miss(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    _check_folder(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path / name}: missing; a checkpoint folder holds config.yaml and model.safetensors"
            )
    model = load_model(path)
    weights = "saved"
    if is_complete(path) and (path / TRAINER_JSON).is_file():
        state = load_trainer_state(path)
        weights = "ema" if state.get("ema") is not None else "raw"
        if not use_ema and state.get("ema") is not None:
            model.load_state_dict(state["model"], strict=True)
            weights = "raw"
    train_config = path / TRAIN_CONFIG
    try:
        config = {
            "model": yaml.safe_load((path / CONFIG_FILE).read_text()),
            "weights": weights,
            "train": yaml.safe_load(train_config.read_text()) if train_config.is_file() else None,
        }
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: a config file is not valid YAML ({exc})") from exc
    log.info("%s: loaded the %s weights", path, weights)
    return model, config


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The trainer state of a complete checkpoint folder (trainer.json + trainer.safetensors), on the CPU."""
    folder = _pin(folder)
    _check_folder(folder)
    if not is_complete(folder):
        raise CheckpointError(f"{folder}: no complete trainer state ({COMPLETE} missing)")
    try:
        tensors = load_file(str(folder / TRAINER_TENSORS), device="cpu")
        state = decode_state(json.loads((folder / TRAINER_JSON).read_text()), tensors, folder / TRAINER_JSON)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{folder}: cannot read the trainer state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{folder / TRAINER_JSON}: expected a dict with key 'model' (the trainer state)")
    return state


def newest_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint folder with the highest step under `checkpoints` (names followed:
    no; `*.tmp` leftovers: skipped), or None."""
    best: tuple[int, str, Path] | None = None
    if not Path(checkpoints).is_dir():
        return None
    for entry in Path(checkpoints).iterdir():
        if entry.is_symlink() or entry.name.endswith(TMP_SUFFIX) or not entry.is_dir():
            continue
        marker = _read_marker(entry)
        if marker is not None and (best is None or (marker["step"], entry.name) > best[:2]):
            best = (marker["step"], entry.name, entry)
    return best[2] if best else None


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to resume from: `path` itself (a complete checkpoint folder, or a
    name such as checkpoints/last), or the newest complete one of the run folder `path`."""
    path = _pin(path)
    if path.is_dir():
        _refuse_legacy(path)
        if is_complete(path):
            return path
        found = newest_checkpoint(path / CHECKPOINTS)
        if found is not None:
            return found
        for old in sorted((path / CHECKPOINTS).glob(f"*/{LEGACY_STATE}")):
            _refuse_legacy(old.parent)
    raise CheckpointError(
        f"checkpoint.resume_from={path}: neither a complete checkpoint folder nor a run folder holding one "
        f"under {CHECKPOINTS}/"
    )


# -- writing ------------------------------------------------------------------------------------
def _write_state(folder: Path, state: dict[str, Any], step: int, keep: bool) -> None:
    """trainer.safetensors + trainer.json into `folder`, every file fsynced, then complete.json
    (listing every file but the old trainer.pt) and the folder fsynced."""
    tree, tensors = encode_state(state)
    save_file(tensors, str(folder / TRAINER_TENSORS))
    (folder / TRAINER_JSON).write_text(json.dumps(tree))
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name != LEGACY_STATE}
    for name in files:
        fsync_path(folder / name)
    marker = {"format": FORMAT, "step": int(step), "keep": bool(keep), "files": files}
    with open(folder / COMPLETE, "w") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(folder)


def folder_bytes(folder: Path) -> int:
    """Total size in bytes of the files directly in `folder` (a checkpoint folder)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def check_free_space(directory: Path, needed: int) -> None:
    """CheckpointError unless the file system of `directory` has `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CheckpointError(
            f"{directory}: {free / 1e9:.2f} GB free, a checkpoint needs about {needed / 1e9:.2f} GB; nothing was "
            "written and the previous checkpoints are intact. Free space there (or lower checkpoint.keep_last) and "
            "resume (checkpoint.resume_from=auto)"
        )


def write_checkpoint(
    folder: Path,
    model: nn.Module,
    train_config_yaml: str,
    trainer_state: dict[str, Any],
    step: int,
    keep: bool = True,
    needed_bytes: int = 0,
) -> Path:
    """Write the checkpoint folder `folder` (a new name, e.g. checkpoints/step_000123) atomically
    and durably. A complete folder already there (the same step saved again) is kept as it is.
    keep=False marks a folder `prune_checkpoints` may delete once no name points to it.
    needed_bytes: the expected size; CheckpointError before writing when less is free. A write
    error (OSError, e.g. ENOSPC) removes the partial `*.tmp` folder and raises CheckpointError."""
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink() and is_complete(folder):
        return folder
    tmp = folder.with_name(folder.name + TMP_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(tmp.parent, needed_bytes)
    try:
        model.save_pretrained(tmp)
        (tmp / TRAIN_CONFIG).write_text(train_config_yaml)
        _write_state(tmp, trainer_state, step, keep)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = exc.errno == errno.ENOSPC
        raise CheckpointError(
            f"{folder}: {'the disk is full' if full else 'writing failed'} ({exc}); the partial folder was removed "
            "and the previous checkpoints are intact" + (": free space there and resume" if full else "")
        ) from exc
    if folder.exists():  # an incomplete folder under the final name (copied by hand): replace it
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    fsync_path(folder.parent)
    return folder


def point_alias(checkpoints: Path, alias: str, target: str) -> None:
    """Make `checkpoints/alias` (e.g. last) a symlink to the sibling folder `target`, in one
    `os.replace`. A real folder under that name (an old-format run) is first moved to `alias.legacy`."""
    link = checkpoints / alias
    tmp = checkpoints / f"{alias}.link{TMP_SUFFIX}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if link.is_dir() and not link.is_symlink():
        log.warning("%s: a folder, not a name; moved to %s.legacy", link, alias)
        os.rename(link, checkpoints / f"{alias}.legacy")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_path(checkpoints)


_KEPT_FOR_USER: set[Path] = set()  # checkpoint folders prune_checkpoints kept for a user's files


def prune_checkpoints(checkpoints: Path, keep_last: int = 0) -> list[str]:
    """Delete complete folders saved with keep=False that no name points to any more, and
    (keep_last > 0) the periodic (keep=True) folders older than the newest keep_last that no name
    but `epoch_*` points to (those names are removed first). Folders are renamed to `*.tmp`
    before deletion, so a kill mid-delete leaves only a leftover. A folder holding files its save
    did not write (an export, `amt eval`'s report) is kept, with a warning. Returns the deleted names."""
    links = {p.name: os.readlink(p) for p in checkpoints.iterdir() if p.is_symlink()}
    named = set(links.values())
    protected = {target for name, target in links.items() if not name.startswith("epoch_")}
    markers = {}
    for entry in sorted(checkpoints.iterdir()):
        if not entry.is_symlink() and not entry.name.endswith(TMP_SUFFIX):
            marker = _read_marker(entry)
            if marker is not None:
                markers[entry.name] = marker
    periodic = sorted((m["step"], name) for name, m in markers.items() if m.get("keep") is not False)
    expired = {name for _, name in periodic[: max(0, len(periodic) - keep_last)]} - protected if keep_last else set()
    doomed_names = expired | {n for n, m in markers.items() if n not in named and m.get("keep") is False}
    for name in sorted(doomed_names):  # a user's files inside (an export, `amt eval`'s default --out) keep it
        own = {f.split("/")[0] for f in markers[name]["files"]} | {COMPLETE}
        extra = sorted(set(os.listdir(checkpoints / name)) - own)
        if extra:
            if checkpoints / name not in _KEPT_FOR_USER:  # said once per folder, not at every save
                _KEPT_FOR_USER.add(checkpoints / name)
                log.warning("%s: left in place although no longer kept: it holds files the trainer "
                            "did not write (%s); delete it when they are safe elsewhere", checkpoints / name,
                            ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else ""))  # fmt: skip
            doomed_names.discard(name)
            expired.discard(name)
    for name, target in links.items():
        if target in expired:
            (checkpoints / name).unlink()  # an epoch_* name of a folder about to go
    deleted = []
    for name in markers:
        entry = checkpoints / name
        if name in doomed_names:
            doomed = entry.with_name(entry.name + ".del" + TMP_SUFFIX)
            os.rename(entry, doomed)
            shutil.rmtree(doomed)
            deleted.append(entry.name)
    return deleted


def remove_leftovers(checkpoints: Path) -> list[str]:
    """Delete the `*.tmp` entries a killed save or delete left under `checkpoints`; returns their names."""
    removed = []
    if not Path(checkpoints).is_dir():
        return removed
    for entry in sorted(Path(checkpoints).iterdir()):
        if entry.name.endswith(TMP_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    if removed:
        log.info("%s: removed leftovers of an interrupted save: %s", checkpoints, ", ".join(removed))
    return removed


# -- the old format -----------------------------------------------------------------------------
def _numpy_globals() -> list[Any]:
    """What a numpy RNG state in the old trainer.pt needs beyond weights_only's defaults."""
    reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct  # numpy 2 / 1
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def convert_legacy(old: Path, out: Path | None = None, unsafe_pickle: bool = False) -> Path:
    """Convert an old-format folder (pickled trainer.pt) to this format. out=None writes the new
    files next to trainer.pt (which is then ignored); else a new folder `out` (must not exist).

    The pickle is read with `weights_only=True` (tensors, numbers, numpy RNG arrays only); a file
    that needs more is refused unless unsafe_pickle=True, which runs `torch.load(weights_only=False)`:
    any code the file holds runs. Never overwrites a file."""
    old = Path(old)
    if not (old / LEGACY_STATE).is_file():
        raise CheckpointError(f"{old}: no {LEGACY_STATE} to convert")
    target = old if out is None else Path(out)
    if target != old and target.exists():
        raise CheckpointError(f"{target}: exists; choose a new --out folder (nothing is overwritten)")
    for name in (TRAINER_TENSORS, TRAINER_JSON, COMPLETE):
        if target == old and (old / name).exists():
            raise CheckpointError(f"{old / name}: exists; convert into a new folder with --out")
    try:
        if unsafe_pickle:
            state = torch.load(old / LEGACY_STATE, map_location="cpu", weights_only=False)  # the user chose it
        else:
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(old / LEGACY_STATE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{old / LEGACY_STATE}: not a plain trainer state ({type(exc).__name__}: {str(exc)[:300]}); "
            "add --unsafe-pickle only if you trust who made the file"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{old / LEGACY_STATE}: not a trainer state (a dict with 'model' and 'step')")
    tmp = target.with_name(target.name + TMP_SUFFIX) if target != old else target
    if target != old:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE, TRAIN_CONFIG):
            if (old / name).is_file():
                shutil.copy2(old / name, tmp / name)
    _write_state(tmp, state, int(state["step"]), keep=True)
    if tmp != target:
        os.rename(tmp, target)
        fsync_path(target.parent)
    return target
