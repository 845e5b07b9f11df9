"""The dataset interface every reader implements, and `open_dataset` (docs/datasets.md).

A `HandObjectDataset` is a sized, indexable split of one dataset whose items are the reader
sample dict of docs/architecture.md ("Reader sample"): what `amt.data.cache.make_record`
consumes. Every reader converts on read, so a sample is always in the project's conventions:
camera frame x right / y down / z forward (OpenCV), metres, pixels, DexYCB joint order.

`open_dataset(format, root, split)` resolves a format name: `dexycb` (`amt.data.dexycb`),
`ho3d` (`amt.data.ho3d`), `folder` (`amt.data.folder`, the plain-folder format for your own
data) or `python:package.module.Class` (any class taking `(root, split, load_image=...)`).
The cache builder, the trainer (`data.format`), the evaluator and the submission writers go
through it, so nothing downstream special-cases a dataset.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from amt.data.dexycb import DexYCB, DexYCBError
from amt.data.folder import FolderDataset, FolderError
from amt.data.ho3d import HO3D, HO3DError
from amt.data.plausible import hand_span_problem, object_distance_problem

# Joint order of every sample (readers convert): 0 wrist, then thumb, index, middle, ring,
# little, each base to tip (amt.geometry.hand_skeleton.JOINT_NAMES).
SAMPLE_JOINT_ORDER = "dexycb"

# The keys a reader sample must hold for the cache builder (docs/datasets.md "Sample").
SAMPLE_KEYS: tuple[str, ...] = (
    "index", "subject", "sequence", "serial", "frame", "color_file", "label_file", "K",
    "ycb_ids", "grasp_index", "obj_pose", "obj_pose_valid", "pose_m", "mano_betas",
    "mano_betas_valid", "joint_3d", "joint_2d", "hand_valid", "side", "is_left",
)  # fmt: skip


class DatasetError(ValueError):
    """A dataset cannot be opened (unknown format, bad class); the message says which and why."""


class SampleError(DatasetError):
    """A reader's sample is not what the cache builder can use (`check_sample`); names the sample."""


# A sample's files or contents are bad (each names the file or sample): what the cache builder
# may skip (a reader whose every sample is bad ends the build with the first one's message).
READER_ERRORS: tuple[type[ValueError], ...] = (DexYCBError, FolderError, HO3DError, SampleError)


