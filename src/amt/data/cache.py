"""The preprocessed training cache: hand-centred crops (uint8) + label arrays, memory-mapped.

Layout of a cache folder (one split at one crop size):

    build.json            parameters of the build (checked on resume)
    progress.jsonl        one line per finished chunk: {"chunk": c, "meta": [[subject, sequence, serial,
                          frame], ...], "skipped": [[row, error], ...], "sha256": digest of its rows}
    images.u8             raw uint8 memmap, (N, size, size, 3) RGB
    labels/<key>.npy      one array per label key, first axis N (see LABEL_SPECS)
    meta.json             the completion marker, written last and atomically after every array file
                          was fsynced: parameters, N, `complete: true`, `files` {name: {bytes,
                          sha256}}, `skipped` [{row, error}], per-sample meta

Building is parallel over chunks of consecutive samples; each worker writes its rows straight into
the memmaps, and the parent records the chunk (with its SHA-256) in progress.jsonl only after the
worker flushed, so a rerun after a kill redoes only unfinished (or since altered) chunks. A kill at
any instant leaves no meta.json or a complete one; `open_cache` checks the marker and every file's
size against it (and the checksums with verify=True), so a half-built or truncated cache is never
read as complete (CacheError). Over 450 lines: building, resuming and skipping bad samples are one
protocol and read best together.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from amt.data.cache_format import (
    BUILD_FILE,
    CACHE_SUBDIR,
    CACHE_VERSION,
    IMAGES_FILE,
    LABEL_SPECS,
    LABELS_DIR,
    MAX_OBJECTS,
    META_FILE,
    PROGRESS_FILE,
    CacheError,
    cache_problem,
    chunk_digest,
    data_files,
    expected_sizes,
    file_digest,
    read_cache_meta,
    row_spans,
)
from amt.data.cache_source import SOURCE_KEY, check_cache_source, source_fingerprint
from amt.data.contacts import ContactConfig, contact_labels, hand_surface, pose_points
from amt.data.dataset import READER_ERRORS, check_sample, open_dataset
from amt.data.dexycb import DexYCBError
from amt.data.object_models import ObjectModels
from amt.data.transforms import (
    CropConfig,
    crop_and_resize,
    crop_intrinsics_for_box,
    mirror_record,
    square_box,
    to_crop_pixels,
)
from amt.geometry.mano import ManoLayer
from amt.jsonio import fsync_path, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheParams:
    """Everything that determines a cache's content (compared on resume)."""

    root: str
    split: str
    crop: CropConfig = field(default_factory=CropConfig)
    contact: ContactConfig = field(default_factory=ContactConfig)
    models_dir: str | None = None
    mano_dir: str | None = None
    chunk_size: int = 64
    version: int = CACHE_VERSION
    format: str = "dexycb"  # amt.data.dataset.open_dataset format of `root`

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CacheArrays:
    """An opened cache: images (N, S, S, 3) uint8, labels {key: (N, ...)}, meta per sample (N),
    rows: the (M,) int64 rows holding a sample (all but the skipped ones)."""

    folder: Path
    images: np.ndarray
    labels: dict[str, np.ndarray]
    meta: list[dict[str, Any]]
    params: dict[str, Any]
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _object_box_points(sample: dict[str, Any], object_models: Any, n: int) -> np.ndarray | None:
    """Projected surface points (n, 2) of the grasped object, else of any posed object, else None."""
    valid = np.asarray(sample["obj_pose_valid"], dtype=bool)
    order = [int(sample["grasp_index"])] + [i for i in range(len(valid)) if i != int(sample["grasp_index"])]
    for i in order:
        if 0 <= i < len(valid) and valid[i]:
            pose = np.asarray(sample["obj_pose"][i], dtype=np.float64)
            pts = pose_points(object_models.points(int(sample["ycb_ids"][i]), n=n), pose[:, :3], pose[:, 3])
            uvw = pts.astype(np.float64) @ np.asarray(sample["K"], dtype=np.float64).T
            return uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-6)
    return None


MAX_CROP_FACTOR = 8  # a crop box side above this many times the image's longer side means broken labels
MANO_FILES = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}


def load_mano_layers(mano_dir: str | Path) -> dict[str, Any]:
    """{side: ManoLayer} for the MANO_RIGHT.pkl / MANO_LEFT.pkl files present in `mano_dir`."""
    folder = Path(mano_dir)
    layers = {side: ManoLayer.from_pickle(folder / name, side=side) for side, name in MANO_FILES.items()
              if (folder / name).is_file()}  # fmt: skip
    if not layers:
        raise FileNotFoundError(f"{folder}: no {' or '.join(MANO_FILES.values())} found")
    return layers


