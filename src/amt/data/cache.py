"""The preprocessed training cache: hand-centred crops (uint8) + label arrays, memory-mapped.

Layout of a cache folder (one split at one crop size):

    build.json            parameters of the build (checked on resume)
    progress.jsonl        one line per finished chunk: {"chunk": c, "meta": [[subject, sequence, serial, frame], ...]}
    images.u8             raw uint8 memmap, (N, size, size, 3) RGB
    labels/<key>.npy      one array per label key, first axis N (see LABEL_SPECS)
    meta.json             written last: parameters, N, per-sample meta; its presence marks the cache complete

Building is parallel over chunks of consecutive samples; each worker writes its rows straight into
the memmaps, and the parent records the chunk in progress.jsonl only after the worker flushed, so a
rerun after a kill redoes only unfinished chunks.
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

from amt.data.contacts import ContactConfig, contact_labels, hand_surface, pose_points
from amt.data.dexycb import DexYCB
from amt.data.object_models import ObjectModels
from amt.data.transforms import CropConfig, crop_and_resize, crop_intrinsics_for_box, square_box, to_crop_pixels
from amt.geometry.mano import ManoLayer

log = logging.getLogger(__name__)

MAX_OBJECTS = 10
CACHE_VERSION = 1
IMAGES_FILE = "images.u8"
META_FILE = "meta.json"
BUILD_FILE = "build.json"
PROGRESS_FILE = "progress.jsonl"
LABELS_DIR = "labels"
CACHE_SUBDIR = "cache"  # caches of a dataset root live in <root>/cache/<split>_<size>

# key -> (per-sample shape, dtype); every key is stored as labels/<key>.npy with shape (N, *shape).
LABEL_SPECS: dict[str, tuple[tuple[int, ...], str]] = {
    "index": ((), "int64"),
    "K": ((3, 3), "float32"),
    "crop_box": ((3,), "int32"),  # (x0, y0, side) in full-image pixels
    "joints_3d": ((21, 3), "float32"),
    "joints_2d": ((21, 2), "float32"),
    "hand_valid": ((), "bool"),
    "is_left": ((), "bool"),
    "mano_pose": ((48,), "float32"),
    "mano_shape": ((10,), "float32"),
    "mano_valid": ((), "bool"),
    "obj_R": ((MAX_OBJECTS, 3, 3), "float32"),
    "obj_t": ((MAX_OBJECTS, 3), "float32"),
    "obj_class": ((MAX_OBJECTS,), "int64"),
    "obj_valid": ((MAX_OBJECTS,), "bool"),
    "grasped": ((), "int64"),
    "contact_points": ((MAX_OBJECTS, 3), "float32"),
    "contact_valid": ((MAX_OBJECTS,), "bool"),
}


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CacheArrays:
    """An opened cache: images (N, S, S, 3) uint8, labels {key: (N, ...)}, meta per sample."""

    folder: Path
    images: np.ndarray
    labels: dict[str, np.ndarray]
    meta: list[dict[str, Any]]
    params: dict[str, Any]

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
    """
    size = crop.size
    ycb_ids = [int(c) for c in sample["ycb_ids"]]
    if len(ycb_ids) > MAX_OBJECTS:
        raise ValueError(
            f"{sample.get('label_file', '?')}: ycb_ids has {len(ycb_ids)} objects, the cache holds at most {MAX_OBJECTS}"
        )
    box = crop_box_for_sample(sample, object_models, crop)
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
    meta = {k: sample[k] for k in ("subject", "sequence", "serial")}
    meta["frame"] = int(sample["frame"])
    return image, labels, meta


# --- building ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(params: dict[str, Any], folder: str, n: int) -> None:
    """Open the reader, the object models and the memmaps once per worker process."""
    torch.set_num_threads(1)
    dataset = DexYCB(params["root"], params["split"])
    models_dir = params["models_dir"] or str(dataset.models_dir)
    size = params["crop"]["size"]
    out = Path(folder)
    _WORKER.update(
        dataset=dataset,
        models=ObjectModels(models_dir),
        crop=CropConfig(**params["crop"]),
        contact=ContactConfig(**params["contact"]),
        mano=load_mano_layers(params["mano_dir"]) if params["mano_dir"] else None,
        images=np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=(n, size, size, 3)),
        labels={k: np.load(out / LABELS_DIR / f"{k}.npy", mmap_mode="r+") for k in LABEL_SPECS},
    )


def _build_chunk(task: tuple[int, int, int]) -> tuple[int, list[list[Any]]]:
    """Write samples [start, stop) into the memmaps; returns (chunk id, meta rows)."""
    chunk, start, stop = task
    w = _WORKER
    rows = []
    for i in range(start, stop):
        image, labels, meta = make_record(w["dataset"][i], w["models"], w["crop"], w["contact"], w["mano"])
        w["images"][i] = image
        for key, value in labels.items():
            w["labels"][key][i] = value
        rows.append([meta["subject"], meta["sequence"], meta["serial"], meta["frame"]])
    w["images"].flush()
    for arr in w["labels"].values():
        arr.flush()
    return chunk, rows


