"""The plain-folder format for your own data (docs/datasets.md "Plain-folder format").

    ROOT/
      dataset.json            optional: {"joint_order": "dexycb" | "ho3d" | "mano"}
      models/<class name>/textured_simple.obj   object meshes (metres), needed only with objects
      <split>/
        images/...            any images PIL reads
        annotations.jsonl     one frame per line, or
        annotations/*.json    one frame per file (sorted by name)

A frame record (units: metres, pixels; camera frame x right, y down, z forward):

    {"image": "images/000000.jpg",               # relative to the split folder
     "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
     "joints_3d": [[x, y, z], ... 21] | null,    # null: no hand in this frame
     "joints_2d": [[u, v], ... 21],              # optional; default: projection of joints_3d
     "joint_order": "dexycb",                    # optional; default: dataset.json, else dexycb
     "side": "right" | "left",                   # optional, default right
     "objects": [{"class": 1..21, "pose": [[r, r, r, tx], [r, r, r, ty], [r, r, r, tz]] | null}],
     "grasped": 0,                               # optional index into objects
     "mano": {"pose_m": [51 numbers, DexYCB's pose_m], "betas": [10 numbers]},   # optional
     "subject": "", "sequence": "seq0", "camera": "0", "frame": 0}               # optional

`FolderDataset(root, split)` validates every record when it opens (a `FolderError` names the
file, the line and the field) and converts the joints to DexYCB order; `write_folder(dataset,
out)` writes any `amt.data.dataset.HandObjectDataset` split in this format (images copied
byte for byte), which is how `amt synth --format folder` produces it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from amt.data.plausible import hand_span_problem, object_distance_problem
from amt.data.ycb import YCB_CLASSES
from amt.geometry.hand_skeleton import MANOPTH_TO_DEXYCB

ANNOTATIONS_JSONL = "annotations.jsonl"
ANNOTATIONS_DIR = "annotations"
DATASET_FILE = "dataset.json"
MODELS_DIR = "models"

# joint order name -> permutation p with dexycb_joints = joints_in_that_order[p]
JOINT_ORDERS: dict[str, tuple[int, ...]] = {
    "dexycb": tuple(range(21)),  # also OpenPose / FreiHAND: wrist, thumb, index, middle, ring, little
    "ho3d": MANOPTH_TO_DEXYCB,  # HO-3D and manopth: wrist, index, middle, little, ring, thumb, 5 tips
    "mano": MANOPTH_TO_DEXYCB,
}


class FolderError(ValueError):
    """A plain-folder dataset file is missing or holds a bad field; the message names both."""


def to_dexycb_order(joints: np.ndarray, order: str) -> np.ndarray:
    """(..., 21, D) joints in `order` (a JOINT_ORDERS name) -> DexYCB order."""
    if order not in JOINT_ORDERS:
        raise ValueError(f"unknown joint order {order!r}; expected one of {sorted(JOINT_ORDERS)}")
    return np.asarray(joints)[..., list(JOINT_ORDERS[order]), :]


def from_dexycb_order(joints: np.ndarray, order: str) -> np.ndarray:
    """(..., 21, D) joints in DexYCB order -> `order` (inverse of `to_dexycb_order`)."""
    if order not in JOINT_ORDERS:
        raise ValueError(f"unknown joint order {order!r}; expected one of {sorted(JOINT_ORDERS)}")
    return np.asarray(joints)[..., list(np.argsort(JOINT_ORDERS[order])), :]


def _array(record: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """record[key] as a finite float64 array of `shape`; FolderError naming `where` and the field."""
    try:
        value = np.asarray(record[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FolderError(f"{where}: field {key!r} must be numbers of shape {shape} ({exc})") from None
    if value.shape != shape:
        raise FolderError(f"{where}: field {key!r} has shape {value.shape}, expected {shape}")
    if not np.isfinite(value).all():
        raise FolderError(f"{where}: field {key!r} contains NaN or inf")
    return value


def parse_record(record: Any, where: str, default_order: str) -> dict[str, Any]:
    """Validate one frame record and convert it to arrays in DexYCB joint order (see the module
    docstring); `where` ("file:line") prefixes every error."""
    if not isinstance(record, dict):
        raise FolderError(f"{where}: a frame record must be a JSON object, got {type(record).__name__}")
    for key in ("image", "K"):
        if key not in record:
            raise FolderError(f"{where}: missing field {key!r}")
    if not isinstance(record["image"], str) or not record["image"]:
        raise FolderError(f"{where}: field 'image' must be a relative file path")
    K = _array(record, "K", (3, 3), where)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise FolderError(f"{where}: field 'K' must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    order = record.get("joint_order", default_order)
    if order not in JOINT_ORDERS:
        raise FolderError(f"{where}: field 'joint_order' is {order!r}; expected one of {sorted(JOINT_ORDERS)}")
    out: dict[str, Any] = {"image": record["image"], "K": K.astype(np.float32)}
    side = record.get("side", "right")
    if side not in ("right", "left"):
        raise FolderError(f"{where}: field 'side' must be 'right' or 'left', got {side!r}")
    out["side"] = side
    if record.get("joints_3d") is None:
        out["joint_3d"] = -np.ones((21, 3), np.float32)
        out["joint_2d"] = -np.ones((21, 2), np.float32)
        out["hand_valid"] = False
    else:
        j3 = to_dexycb_order(_array(record, "joints_3d", (21, 3), where), order)
        if np.median(j3[:, 2]) <= 0:
            raise FolderError(
                f"{where}: field 'joints_3d' lies behind the camera (z <= 0); the format uses the OpenCV "
                "camera frame (z forward, metres): convert OpenGL data with z -> -z, y -> -y"
            )
        if (problem := hand_span_problem(j3)) is not None:
            raise FolderError(f"{where}: field 'joints_3d' {problem}")
        if record.get("joints_2d") is None:
            uvw = j3 @ K.T
            j2 = uvw[:, :2] / uvw[:, 2:]
        else:
            j2 = to_dexycb_order(_array(record, "joints_2d", (21, 2), where), order)
        out.update(joint_3d=j3.astype(np.float32), joint_2d=j2.astype(np.float32), hand_valid=True)
    objects = record.get("objects") or []
    if not isinstance(objects, list):
        raise FolderError(f"{where}: field 'objects' must be a list")
    ids, poses, valid = [], np.zeros((len(objects), 3, 4), np.float32), np.zeros(len(objects), bool)
    for k, obj in enumerate(objects):
        field = f"objects[{k}]"
        if not isinstance(obj, dict) or not isinstance(obj.get("class"), int) or obj["class"] not in YCB_CLASSES:
            raise FolderError(f"{where}: field '{field}.class' must be a YCB class id 1..{len(YCB_CLASSES)}")
        ids.append(obj["class"])
        if obj.get("pose") is not None:
            pose = _array(obj, "pose", (3, 4), f"{where}: {field}")
            if abs(np.linalg.det(pose[:, :3]) - 1.0) > 1e-2:
                raise FolderError(f"{where}: field '{field}.pose' rotation is not a rotation (det != 1)")
            if (problem := object_distance_problem(pose[:, 3])) is not None:
                raise FolderError(f"{where}: field '{field}.pose' {problem}")
            poses[k], valid[k] = pose, True
    grasped = record.get("grasped")
    if grasped is not None and (not isinstance(grasped, int) or not 0 <= grasped < len(objects)):
        raise FolderError(f"{where}: field 'grasped' must index 'objects' (0..{len(objects) - 1}), got {grasped!r}")
    out.update(ycb_ids=ids, obj_pose=poses, obj_pose_valid=valid, grasp_index=-1 if grasped is None else grasped)
    mano = record.get("mano") or {}
    if not isinstance(mano, dict):
        raise FolderError(f"{where}: field 'mano' must be an object with 'pose_m' and/or 'betas'")
    out["pose_m"] = _array(mano, "pose_m", (51,), f"{where}: mano").astype(np.float32) if "pose_m" in mano \
        else np.zeros(51, np.float32)  # fmt: skip
    out["mano_betas_valid"] = "betas" in mano
    out["mano_betas"] = _array(mano, "betas", (10,), f"{where}: mano").astype(np.float32) if "betas" in mano \
        else np.zeros(10, np.float32)  # fmt: skip
    for key, kind in (("subject", str), ("sequence", str), ("camera", str), ("frame", int)):
        if key in record and not isinstance(record[key], kind):
            raise FolderError(f"{where}: field {key!r} must be a {kind.__name__}")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FolderError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FolderError(f"{path}: not valid JSON ({exc})") from exc


def _raw_records(split_dir: Path) -> list[tuple[str, Any]]:
    """(where, record) of a split folder, from annotations.jsonl or annotations/*.json."""
    jsonl, folder = split_dir / ANNOTATIONS_JSONL, split_dir / ANNOTATIONS_DIR
    if jsonl.is_file():
        out = []
        for n, line in enumerate(jsonl.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"{jsonl}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise FolderError(f"{jsonl}:{n}: not valid JSON ({exc})") from exc
        return out
    if folder.is_dir():
        return [(str(p), _read_json(p)) for p in sorted(folder.glob("*.json"))]
    raise FolderError(f"{split_dir}: no {ANNOTATIONS_JSONL} and no {ANNOTATIONS_DIR}/ folder of per-frame JSON files")


def read_image(
    path: str | Path, error: type[ValueError] = FolderError, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB; `error` (a reader's error class) naming a missing
    or corrupt file, or one whose array shape is not `shape` when given."""
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise error(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise error(f"{path}: corrupt or unreadable image ({exc})") from exc
    if shape is not None and image.shape != shape:
        raise error(f"{path}: image has shape {image.shape}, expected {shape}")
    return image


class FolderDataset:
    """One split of a plain-folder dataset (`amt.data.dataset.HandObjectDataset`).

    root: the dataset folder; split: a sub-folder name; load_image: decode `color`;
    models_dir: object meshes (default ROOT/models).
    """

    def __init__(self, root: str | Path, split: str, load_image: bool = True, models_dir: str | Path | None = None):
        self.root = Path(root).expanduser().resolve()
        self.split = split
        self.load_image = load_image
        if not self.root.is_dir():
            raise FolderError(f"{self.root}: dataset folder not found")
        settings = _read_json(self.root / DATASET_FILE) if (self.root / DATASET_FILE).is_file() else {}
        if not isinstance(settings, dict):
            raise FolderError(f"{self.root / DATASET_FILE}: must hold a JSON object")
        self.joint_order = settings.get("joint_order", "dexycb")
        if self.joint_order not in JOINT_ORDERS:
            raise FolderError(
                f"{self.root / DATASET_FILE}: field 'joint_order' is {self.joint_order!r}; "
                f"expected one of {sorted(JOINT_ORDERS)}"
            )
        self.splits = tuple(
            sorted(p.name for p in self.root.iterdir() if (p / ANNOTATIONS_JSONL).is_file() or (p / ANNOTATIONS_DIR).is_dir())
        )  # fmt: skip
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise FolderError(f"{self.split_dir}: split folder not found (splits here: {list(self.splits)})")
        self.models_dir = Path(models_dir) if models_dir is not None else self.root / MODELS_DIR
        self.where: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.meta: list[tuple[str, str, str, int]] = []  # (subject, sequence, camera, frame)
        for n, (where, raw) in enumerate(_raw_records(self.split_dir)):
            self.records.append(parse_record(raw, where, self.joint_order))
            self.where.append(where)
            self.meta.append((raw.get("subject", ""), raw.get("sequence", split), raw.get("camera", "0"),
                              raw.get("frame", n)))  # fmt: skip
        self._check_models()

    def _check_models(self) -> None:
        """Every posed object class needs its mesh (contacts and crops use it)."""
        for where, rec in zip(self.where, self.records, strict=True):
            for k, (cid, ok) in enumerate(zip(rec["ycb_ids"], rec["obj_pose_valid"], strict=True)):
                mesh = self.models_dir / YCB_CLASSES[cid] / "textured_simple.obj"
                if ok and not mesh.is_file():
                    raise FolderError(f"{where}: field 'objects[{k}].class' = {cid} needs the mesh {mesh}")

    def __len__(self) -> int:
        return len(self.records)

    def sample_intrinsics(self, i: int) -> np.ndarray:
        """(3, 3) float32 intrinsics of sample i (pixels)."""
        return self.records[i]["K"].copy()

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The reader sample (docs/architecture.md "Reader sample"), joints in DexYCB order."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.split_dir}: index {i} out of range for {len(self)} samples")
        i = int(i % len(self))
        rec = self.records[i]
        subject, sequence, camera, frame = self.meta[i]
        sample: dict[str, Any] = {
            "index": i, "subject": subject, "sequence": sequence, "serial": camera, "frame": int(frame),
            "color_file": str(self.split_dir / rec["image"]), "label_file": self.where[i],
            "K": rec["K"].copy(), "ycb_ids": list(rec["ycb_ids"]), "grasp_index": rec["grasp_index"],
            "obj_pose": rec["obj_pose"].copy(), "obj_pose_valid": rec["obj_pose_valid"].copy(),
            "pose_m": rec["pose_m"].copy(), "mano_betas": rec["mano_betas"].copy(),
            "mano_betas_valid": rec["mano_betas_valid"], "joint_3d": rec["joint_3d"].copy(),
            "joint_2d": rec["joint_2d"].copy(), "hand_valid": rec["hand_valid"], "side": rec["side"],
            "is_left": rec["side"] == "left",
        }  # fmt: skip
        if self.load_image:
            sample["color"] = read_image(sample["color_file"])
        return sample


def _floats(x: Any) -> Any:
    """Nested lists of Python floats (float32 values are exact in float64, so JSON round-trips)."""
    return np.asarray(x, dtype=np.float64).tolist()


def frame_record(sample: dict[str, Any], image: str, joint_order: str = "dexycb") -> dict[str, Any]:
    """The JSON record of one reader sample (inverse of `parse_record`)."""
    rec: dict[str, Any] = {"image": image, "K": _floats(sample["K"])}
    if joint_order != "dexycb":
        rec["joint_order"] = joint_order
    if sample["hand_valid"]:
        rec["joints_3d"] = _floats(from_dexycb_order(sample["joint_3d"], joint_order))
        rec["joints_2d"] = _floats(from_dexycb_order(sample["joint_2d"], joint_order))
    else:
        rec["joints_3d"] = None
    rec["side"] = sample["side"]
    valid = np.asarray(sample["obj_pose_valid"], bool)
    rec["objects"] = [
        {"class": int(c), "pose": _floats(sample["obj_pose"][k]) if valid[k] else None}
        for k, c in enumerate(sample["ycb_ids"])
    ]
    if 0 <= int(sample["grasp_index"]) < len(rec["objects"]):
        rec["grasped"] = int(sample["grasp_index"])
    mano: dict[str, Any] = {}
    if np.any(np.asarray(sample["pose_m"]) != 0):
        mano["pose_m"] = _floats(np.asarray(sample["pose_m"]).reshape(51))
    if sample["mano_betas_valid"]:
        mano["betas"] = _floats(sample["mano_betas"])
    if mano:
        rec["mano"] = mano
    rec.update(subject=sample["subject"], sequence=sample["sequence"], camera=sample["serial"],
               frame=int(sample["frame"]))  # fmt: skip
    return rec


def write_folder(
    dataset: Any,
    out: str | Path,
    split: str | None = None,
    joint_order: str = "dexycb",
    per_frame_json: bool = False,
    copy_models: bool = True,
) -> Path:
    """Write one split of any `HandObjectDataset` in the plain-folder format; returns `out`.

    split: the split folder name (default `dataset.split`); joint_order: the order the joints
    are stored in (converted back on read); per_frame_json: `annotations/NNNNNN.json` instead
    of one `annotations.jsonl`. Images are copied byte for byte from `color_file` (so crops
    are identical to the source's); the object meshes of `dataset.models_dir` are copied once.
    """
    out = Path(out)
    split = split or dataset.split
    split_dir = out / split
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    if joint_order != "dexycb":
        (out / DATASET_FILE).write_text(json.dumps({"joint_order": joint_order}))
    load_image = dataset.load_image
    dataset.load_image = False
    lines: list[str] = []
    try:
        for i in range(len(dataset)):
            sample = dataset[i]
            src = Path(sample["color_file"])
            image = f"images/{i:06d}{src.suffix.lower()}"
            shutil.copyfile(src, split_dir / image)
            lines.append(json.dumps(frame_record(sample, image, joint_order)))
    finally:
        dataset.load_image = load_image
    if per_frame_json:
        (split_dir / ANNOTATIONS_DIR).mkdir(exist_ok=True)
        for i, line in enumerate(lines):
            (split_dir / ANNOTATIONS_DIR / f"{i:06d}.json").write_text(line + "\n")
    else:
        (split_dir / ANNOTATIONS_JSONL).write_text("".join(line + "\n" for line in lines))
    models = getattr(dataset, "models_dir", None)
    if copy_models and models is not None and Path(models).is_dir() and not (out / MODELS_DIR).exists():
        shutil.copytree(models, out / MODELS_DIR)
    return out