def mano_vertices(sample: dict[str, Any], layers: dict[str, Any]) -> np.ndarray | None:
    """(778, 3) float32 MANO vertices in the camera frame (metres) from `pose_m` and the subject's
    betas, or None when the frame has no MANO annotation or no layer for its side."""
    pose_m = np.asarray(sample["pose_m"], dtype=np.float32).reshape(-1)
    layer = layers.get(sample["side"])
    if layer is None or not sample["hand_valid"] or not np.any(pose_m != 0) or not sample["mano_betas_valid"]:
        return None
    p = torch.from_numpy(pose_m)[None]
    betas = torch.as_tensor(np.asarray(sample["mano_betas"], dtype=np.float32))[None]
    with torch.no_grad():
        verts, _ = layer(p[:, :3], layer.pca_to_hand_pose(p[:, 3:48]), betas, p[:, 48:51])
    return verts[0].numpy()


def crop_box_for_sample(sample: dict[str, Any], object_models: Any, crop: CropConfig) -> tuple[int, int, int]:
    """(x0, y0, side) integer box: around the hand's 2D joints, else the grasped object's projection,
    else the largest centred square of the image."""
    if sample["hand_valid"]:
        return square_box(sample["joint_2d"], crop.margin, crop.min_size)
    if sample.get("hand_box") is not None:  # a benchmark's hand box without joints (HO-3D evaluation)
        x0, y0, x1, y1 = (float(v) for v in sample["hand_box"])
        return square_box(np.array([[x0, y0], [x1, y1]]), crop.margin, crop.min_size)
    uv = _object_box_points(sample, object_models, n=256)
    if uv is not None:
        return square_box(uv, crop.margin, crop.min_size)
    h, w = sample["color"].shape[:2]
    side = min(h, w)
    return (w - side) // 2, (h - side) // 2, side