def _read_progress(path: Path) -> dict[int, list[list[Any]]]:
    """Finished chunks from progress.jsonl; a torn last line (killed mid-write) is ignored."""
    done: dict[int, list[list[Any]]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: ignoring a partial progress line", path)
            continue
        done[int(entry["chunk"])] = entry["meta"]
    return done


def _progress_line(chunk: int, rows: list[list[Any]]) -> str:
    return json.dumps({"chunk": chunk, "meta": rows}) + "\n"


def _write_progress(path: Path, done: dict[int, list[list[Any]]]) -> None:
    """Rewrite progress.jsonl with the finished chunks only, dropping a torn line before appending."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(_progress_line(c, rows) for c, rows in sorted(done.items())))
    tmp.replace(path)


def _allocate(out: Path, n: int, size: int) -> None:
    (out / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="w+", shape=(n, size, size, 3)).flush()
    for key, (shape, dtype) in LABEL_SPECS.items():
        np.lib.format.open_memmap(out / LABELS_DIR / f"{key}.npy", mode="w+", dtype=dtype, shape=(n, *shape)).flush()


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
) -> Path:
    """Build the cache of `split` under `out_dir`; returns the folder.

    Raises FileExistsError if `out_dir` already holds a complete cache and `force` is False.
    mano_dir: folder with MANO_RIGHT.pkl / MANO_LEFT.pkl; when given, contacts use MANO vertices.
    With `resume`, an interrupted build with the same parameters continues where it stopped;
    otherwise (or when parameters differ and `force` is set) it starts afresh.
    """
    out = Path(out_dir)
    if (out / META_FILE).exists():
        if not force:
            raise FileExistsError(
                f"{out}: a complete cache already exists ({META_FILE}); pass force=True / --force to rebuild"
            )
        _clear(out)
    params = CacheParams(
        root=str(Path(root)),
        split=split,
        crop=CropConfig(size=size, margin=margin, min_size=min_size),
        contact=ContactConfig(threshold_mm=threshold_mm),
        models_dir=None if models_dir is None else str(models_dir),
        mano_dir=None if mano_dir is None else str(mano_dir),
        chunk_size=chunk_size,
    ).to_json()
    n = len(DexYCB(root, split, load_image=False))
    if n == 0:
        raise ValueError(f"{root}: split {split!r} has no samples, nothing to cache")
    params["num_samples"] = n
    build_file = out / BUILD_FILE
    if build_file.exists() and resume:
        previous = json.loads(build_file.read_text())
        if previous != params:
            if not force:
                raise ValueError(
                    f"{build_file}: an unfinished build with other parameters is here "
                    f"({previous} vs {params}); pass force=True / --force to restart it"
                )
            _clear(out)
    elif build_file.exists():
        _clear(out)
    if not build_file.exists():
        out.mkdir(parents=True, exist_ok=True)
        _allocate(out, n, size)
        build_file.write_text(json.dumps(params, indent=1))
    done = _read_progress(out / PROGRESS_FILE)
    _write_progress(out / PROGRESS_FILE, done)
    tasks = [(c, s, min(s + chunk_size, n)) for c, s in enumerate(range(0, n, chunk_size)) if c not in done]
    if done:
        log.info("%s: resuming, %d of %d chunks already done", out, len(done), len(done) + len(tasks))
    bar = tqdm(total=n, initial=n - sum(t[2] - t[1] for t in tasks), desc=f"cache {split}", disable=not progress)
    with open(out / PROGRESS_FILE, "a") as progress_file:

        def record(result: tuple[int, list[list[Any]]]) -> None:
            chunk, rows = result
            done[chunk] = rows
            progress_file.write(_progress_line(chunk, rows))
            progress_file.flush()
            bar.update(len(rows))

        if workers <= 1 or len(tasks) <= 1:
            _init_worker(params, str(out), n)
            try:
                for task in tasks:
                    record(_build_chunk(task))
            finally:
                _WORKER.clear()
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(params, str(out), n)) as pool:
                for result in pool.imap_unordered(_build_chunk, tasks):
                    record(result)
    bar.close()
    samples = [dict(zip(("subject", "sequence", "serial", "frame"), row)) for c in sorted(done) for row in done[c]]
    meta = {"version": CACHE_VERSION, "num_samples": n, "size": size, "params": params, "samples": samples}
    (out / META_FILE).write_text(json.dumps(meta))
    log.info("%s: cache complete, %d samples at %d px", out, n, size)
    return out


def cache_folder(root: str | Path, split: str, image_size: int) -> Path:
    """The default cache folder of `split` at `image_size` px: <root>/cache/<split>_<image_size>.

    Where `amt cache`, `amt train`, `amt eval`, `amt debug` and the demo put (and look for) it.
    """
    return Path(root) / CACHE_SUBDIR / f"{split}_{image_size}"


def ensure_cache(
    root: str | Path,
    split: str,
    image_size: int,
    folder: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """The cache folder of `split` (default `cache_folder(root, split, image_size)`), built from
    the dataset `root` when it is not complete (no meta.json); returns the folder."""
    folder = Path(folder) if folder is not None else cache_folder(root, split, image_size)
    if not (folder / META_FILE).exists():
        log.info("building the %s cache of %s in %s", split, root, folder)
        build_cache(root, split, folder, size=image_size, workers=workers, progress=progress)
    return folder


def open_cache(folder: str | Path, mmap: bool = True) -> CacheArrays:
    """Open a complete cache. mmap=True maps the files (lazy reads); False loads them into RAM."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder}: no {META_FILE}, not a complete cache (build it with `amt cache`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(f"{meta_path}: key 'version' is {meta.get('version')!r}, expected {CACHE_VERSION}")
    n, size = int(meta["num_samples"]), int(meta["size"])
    images = np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="r", shape=(n, size, size, 3))
    labels = {}
    for key in LABEL_SPECS:
        path = folder / LABELS_DIR / f"{key}.npy"
        if not path.exists():
            raise FileNotFoundError(f"{path}: label array {key!r} missing from the cache")
        labels[key] = np.load(path, mmap_mode="r" if mmap else None)
    if not mmap:
        images = np.array(images)
    return CacheArrays(folder=folder, images=images, labels=labels, meta=meta["samples"], params=meta["params"])