def check_sample(sample: Any, where: str) -> None:
    """Raise SampleError unless `sample` is a reader sample the cache builder can use: a dict
    with SAMPLE_KEYS, arrays of the documented shapes (docs/datasets.md "Sample"), finite
    numbers and a hand's size / objects' distances in metres. Run on every reader's samples by the
    cache builder: it catches a `python:` reader's mistakes (and bad values a built-in reader
    lets through) with a line naming `where` (the reader and sample) instead of a traceback from
    deep inside the cache builder."""
    if not isinstance(sample, dict):
        raise SampleError(f"{where}: a sample must be a dict, got {type(sample).__name__}")
    missing = [key for key in SAMPLE_KEYS if key not in sample]
    if missing:
        raise SampleError(f'{where}: the sample lacks {missing} (docs/datasets.md "Sample")')
    n = len(sample["ycb_ids"])
    shapes = {"K": (3, 3), "joint_3d": (21, 3), "joint_2d": (21, 2), "obj_pose": (n, 3, 4), "obj_pose_valid": (n,),
              "pose_m": (51,), "mano_betas": (10,)}  # fmt: skip
    arrays = {}
    for key, shape in shapes.items():
        try:
            arrays[key] = np.asarray(sample[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SampleError(f"{where}: sample[{key!r}] is not numbers ({exc})") from None
        if arrays[key].shape != shape:
            raise SampleError(f"{where}: sample[{key!r}] has shape {arrays[key].shape}, expected {shape}")
    color = sample.get("color")
    if color is not None and (not isinstance(color, np.ndarray) or color.dtype != np.uint8 or color.ndim != 3
                              or color.shape[2] != 3):  # fmt: skip
        got = f"{color.dtype} {color.shape}" if isinstance(color, np.ndarray) else type(color).__name__
        raise SampleError(f"{where}: sample['color'] must be an (H, W, 3) uint8 RGB array, got {got}")
    valid = arrays["obj_pose_valid"].astype(bool)
    checked = {"K": arrays["K"], "obj_pose": arrays["obj_pose"][valid]}
    if sample["hand_valid"]:
        checked |= {"joint_3d": arrays["joint_3d"], "joint_2d": arrays["joint_2d"]}
    for key, value in checked.items():
        if not np.isfinite(value).all():
            raise SampleError(f"{where}: sample[{key!r}] contains NaN or inf")
    if sample["hand_valid"] and (problem := hand_span_problem(arrays["joint_3d"])) is not None:
        raise SampleError(f"{where}: sample['joint_3d'] {problem}")
    for k in np.flatnonzero(valid):
        if (problem := object_distance_problem(arrays["obj_pose"][k, :, 3])) is not None:
            raise SampleError(f"{where}: sample['obj_pose'][{k}] {problem}")


@runtime_checkable
class HandObjectDataset(Protocol):
    """One split of a hand-object dataset (docs/datasets.md).

    Attributes: `root` (Path), `split` (str), `splits` (every split name the format knows),
    `models_dir` (Path of `<class name>/textured_simple.obj` object meshes, metres, or None),
    `joint_order` (the order of the files on disk; samples are always converted to
    `SAMPLE_JOINT_ORDER`), `load_image` (bool: decode `color` in samples; settable).
    """

    root: Path
    split: str
    splits: tuple[str, ...]
    models_dir: Path | None
    joint_order: str
    load_image: bool

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The reader sample (SAMPLE_KEYS, plus `color` (H, W, 3) uint8 RGB when load_image)."""
        ...

    def sample_intrinsics(self, i: int) -> np.ndarray:
        """(3, 3) float32 colour intrinsics of sample i (pixels), without reading its labels."""
        ...


FORMATS: dict[str, type] = {"dexycb": DexYCB, "ho3d": HO3D, "folder": FolderDataset}
PYTHON_PREFIX = "python:"


def dataset_class(format: str) -> type:
    """The reader class of a format name: dexycb | ho3d | folder | python:package.module.Class."""
    if format in FORMATS:
        return FORMATS[format]
    if not format.startswith(PYTHON_PREFIX):
        raise DatasetError(
            f"unknown data format {format!r}; expected one of {sorted(FORMATS)} or python:package.module.Class"
        )
    target = format[len(PYTHON_PREFIX) :]
    module_name, _, class_name = target.rpartition(".")
    if not module_name or not class_name:
        raise DatasetError(f"data format {format!r}: expected python:package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DatasetError(f"data format {format!r}: cannot import {module_name!r} ({exc})") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise DatasetError(f"data format {format!r}: {module_name} has no class {class_name!r}")
    return cls


def open_dataset(format: str, root: str | Path, split: str, load_image: bool = True, **kwargs: Any) -> Any:
    """Open `split` of the dataset at `root` in `format` (see the module docstring).

    Returns a `HandObjectDataset`; a `python:` class that does not implement the protocol is a
    DatasetError naming the missing members. Reader errors (DexYCBError, FolderError,
    HO3DError: all ValueError) propagate with the file they concern.
    """
    cls = dataset_class(format)
    dataset = cls(root, split, load_image=load_image, **kwargs)
    if not isinstance(dataset, HandObjectDataset):
        missing = [
            name
            for name in ("root", "split", "splits", "models_dir", "joint_order", "load_image", "sample_intrinsics")
            if not hasattr(dataset, name)
        ]
        raise DatasetError(f"data format {format!r}: {cls.__name__} lacks {missing} of amt.data.HandObjectDataset")
    return dataset