def make_record(
    sample: dict[str, Any],
    object_models: Any,
    crop: CropConfig,
    contact: ContactConfig,
    mano_layers: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """One reader sample -> (crop image (S, S, 3) uint8, labels per LABEL_SPECS, meta dict).

    Contacts use the MANO vertices when `mano_layers` ({side: ManoLayer}) can pose this frame's
    hand, otherwise the skeleton surface points of `joint_3d`.

    Objects fill slots in `ycb_ids` order, padded to MAX_OBJECTS; a slot without a pose in this
    frame has obj_valid False. Joints of a frame without a hand are zeros.

    A left hand (`is_left`) is stored mirrored to a right hand (`amt.data.transforms.mirror_record`:
    flipped crop, mirrored K, joints, object poses and contacts); `is_left` stays True so that
    predictions can be mirrored back (`amt.evaluation.evaluator`).
    """
    size = crop.size
    ycb_ids = [int(c) for c in sample["ycb_ids"]]
    if len(ycb_ids) > MAX_OBJECTS:
        raise DexYCBError(
            f"{sample.get('label_file', '?')}: ycb_ids has {len(ycb_ids)} objects, the cache holds at most {MAX_OBJECTS}"
        )
    box = crop_box_for_sample(sample, object_models, crop)
    h, w = sample["color"].shape[:2]
    if box[2] > MAX_CROP_FACTOR * max(h, w):  # implausible labels; the crop would not fit in memory
        raise DexYCBError(
            f"{sample.get('label_file', '?')}: the labels give a {box[2]} px crop box for a {w}x{h} image"
        )
    image = crop_and_resize(sample["color"], box, size)
    labels = {key: np.zeros(shape, dtype=dtype) for key, (shape, dtype) in LABEL_SPECS.items()}
    labels["index"][...] = int(sample["index"])
    labels["K"][...] = crop_intrinsics_for_box(sample["K"], box, size)
    labels["crop_box"][...] = box
    hand_valid = bool(sample["hand_valid"])
    labels["hand_valid"][...] = hand_valid
    labels["is_left"][...] = bool(sample["is_left"])
    if hand_valid:
        labels["joints_3d"][...] = sample["joint_3d"]
        labels["joints_2d"][...] = to_crop_pixels(sample["joint_2d"], box, size)
    pose_m = np.asarray(sample["pose_m"], dtype=np.float32).reshape(-1)
    labels["mano_pose"][...] = pose_m[:48]
    labels["mano_shape"][...] = sample["mano_betas"]
    labels["mano_valid"][...] = hand_valid and bool(np.any(pose_m != 0)) and bool(sample["mano_betas_valid"])

    n = len(ycb_ids)
    pose = np.asarray(sample["obj_pose"], dtype=np.float32).reshape(n, 3, 4)
    valid = np.asarray(sample["obj_pose_valid"], dtype=bool).reshape(n)
    labels["obj_R"][:n] = pose[:, :, :3]
    labels["obj_t"][:n] = pose[:, :, 3]
    labels["obj_class"][:n] = ycb_ids
    labels["obj_valid"][:n] = valid
    grasp = int(sample["grasp_index"])
    labels["grasped"][...] = grasp if 0 <= grasp < n and valid[grasp] else -1

    if hand_valid:
        hand = hand_surface(sample["joint_3d"], mano_vertices(sample, mano_layers) if mano_layers else None)
        obj_points = [
            pose_points(object_models.points(c, n=contact.num_points), pose[i, :, :3], pose[i, :, 3])
            if valid[i]
            else np.zeros((0, 3), np.float32)
            for i, c in enumerate(ycb_ids)
        ]
        found = contact_labels(hand, obj_points, contact.threshold_mm)
        labels["contact_points"][:n] = found.points
        labels["contact_valid"][:n] = found.in_contact
    if bool(sample["is_left"]):  # stored as its mirror image, a right hand (docs/data.md, "Handedness")
        image, labels = mirror_record(image, labels)
    meta = {k: sample[k] for k in ("subject", "sequence", "serial")}
    meta["frame"] = int(sample["frame"])
    return image, labels, meta


# --- building ------------------------------------------------------------------------------


class EmptySplitError(CacheError):
    """The split to cache has no samples in this dataset root."""


_WORKER: dict[str, Any] = {}
SKIPPED_INDEX = -1  # `index` label of a row whose sample was skipped (its other labels are zeros)


def _init_worker(params: dict[str, Any], folder: str, n: int, strict: bool = False) -> None:
    """Open the reader, the object models and the memmaps once per worker process."""
    torch.set_num_threads(1)
    dataset = open_dataset(params.get("format", "dexycb"), params["root"], params["split"])
    models_dir = params["models_dir"] or dataset.models_dir
    size = params["crop"]["size"]
    out = Path(folder)
    _WORKER.update(
        dataset=dataset,
        # a dataset without objects may have no models folder; make_record then never asks for one
        models=ObjectModels(models_dir) if models_dir is not None and Path(models_dir).is_dir() else None,
        crop=CropConfig(**params["crop"]),
        contact=ContactConfig(**params["contact"]),
        mano=load_mano_layers(params["mano_dir"]) if params["mano_dir"] else None,
        images=np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=(n, size, size, 3)),
        labels={k: np.load(out / LABELS_DIR / f"{k}.npy", mmap_mode="r+") for k in LABEL_SPECS},
        spans=row_spans(out, n, size),
        strict=strict,
    )


def _build_chunk(task: tuple[int, int, int]) -> tuple[int, list[list[Any]], list[list[Any]], str]:
    """Write samples [start, stop) into the memmaps; returns (chunk id, meta rows, skipped
    [row, error] pairs, the chunk's SHA-256). A sample whose files raise DexYCBError is skipped
    (zero labels, index -1) unless the build is strict."""
    chunk, start, stop = task
    w = _WORKER
    rows, skipped = [], []
    for i in range(start, stop):
        try:
            sample = w["dataset"][i]
            label_file = sample.get("label_file", "?") if isinstance(sample, dict) else "?"
            check_sample(sample, f"{type(w['dataset']).__name__}[{i}] ({label_file})")
            image, labels, meta = make_record(sample, w["models"], w["crop"], w["contact"], w["mano"])
        except READER_ERRORS as exc:
            if w["strict"]:
                raise
            log.warning("cache: skipping sample %d: %s", i, exc)
            skipped.append([i, str(exc)])
            image = np.zeros(w["images"].shape[1:], np.uint8)
            labels = {key: np.zeros(shape, dtype=dtype) for key, (shape, dtype) in LABEL_SPECS.items()}
            labels["index"][...] = SKIPPED_INDEX
            meta = {"subject": "", "sequence": "", "serial": "", "frame": -1}
        w["images"][i] = image
        for key, value in labels.items():
            w["labels"][key][i] = value
        rows.append([meta["subject"], meta["sequence"], meta["serial"], meta["frame"]])
    w["images"].flush()
    for arr in w["labels"].values():
        arr.flush()
    return chunk, rows, skipped, chunk_digest(w["spans"], start, stop)


