"""Reader for the DexYCB dataset layout (docs/data.md "Layout" and "Splits and the sample index").

`DexYCB(root, "s0_train")` indexes one official split without reading any label file (only
folder listings and `meta.yml`), in the toolkit's order subject -> sequence -> serial -> frame,
so `dataset[i]["index"] == i` is the toolkit's `image_id`. Every problem with the files raises
`DexYCBError` naming the file; `iter_samples()` can skip bad samples instead, logging each one
and counting them in `dataset.skipped`. Over 450 lines: the reader and the validation of each of
its file kinds (yml, npz, jpg) belong together.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

logger = logging.getLogger(__name__)

SUBJECTS: tuple[str, ...] = (
    "20200709-subject-01", "20200813-subject-02", "20200820-subject-03", "20200903-subject-04",
    "20200908-subject-05", "20200918-subject-06", "20200928-subject-07", "20201002-subject-08",
    "20201015-subject-09", "20201022-subject-10",
)  # fmt: skip
SERIALS: tuple[str, ...] = (
    "836212060125", "839512060362", "840412060917", "841412060263",
    "932122060857", "932122060861", "932122061900", "932122062010",
)  # fmt: skip
IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640
NUM_SEQUENCES_PER_SUBJECT = 100
BOP_SUBSAMPLING = 4
_SEQUENCE_NAME = re.compile(r"^\d{8}_\d{6}$")
MAX_FRAMES_PER_SEQUENCE = 100_000  # sanity bound on meta.yml num_frames (DexYCB: about 70 per sequence)
# What a damaged npz / image raises inside numpy, zipfile, zlib and PIL (all become DexYCBError).
DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, KeyError, RuntimeError, NotImplementedError,
                  MemoryError, RecursionError, struct.error, zlib.error, zipfile.BadZipFile, tokenize.TokenError)  # fmt: skip

_ALL_SUBJECTS = tuple(range(10))
_ALL_SERIALS = tuple(range(8))
_ALL_SEQUENCES = tuple(range(NUM_SEQUENCES_PER_SUBJECT))


class DexYCBError(ValueError):
    """A DexYCB file is missing, unreadable or holds unexpected content; the message names it."""


@dataclass(frozen=True)
class SplitSpec:
    """Which subjects, serials (indices into SUBJECTS / SERIALS) and sequence positions a split uses."""

    subjects: tuple[int, ...]
    serials: tuple[int, ...]
    sequences: tuple[int, ...]


def _seqs(keep) -> tuple[int, ...]:
    return tuple(i for i in _ALL_SEQUENCES if keep(i))


SPLITS: dict[str, SplitSpec] = {
    "s0_train": SplitSpec(_ALL_SUBJECTS, _ALL_SERIALS, _seqs(lambda i: i % 5 != 4)),
    "s0_val": SplitSpec((0, 1), _ALL_SERIALS, _seqs(lambda i: i % 5 == 4)),
    "s0_test": SplitSpec(tuple(range(2, 10)), _ALL_SERIALS, _seqs(lambda i: i % 5 == 4)),
    "s1_train": SplitSpec((0, 1, 2, 3, 4, 5, 9), _ALL_SERIALS, _ALL_SEQUENCES),
    "s1_val": SplitSpec((6,), _ALL_SERIALS, _ALL_SEQUENCES),
    "s1_test": SplitSpec((7, 8), _ALL_SERIALS, _ALL_SEQUENCES),
    "s2_train": SplitSpec(_ALL_SUBJECTS, tuple(range(6)), _ALL_SEQUENCES),
    "s2_val": SplitSpec(_ALL_SUBJECTS, (6,), _ALL_SEQUENCES),
    "s2_test": SplitSpec(_ALL_SUBJECTS, (7,), _ALL_SEQUENCES),
    "s3_train": SplitSpec(_ALL_SUBJECTS, _ALL_SERIALS, _seqs(lambda i: i // 5 not in (3, 7, 11, 15, 19))),
    "s3_val": SplitSpec(_ALL_SUBJECTS, _ALL_SERIALS, _seqs(lambda i: i // 5 in (3, 19))),
    "s3_test": SplitSpec(_ALL_SUBJECTS, _ALL_SERIALS, _seqs(lambda i: i // 5 in (7, 11, 15))),
}


def split_spec(split: str) -> SplitSpec:
    """The official selection for a split name such as "s0_train" (docs/data.md "Splits and the sample index")."""
    if split not in SPLITS:
        raise DexYCBError(f"unknown DexYCB split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def train_split_of(split: str) -> str:
    """s0_test -> s0_train: the training split of the same setup (baselines come from it)."""
    return split.split("_")[0] + "_train"


class _CalibrationLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loader that also accepts the `!!python/tuple` tag DexYCB's intrinsics use."""


_CalibrationLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def _load_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_CalibrationLoader)
    except FileNotFoundError:
        raise DexYCBError(f"{path}: file not found") from None
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise DexYCBError(f"{path}: cannot parse YAML ({type(exc).__name__}: {exc})") from exc


def _require(data: Any, key: str, path: Path) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise DexYCBError(f"{path}: missing key {key!r}")
    return data[key]


def load_intrinsics(path: str | Path) -> np.ndarray:
    """Colour intrinsics K (3, 3) float32, pixels, from a `<serial>_640x480.yml` file."""
    path = Path(path)
    color = _require(_load_yaml(path), "color", path)
    try:
        fx, fy, ppx, ppy = (float(color[k]) for k in ("fx", "fy", "ppx", "ppy"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DexYCBError(f"{path}: key 'color' must hold numbers fx, fy, ppx, ppy ({exc!r})") from exc
    limit = float(np.finfo(np.float32).max)
    if not (all(abs(v) < limit for v in (fx, fy, ppx, ppy)) and fx > 0 and fy > 0):  # NaN fails too
        raise DexYCBError(f"{path}: key 'color' must hold finite fx, fy > 0, ppx, ppy; got {fx}, {fy}, {ppx}, {ppy}")
    return np.array([[fx, 0.0, ppx], [0.0, fy, ppy], [0.0, 0.0, 1.0]], dtype=np.float32)


def load_mano_betas(path: str | Path) -> np.ndarray:
    """MANO shape (10,) float32 from `calibration/mano_<name>/mano.yml`."""
    path = Path(path)
    try:
        betas = np.asarray(_require(_load_yaml(path), "betas", path), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DexYCBError(f"{path}: key 'betas' must be 10 finite numbers ({exc})") from exc
    if betas.shape != (10,) or not np.isfinite(betas).all():
        raise DexYCBError(f"{path}: key 'betas' must be 10 finite numbers, got shape {betas.shape}")
    return betas


@dataclass(frozen=True)
class SequenceInfo:
    """One selected sequence and its `meta.yml` content."""

    subject: str
    name: str
    position: int  # position of the sequence in the split
    num_frames: int
    ycb_ids: tuple[int, ...]
    grasp_index: int  # into ycb_ids
    side: str  # "right" | "left"
    mano_calib: str
    mano_betas: np.ndarray  # (10,) float32
    mano_betas_valid: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_sequence_meta(path: Path, subject: str, position: int, calib_dir: Path, betas_cache: dict) -> SequenceInfo:
    """Parse and validate one `meta.yml` (no label files are touched)."""
    meta = _load_yaml(path)
    num_frames = _require(meta, "num_frames", path)
    ycb_ids = _require(meta, "ycb_ids", path)
    grasp = _require(meta, "ycb_grasp_ind", path)
    sides = _require(meta, "mano_sides", path)
    calib = _require(meta, "mano_calib", path)
    if not _is_int(num_frames) or not 0 <= num_frames <= MAX_FRAMES_PER_SEQUENCE:
        raise DexYCBError(
            f"{path}: key 'num_frames' must be an int in 0..{MAX_FRAMES_PER_SEQUENCE}, got {num_frames!r}"
        )
    if not isinstance(ycb_ids, list) or not all(_is_int(c) and 1 <= c <= 21 for c in ycb_ids):
        raise DexYCBError(f"{path}: key 'ycb_ids' must be a list of class ids 1..21, got {ycb_ids!r}")
    if not _is_int(grasp) or not 0 <= grasp < len(ycb_ids):
        raise DexYCBError(f"{path}: key 'ycb_grasp_ind' must index ycb_ids (0..{len(ycb_ids) - 1}), got {grasp!r}")
    if not isinstance(sides, list) or not sides or sides[0] not in ("right", "left"):
        raise DexYCBError(f"{path}: key 'mano_sides' must be a list starting with 'right' or 'left', got {sides!r}")
    if not isinstance(calib, list) or not calib or not isinstance(calib[0], str):
        raise DexYCBError(f"{path}: key 'mano_calib' must be a list with one calibration name, got {calib!r}")
    if calib[0] not in betas_cache:
        mano_file = calib_dir / f"mano_{calib[0]}" / "mano.yml"
        if mano_file.is_file():
            betas_cache[calib[0]] = (load_mano_betas(mano_file), True)
        else:
            logger.warning("%s: missing; mano_betas are zeros with mano_betas_valid=False", mano_file)
            betas_cache[calib[0]] = (np.zeros(10, dtype=np.float32), False)
    betas, valid = betas_cache[calib[0]]
    return SequenceInfo(
        subject=subject, name=path.parent.name, position=position, num_frames=num_frames,
        ycb_ids=tuple(ycb_ids), grasp_index=grasp, side=sides[0], mano_calib=calib[0],
        mano_betas=betas, mano_betas_valid=valid,
    )  # fmt: skip


@dataclass(frozen=True)
class SampleMeta:
    """What the index knows about a sample without reading its label file."""

    index: int
    subject: str
    sequence: str
    serial: str
    frame: int
    color_file: str
    label_file: str
    scene_id: int  # BOP: sequence position * n_serials + serial position
    im_id: int  # BOP: frame
    is_bop_target: bool  # test splits only: frame % 4 == 0
    is_grasp_target: bool  # test splits only: last BOP keyframe of its (sequence, serial)


_LABEL_SHAPES = {
    "seg": (IMAGE_HEIGHT, IMAGE_WIDTH),
    "pose_m": (1, 51),
    "joint_3d": (1, 21, 3),
    "joint_2d": (1, 21, 2),
}


def read_labels(path: str | Path, num_objects: int) -> dict[str, np.ndarray]:
    """Read and validate one `labels_XXXXXX.npz`; keys as stored (see docs/data.md "Label files").

    Raises DexYCBError naming the file (and key) when it is missing, truncated, lacks a key,
    has a wrong shape (`pose_y` must be (num_objects, 3, 4)) or holds NaN/inf.
    """
    path = Path(path)
    expected = {**_LABEL_SHAPES, "pose_y": (num_objects, 3, 4)}
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in expected if k not in npz.files]
            if missing:
                raise DexYCBError(f"{path}: missing key(s) {missing}; expected {sorted(expected)}")
            for key, shape in expected.items():  # headers first: a huge declared shape is never allocated
                found_shape, dtype = _npz_member_header(npz, key)
                if found_shape != shape:
                    raise DexYCBError(f"{path}: key {key!r} has shape {found_shape}, expected {shape}")
                if key == "seg" and dtype != np.uint8:
                    raise DexYCBError(f"{path}: key 'seg' has dtype {dtype}, expected uint8")
                if dtype.kind not in "fiu":
                    raise DexYCBError(f"{path}: key {key!r} has dtype {dtype}, expected real numbers")
            labels = {k: npz[k] for k in expected}
    except FileNotFoundError:
        raise DexYCBError(f"{path}: file not found") from None
    except DexYCBError:
        raise
    except DECODE_ERRORS as exc:
        raise DexYCBError(f"{path}: unreadable or truncated npz ({type(exc).__name__}: {exc})") from exc
    for key in expected:
        if key != "seg" and not np.isfinite(labels[key]).all():
            raise DexYCBError(f"{path}: key {key!r} contains NaN or inf")
    return labels


def _npz_member_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array `key` of an open npz, read from its .npy header only."""
    with npz.zip.open(f"{key}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return tuple(shape), np.dtype(dtype)


def read_color(path: str | Path) -> np.ndarray:
    """Decode a colour JPEG to (480, 640, 3) uint8 RGB; DexYCBError on a missing/corrupt file.
    The size is checked from the header before decoding (no decompression bomb is decoded)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            with Image.open(path) as im:
                if im.size != (IMAGE_WIDTH, IMAGE_HEIGHT):
                    raise DexYCBError(f"{path}: image is {im.size[0]}x{im.size[1]} pixels, expected 640x480")
                image = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DexYCBError(f"{path}: file not found") from None
    except DexYCBError:
        raise
    except Image.DecompressionBombError as exc:
        raise DexYCBError(f"{path}: image is not 640x480 pixels ({exc})") from exc
    except DECODE_ERRORS as exc:
        raise DexYCBError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if image.shape != (IMAGE_HEIGHT, IMAGE_WIDTH, 3):
        raise DexYCBError(f"{path}: image has shape {image.shape}, expected {(IMAGE_HEIGHT, IMAGE_WIDTH, 3)}")
    return image


class _Records(Sequence):
    """Read-only sequence view: records[i] == dataset.meta(i)."""

    def __init__(self, dataset: DexYCB) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._dataset.meta(j) for j in range(*i.indices(len(self)))]
        return self._dataset.meta(i)


class DexYCB:
    """One official split of a DexYCB root.

    root: folder holding the subject folders, `calibration/` and `models/`.
    split: "s{0..3}_{train,val,test}".
    load_image: decode `color` in samples (False skips the JPEG).
    on_error: "raise" or "skip"; only `iter_samples()` honours "skip" (indexing always raises).

    Index arrays (length N): `sequence_index` (into `sequences`), `serial_index` (into
    `serials`), `frame`, `scene_id`, `im_id`, `is_bop_target`, `is_grasp_target`.
    """

    # amt.data.dataset.HandObjectDataset: every split name, and the joint order of the files
    splits: tuple[str, ...] = tuple(SPLITS)
    joint_order = "dexycb"

    def __init__(
        self,
        root: str | Path,
        split: str,
        load_image: bool = True,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root).expanduser().resolve()
        self.split = split
        self.spec = split_spec(split)
        self.load_image = load_image
        self.on_error = on_error
        self.skipped = 0
        self.skip_messages: list[str] = []
        if not self.root.is_dir():
            raise DexYCBError(f"{self.root}: DexYCB root folder not found")
        self.models_dir = self.root / "models"
        self.calib_dir = self.root / "calibration"
        self.serials: tuple[str, ...] = tuple(SERIALS[i] for i in self.spec.serials)
        self.intrinsics: dict[str, np.ndarray] = {
            s: load_intrinsics(self.calib_dir / "intrinsics" / f"{s}_{IMAGE_WIDTH}x{IMAGE_HEIGHT}.yml")
            for s in self.serials
        }
        self.sequences: list[SequenceInfo] = self._read_sequences()
        self._build_index()
        logger.info("DexYCB %s at %s: %d sequences, %d samples", split, self.root, len(self.sequences), len(self))

    def _read_sequences(self) -> list[SequenceInfo]:
        sequences: list[SequenceInfo] = []
        betas_cache: dict[str, tuple[np.ndarray, bool]] = {}
        for subject in (SUBJECTS[i] for i in self.spec.subjects):
            subject_dir = self.root / subject
            if not subject_dir.is_dir():
                raise DexYCBError(f"{subject_dir}: subject folder needed by split {self.split!r} not found")
            names = sorted(e.name for e in os.scandir(subject_dir) if e.is_dir() and _SEQUENCE_NAME.match(e.name))
            if len(names) != NUM_SEQUENCES_PER_SUBJECT:
                logger.info("%s: %d sequence folders (the full dataset has 100)", subject_dir, len(names))
            for pos in self.spec.sequences:
                if pos >= len(names):
                    break
                seq_dir = subject_dir / names[pos]
                info = load_sequence_meta(seq_dir / "meta.yml", subject, len(sequences), self.calib_dir, betas_cache)
                for serial in self.serials:
                    if not (seq_dir / serial).is_dir():
                        raise DexYCBError(f"{seq_dir / serial}: camera folder needed by split {self.split!r} not found")
                sequences.append(info)
        return sequences

    def _build_index(self) -> None:
        n_cam = len(self.serials)
        frames = np.array([s.num_frames for s in self.sequences], dtype=np.int64)
        per_view = np.repeat(frames, n_cam)  # views ordered sequence-major, serial-minor
        self.sequence_index = np.repeat(np.repeat(np.arange(len(frames)), n_cam), per_view)
        self.serial_index = np.repeat(np.tile(np.arange(n_cam), len(frames)), per_view)
        starts = np.cumsum(per_view) - per_view
        self.frame = np.arange(int(per_view.sum())) - np.repeat(starts, per_view)
        self.scene_id = self.sequence_index * n_cam + self.serial_index
        self.im_id = self.frame
        is_test = self.split.endswith("_test")
        last_keyframe = (np.maximum(frames, 1) - 1) // BOP_SUBSAMPLING * BOP_SUBSAMPLING
        self.is_bop_target = is_test & (self.frame % BOP_SUBSAMPLING == 0)
        self.is_grasp_target = self.is_bop_target & (self.frame == last_keyframe[self.sequence_index])

    def __len__(self) -> int:
        return len(self.frame)

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"DexYCB {self.split}: index {i} out of range for {n} samples")
        return int(i % n) if n else i

    def meta(self, i: int) -> SampleMeta:
        """Index-only metadata of sample i (no file is read)."""
        i = self._check_index(i)
        seq = self.sequences[self.sequence_index[i]]
        serial = self.serials[self.serial_index[i]]
        f = int(self.frame[i])
        view_dir = self.root / seq.subject / seq.name / serial
        return SampleMeta(
            index=i, subject=seq.subject, sequence=seq.name, serial=serial, frame=f,
            color_file=str(view_dir / f"color_{f:06d}.jpg"), label_file=str(view_dir / f"labels_{f:06d}.npz"),
            scene_id=int(self.scene_id[i]), im_id=f,
            is_bop_target=bool(self.is_bop_target[i]), is_grasp_target=bool(self.is_grasp_target[i]),
        )  # fmt: skip

    def sample_intrinsics(self, i: int) -> np.ndarray:
        """(3, 3) float32 colour intrinsics of sample i (no file is read)."""
        return self.intrinsics[self.serials[self.serial_index[self._check_index(i)]]].copy()

    @property
    def records(self) -> Sequence[SampleMeta]:
        """All samples' `SampleMeta`, built lazily on access."""
        return _Records(self)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The reader sample of docs/architecture.md ("Reader sample"), plus the BOP ids."""
        m = self.meta(i)
        seq = self.sequences[self.sequence_index[m.index]]
        labels = read_labels(m.label_file, len(seq.ycb_ids))
        pose_y = labels["pose_y"].astype(np.float32)
        joint_3d = labels["joint_3d"][0].astype(np.float32)
        sample: dict[str, Any] = {
            "index": m.index,
            "subject": m.subject,
            "sequence": m.sequence,
            "serial": m.serial,
            "frame": m.frame,
            "color_file": m.color_file,
            "label_file": m.label_file,
            "seg": labels["seg"],
            "K": self.intrinsics[m.serial].copy(),
            "ycb_ids": list(seq.ycb_ids),
            "grasp_index": seq.grasp_index,
            "obj_pose": pose_y,
            "obj_pose_valid": np.any(pose_y != 0, axis=(1, 2)),
            "pose_m": labels["pose_m"][0].astype(np.float32),
            "mano_betas": seq.mano_betas.copy(),
            "mano_betas_valid": seq.mano_betas_valid,
            "joint_3d": joint_3d,
            "joint_2d": labels["joint_2d"][0].astype(np.float32),
            "hand_valid": bool(np.any(joint_3d != -1)),
            "side": seq.side,
            "is_left": seq.side == "left",
            "scene_id": m.scene_id,
            "im_id": m.im_id,
            "is_bop_target": m.is_bop_target,
            "is_grasp_target": m.is_grasp_target,
        }
        if self.load_image:
            sample["color"] = read_color(m.color_file)
        return sample

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """Yield every sample in index order. With on_error="skip", a sample whose files raise
        DexYCBError is logged, counted in `self.skipped` (message in `self.skip_messages`) and
        left out; with "raise" the error propagates."""
        self.skipped = 0
        self.skip_messages = []
        for i in range(len(self)):
            try:
                sample = self[i]
            except DexYCBError as exc:
                if self.on_error == "raise":
                    raise
                self.skipped += 1
                self.skip_messages.append(str(exc))
                logger.warning("DexYCB %s: skipping sample %d: %s", self.split, i, exc)
                continue
            yield sample