def _read_json(path: Path) -> Any:
    """JSON content of `path`, or None when it is missing or torn (a kill mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_progress(path: Path, n_chunks: int) -> dict[int, dict[str, Any]]:
    """Finished chunks from progress.jsonl; a torn or malformed line (killed mid-write) is ignored."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            chunk = entry["chunk"]
            ok = isinstance(chunk, int) and 0 <= chunk < n_chunks and isinstance(entry["sha256"], str)
            ok = ok and isinstance(entry["meta"], list) and isinstance(entry["skipped"], list)
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            log.warning("%s: ignoring a partial or malformed progress line", path)
            continue
        done[chunk] = entry
    return done


def _progress_line(chunk: int, rows: list[list[Any]], skipped: list[list[Any]], digest: str) -> str:
    return json.dumps({"chunk": chunk, "meta": rows, "skipped": skipped, "sha256": digest}) + "\n"


def _write_progress(path: Path, done: dict[int, dict[str, Any]]) -> None:
    """Rewrite progress.jsonl with the finished chunks only, dropping a torn line before appending."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(_progress_line(c, e["meta"], e["skipped"], e["sha256"]) for c, e in sorted(done.items())))
    tmp.replace(path)


def _allocate(out: Path, n: int, size: int) -> None:
    (out / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="w+", shape=(n, size, size, 3)).flush()
    for key, (shape, dtype) in LABEL_SPECS.items():
        np.lib.format.open_memmap(out / LABELS_DIR / f"{key}.npy", mode="w+", dtype=dtype, shape=(n, *shape)).flush()


def _check_space(out: Path, n: int, size: int) -> None:
    """CacheError when the file system cannot hold the rest of the arrays. They are sparse files
    filled through memory maps, and a write into a hole on a full disk ends the process with
    SIGBUS (no message, no traceback): so the space the holes still need is checked first."""
    sizes = expected_sizes(out, n, size)
    written = sum(min(getattr(p.stat(), "st_blocks", 0) * 512, want) for p, want in sizes.items())
    needed, free = sum(sizes.values()) - written, shutil.disk_usage(out).free
    if needed > free:
        raise CacheError(
            f"{out}: the cache needs {needed / 1e9:.2f} GB more and its disk has {free / 1e9:.2f} GB free; free "
            "space and rerun (the build resumes), or build it elsewhere (`amt cache --out`, data.cache_dir)"
        )


def _allocated(out: Path, n: int, size: int) -> bool:
    """True when every array file is there with the size a build of n samples at `size` px gives."""
    try:
        return all(p.stat().st_size == want for p, want in expected_sizes(out, n, size).items())
    except (CacheError, OSError):
        return False


def _refuse_foreign_folder(out: Path) -> None:
    """CacheError unless `out` is new, empty or a cache's folder (it holds images.u8 or build.json,
    written before anything else): a rebuild deletes meta.json and labels/, names a user's folder
    may hold too (`--force` does not change this: it rebuilds caches, it does not claim folders)."""
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries and IMAGES_FILE not in entries and BUILD_FILE not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CacheError(
            f"{out}: holds files that are not a cache's ({shown}); build the cache in a new or empty folder"
        )


def _clear(out: Path) -> None:
    for name in (META_FILE, BUILD_FILE, PROGRESS_FILE, IMAGES_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / LABELS_DIR, ignore_errors=True)


def build_cache(
    root: str | Path,
    split: str,
    out_dir: str | Path,
    size: int = 224,
    margin: float = 1.5,
    min_size: int = 96,
    workers: int = 2,
    force: bool = False,
    resume: bool = True,
    models_dir: str | Path | None = None,
    mano_dir: str | Path | None = None,
    threshold_mm: float = 10.0,
    chunk_size: int = 64,
    progress: bool = True,
    strict: bool = False,
    format: str = "dexycb",
) -> Path:
    """Build the cache of `split` under `out_dir`; returns the folder.

    format: how `root` is read (`amt.data.dataset.open_dataset`: dexycb | ho3d | folder |
    python:module.Class); every reader yields the same sample dict, so the cache is the same.

    Raises FileExistsError if `out_dir` already holds a complete cache and `force` is False
    (CacheError when what is there is damaged). mano_dir: folder with MANO_RIGHT.pkl /
    MANO_LEFT.pkl; when given, contacts use MANO vertices. With `resume`, an interrupted build
    with the same parameters continues where it stopped (finished chunks whose bytes no longer
    match their recorded SHA-256 are redone); otherwise (or when parameters differ and `force`
    is set) it starts afresh. A sample whose files are bad (DexYCBError) is skipped, logged,
    counted in meta.json `skipped` and left out by the loaders; `strict` raises instead.
    """
    out = Path(out_dir)
    _refuse_foreign_folder(out)
    if (out / META_FILE).exists() and not force:
        problem = cache_problem(out)
        if problem is None:
            raise FileExistsError(
                f"{out}: a complete cache already exists ({META_FILE}); pass force=True / --force to rebuild"
            )
        raise CacheError(f"{problem} (pass force=True / --force)")
    if (out / META_FILE).exists():
        _clear(out)
    params = CacheParams(
        root=str(Path(root)),
        split=split,
        crop=CropConfig(size=size, margin=margin, min_size=min_size),
        contact=ContactConfig(threshold_mm=threshold_mm),
        models_dir=None if models_dir is None else str(models_dir),
        mano_dir=None if mano_dir is None else str(mano_dir),
        chunk_size=chunk_size,
        format=format,
    ).to_json()
    dataset = open_dataset(format, root, split, load_image=False)
    n = len(dataset)
    if n == 0:
        raise EmptySplitError(f"{root}: split {split!r} has no samples, nothing to cache")
    params["num_samples"] = n
    params[SOURCE_KEY] = source_fingerprint(dataset, format)
    build_file = out / BUILD_FILE
    previous = _read_json(build_file) if resume else None
    # the chunking does not change the content: resume with the interrupted build's own chunk size
    if isinstance(previous, dict) and {**previous, "chunk_size": chunk_size} == params:
        chunk_size = params["chunk_size"] = int(previous["chunk_size"])
    if previous is not None and previous != params and not force:
        raise CacheError(
            f"{build_file}: an unfinished build with other parameters is here "
            f"({previous} vs {params}); pass force=True / --force to restart it"
        )
    if previous != params or not _allocated(out, n, size):
        if previous == params:
            log.warning("%s: array files missing or of the wrong size; restarting the build", out)
        _clear(out)
        out.mkdir(parents=True, exist_ok=True)
        _allocate(out, n, size)
        write_json_atomic(build_file, params, indent=1)
    _check_space(out, n, size)
    n_chunks = -(-n // chunk_size)
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    spans = row_spans(out, n, size)
    done = _read_progress(out / PROGRESS_FILE, n_chunks)
    for chunk in [c for c, e in done.items() if e["sha256"] != chunk_digest(spans, *bounds[c])]:
        log.warning("%s: chunk %d changed since it was written; redoing it", out, chunk)
        del done[chunk]
    _write_progress(out / PROGRESS_FILE, done)
    tasks = [(c, *bounds[c]) for c in range(n_chunks) if c not in done]
    if done:
        log.info("%s: resuming, %d of %d chunks already done", out, len(done), n_chunks)
    initial = n - sum(t[2] - t[1] for t in tasks)
    # closed when a sample's error stops the build too, so the error prints on a line of its own
    with (
        tqdm(total=n, initial=initial, desc=f"cache {split}", disable=not progress) as bar,
        open(out / PROGRESS_FILE, "a") as progress_file,
    ):

        def record(result: tuple[int, list[list[Any]], list[list[Any]], str]) -> None:
            chunk, rows, skipped, digest = result
            done[chunk] = {"meta": rows, "skipped": skipped, "sha256": digest}
            progress_file.write(_progress_line(chunk, rows, skipped, digest))
            progress_file.flush()
            bar.update(len(rows))

        if workers <= 1 or len(tasks) <= 1:
            _init_worker(params, str(out), n, strict)
            try:
                for task in tasks:
                    record(_build_chunk(task))
            finally:
                _WORKER.clear()
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(params, str(out), n, strict)) as pool:
                for result in pool.imap_unordered(_build_chunk, tasks):
                    record(result)
    skipped = [{"row": int(r), "error": e} for c in sorted(done) for r, e in done[c]["skipped"]]
    if len(skipped) == n:
        raise CacheError(f"{out}: every one of the {n} samples of {split!r} was skipped; first: {skipped[0]['error']}")
    samples = [
        dict(zip(("subject", "sequence", "serial", "frame"), row)) for c in sorted(done) for row in done[c]["meta"]
    ]
    for path in data_files(out):  # the arrays are on disk before the marker that says so
        fsync_path(path)
    files = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in data_files(out)}
    meta = {"version": CACHE_VERSION, "complete": True, "num_samples": n, "size": size, "params": params,
            "files": files, "skipped": skipped, "samples": samples}  # fmt: skip
    write_json_atomic(out / META_FILE, meta)
    if skipped:
        log.warning("%s: cache complete, %d samples at %d px, %d skipped (listed in %s)", out, n, size,
                    len(skipped), META_FILE)  # fmt: skip
    else:
        log.info("%s: cache complete, %d samples at %d px", out, n, size)
    return out


def cache_folder(root: str | Path, split: str, image_size: int) -> Path:
    """The default cache folder of `split` at `image_size` px: <root>/cache/<split>_<image_size>.

    Where `amt cache`, `amt train`, `amt eval`, `amt debug` and the demo put (and look for) it.
    """
    return Path(root) / CACHE_SUBDIR / f"{split}_{image_size}"


def cache_crop_margin(folder: str | Path) -> float:
    """The crop margin a complete cache was built with (crop side / the hand box's longer side)."""
    return float(read_cache_meta(folder)["params"]["crop"]["margin"])


def check_cache_margin(folder: str | Path, margin: float) -> None:
    """CacheError naming `folder` when its complete cache was built with another crop margin."""
    built = cache_crop_margin(folder)
    if abs(built - margin) > 1e-6:
        raise CacheError(
            f"{folder}: built with crop margin {built:g}, but the model was trained on crops of margin "
            f"{margin:g}; rebuild it (`amt cache --margin {margin:g} --force`) or pass another cache folder"
        )


def ensure_cache(
    root: str | Path,
    split: str,
    image_size: int,
    folder: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    format: str = "dexycb",
    margin: float | None = None,
) -> Path:
    """The cache folder of `split` (default `cache_folder(root, split, image_size)`), built from
    the dataset `root` when it is not complete: an unfinished build is resumed, a damaged cache
    (sizes differ from its meta.json) rebuilt; returns the folder. margin: the crop margin to build
    with, and then a complete cache built with another is a CacheError (a model evaluated on crops
    framed unlike its training crops would give wrong numbers, silently); None: CropConfig's margin
    for a new build, any margin for a complete cache. A complete cache built from other data than
    `root` now holds is a CacheError too (`amt.data.cache_source`)."""
    folder = Path(folder) if folder is not None else cache_folder(root, split, image_size)
    problem = cache_problem(folder)
    if problem is None:
        check_cache_source(folder, root, split, format)
        if margin is not None:
            check_cache_margin(folder, margin)
    else:
        damaged = (folder / META_FILE).exists()
        if damaged:
            log.warning("%s; rebuilding it", problem)
        log.info("building the %s cache of %s in %s", split, root, folder)
        build_cache(
            root,
            split,
            folder,
            size=image_size,
            workers=workers,
            progress=progress,
            force=damaged,
            format=format,
            margin=CropConfig().margin if margin is None else float(margin),
        )
    return folder


def open_cache(folder: str | Path, mmap: bool = True, verify: bool = False) -> CacheArrays:
    """Open a complete cache (CacheError naming the file otherwise: see `read_cache_meta`).
    mmap=True maps the files (lazy reads); False loads them into RAM. verify: also compare every
    file's SHA-256 with meta.json (reads the whole cache once)."""
    folder = Path(folder)
    meta = read_cache_meta(folder, verify)
    n, size = int(meta["num_samples"]), int(meta["size"])
    try:
        images = np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="r", shape=(n, size, size, 3))
        labels = {k: np.load(folder / LABELS_DIR / f"{k}.npy", mmap_mode="r" if mmap else None) for k in LABEL_SPECS}
        if not mmap:
            images = np.array(images)
    except (OSError, ValueError) as exc:
        raise CacheError(f"{folder}: cannot read the cache arrays ({exc}); rebuild with `amt cache --force`") from exc
    skipped = {int(s["row"]) for s in meta["skipped"]}
    rows = np.array([i for i in range(n) if i not in skipped], dtype=np.int64)
    return CacheArrays(
        folder=folder, images=images, labels=labels, meta=meta["samples"], params=meta["params"], rows=rows
    )
