"""Reader for HO-3D v2 and v3 (docs/datasets.md "HO-3D").

Official layout (v3 differs only in `rgb/*.jpg` instead of `rgb/*.png`):

    ROOT/train.txt, ROOT/evaluation.txt       one "SEQUENCE/FRAME" per line (FRAME = "0000")
    ROOT/{train,evaluation}/<SEQUENCE>/rgb/<FRAME>.png|jpg    640x480 colour
    ROOT/{train,evaluation}/<SEQUENCE>/meta/<FRAME>.pkl       per-frame annotation pickle
    ROOT/{train,evaluation}/<SEQUENCE>/seg/, depth/           not read

A meta pickle holds `camMat` (3, 3), `handJoints3D` ((21, 3) in training; the root joint (3,)
alone in evaluation), `handPose` (48,), `handTrans` (3,), `handBeta` (10,), `objName`,
`objRot` (3, 1) axis-angle, `objTrans` (3,), `objCorners3D`, and in evaluation
`handBoundingBox` [x0, y0, x1, y1] (pixels). Any of them may be None. 3D values are metres in
HO-3D's OpenGL camera frame (y up, z towards the viewer: the hand has z < 0); the reader
converts them to the project's OpenCV frame (y down, z forward) with diag(1, -1, -1) and the
joints from HO-3D's order (MANO's: wrist, index, middle, little, ring, thumb, then the five
tips) to DexYCB order.

Pickles are read by `SafeUnpickler`, which builds numpy arrays and plain containers only: a
pickle that would import anything else (and so could run code) is refused with an `HO3DError`
naming the file.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from amt.data.folder import read_image
from amt.data.ycb import CLASS_ID_BY_NAME
from amt.geometry.hand_skeleton import MANOPTH_TO_DEXYCB
from amt.safe_pickle import RestrictedUnpickler

SPLITS: tuple[str, ...] = ("train", "evaluation")
IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640
# OpenGL <-> OpenCV camera frames: flip y and z (its own inverse).
GL_FLIP = np.array([1.0, -1.0, -1.0])
_SEQUENCE = re.compile(r"^([A-Za-z]+)(\d*)$")


class HO3DError(ValueError):
    """An HO-3D file is missing, unsafe or holds unexpected content; the message names it."""


def opengl_to_opencv(points: np.ndarray) -> np.ndarray:
    """(..., 3) points (or translations) in HO-3D's OpenGL camera frame -> OpenCV frame."""
    return np.asarray(points) * GL_FLIP


def opencv_to_opengl(points: np.ndarray) -> np.ndarray:
    """(..., 3) OpenCV camera-frame points -> HO-3D's OpenGL frame (the same flip)."""
    return np.asarray(points) * GL_FLIP


def rotation_opengl_to_opencv(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) model-to-camera rotation in the OpenGL frame -> OpenCV frame (diag(1,-1,-1) R);
    the same function maps back."""
    return GL_FLIP[:, None] * np.asarray(R)


class SafeUnpickler(RestrictedUnpickler):
    """The restricted unpickler (`amt.safe_pickle`) with numpy arrays and plain containers only."""


def load_meta(path: str | Path) -> dict[str, Any]:
    """Read one `meta/*.pkl` safely (Python 2 pickles too); HO3DError naming the file otherwise."""
    path = Path(path)
    try:
        data = SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise HO3DError(f"{path}: meta file not found") from None
    except pickle.UnpicklingError as exc:
        raise HO3DError(f"{path}: unsafe or corrupt pickle, not loaded ({exc})") from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise HO3DError(f"{path}: unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise HO3DError(f"{path}: expected a dict of annotations, got {type(data).__name__}")
    return data


def _field(meta: dict, key: str, shape: tuple[int, ...] | None, path: Path, allow_shapes=()) -> np.ndarray | None:
    """meta[key] as finite float64 of `shape` (or one of `allow_shapes`), None when absent/None."""
    value = meta.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HO3DError(f"{path}: key {key!r} is not numeric ({exc})") from None
    if shape is not None and arr.shape != shape and arr.shape not in allow_shapes:
        raise HO3DError(f"{path}: key {key!r} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise HO3DError(f"{path}: key {key!r} contains NaN or inf")
    return arr


class HO3D:
    """One split ("train" or "evaluation") of an HO-3D v2/v3 root (`HandObjectDataset`).

    models_dir: YCB-Video models (`<name>/textured_simple.obj`; default ROOT/models).
    Samples follow docs/architecture.md "Reader sample" (OpenCV frame, DexYCB joint order)
    plus `root_joint` ((3,) metres, OpenCV, or None), `hand_box` ((4,) x0, y0, x1, y1 pixels
    or None), `mano_pose_aa` ((48,) axis-angle), `mano_trans` ((3,)) as stored (OpenGL frame)
    or None. HO-3D's MANO pose is not DexYCB's PCA `pose_m`, so `pose_m` is zeros.
    """

    splits = SPLITS
    joint_order = "ho3d"

    def __init__(self, root: str | Path, split: str, load_image: bool = True, models_dir: str | Path | None = None):
        self.root = Path(root).expanduser().resolve()
        self.split = split
        self.load_image = load_image
        if split not in SPLITS:
            raise HO3DError(f"unknown HO-3D split {split!r}; expected one of {list(SPLITS)}")
        list_file = self.root / f"{split}.txt"
        if not list_file.is_file():
            raise HO3DError(f"{list_file}: file not found (is {self.root} an HO-3D root?)")
        self.names: list[str] = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        for n, name in enumerate(self.names, start=1):
            if name.count("/") != 1:
                raise HO3DError(f"{list_file}:{n}: expected SEQUENCE/FRAME, got {name!r}")
        self.models_dir = Path(models_dir) if models_dir is not None else self.root / "models"
        self.version = self._detect_version()
        self._K: dict[int, np.ndarray] = {}

    def _detect_version(self) -> str:
        if not self.names:
            return "v2"
        seq, frame = self.names[0].split("/")
        rgb = self.root / self.split / seq / "rgb"
        if (rgb / f"{frame}.jpg").is_file():
            return "v3"
        if (rgb / f"{frame}.png").is_file():
            return "v2"
        raise HO3DError(f"{rgb / frame}.png|.jpg: colour image of the first sample not found")

    def __len__(self) -> int:
        return len(self.names)

    def _paths(self, i: int) -> tuple[str, str, Path, Path]:
        seq, frame = self.names[i].split("/")
        folder = self.root / self.split / seq
        ext = ".jpg" if self.version == "v3" else ".png"
        return seq, frame, folder / "rgb" / f"{frame}{ext}", folder / "meta" / f"{frame}.pkl"

    def sample_intrinsics(self, i: int) -> np.ndarray:
        """(3, 3) float32 `camMat` of sample i (its meta pickle is read once)."""
        if i not in self._K:
            path = self._paths(i)[3]
            K = _field(load_meta(path), "camMat", (3, 3), path)
            if K is None:
                raise HO3DError(f"{path}: key 'camMat' missing")
            self._K[i] = K.astype(np.float32)
        return self._K[i].copy()

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"HO-3D {self.split}: index {i} out of range for {len(self)} samples")
        i = int(i % len(self))
        seq, frame, color_file, meta_file = self._paths(i)
        meta = load_meta(meta_file)
        K = _field(meta, "camMat", (3, 3), meta_file)
        if K is None:
            raise HO3DError(f"{meta_file}: key 'camMat' missing")
        joints = _field(meta, "handJoints3D", (21, 3), meta_file, allow_shapes=((3,), (1, 3)))
        hand_valid = joints is not None and joints.shape == (21, 3)
        joint_3d = -np.ones((21, 3), np.float32)
        joint_2d = -np.ones((21, 2), np.float32)
        root_joint = None
        if hand_valid:
            cv = opengl_to_opencv(joints)[list(MANOPTH_TO_DEXYCB)]
            uvw = cv @ K.T
            joint_3d, joint_2d = cv.astype(np.float32), (uvw[:, :2] / uvw[:, 2:]).astype(np.float32)
            root_joint = joint_3d[0].copy()
        elif joints is not None:
            root_joint = opengl_to_opencv(joints.reshape(3)).astype(np.float32)
        box = _field(meta, "handBoundingBox", (4,), meta_file)
        ycb_ids: list[int] = []
        obj_pose = np.zeros((0, 3, 4), np.float32)
        name = meta.get("objName")
        rot, trans = _field(meta, "objRot", (3, 1), meta_file, ((3,),)), _field(meta, "objTrans", (3,), meta_file)
        if name is not None:
            if name not in CLASS_ID_BY_NAME:
                raise HO3DError(f"{meta_file}: key 'objName' is {name!r}, not a YCB object name")
            ycb_ids = [CLASS_ID_BY_NAME[name]]
            obj_pose = np.zeros((1, 3, 4), np.float32)
            if rot is not None and trans is not None:
                obj_pose[0, :, :3] = rotation_opengl_to_opencv(Rotation.from_rotvec(rot.reshape(3)).as_matrix())
                obj_pose[0, :, 3] = opengl_to_opencv(trans)
        betas = _field(meta, "handBeta", (10,), meta_file)
        pose = _field(meta, "handPose", (48,), meta_file)
        hand_trans = _field(meta, "handTrans", (3,), meta_file)
        match = _SEQUENCE.match(seq)
        sample: dict[str, Any] = {
            "index": i, "subject": match.group(1) if match else seq, "sequence": seq,
            "serial": (match.group(2) if match else "") or "0", "frame": int(frame) if frame.isdigit() else i,
            "color_file": str(color_file), "label_file": str(meta_file), "K": K.astype(np.float32),
            "ycb_ids": ycb_ids, "grasp_index": 0 if ycb_ids else -1, "obj_pose": obj_pose,
            "obj_pose_valid": np.any(obj_pose != 0, axis=(1, 2)), "pose_m": np.zeros(51, np.float32),
            "mano_betas": np.zeros(10, np.float32) if betas is None else betas.astype(np.float32),
            "mano_betas_valid": betas is not None, "joint_3d": joint_3d, "joint_2d": joint_2d,
            "hand_valid": hand_valid, "side": "right", "is_left": False, "root_joint": root_joint,
            "hand_box": None if box is None else box.astype(np.float32),
            "mano_pose_aa": None if pose is None else pose.astype(np.float32),
            "mano_trans": None if hand_trans is None else hand_trans.astype(np.float32),
        }  # fmt: skip
        if self.load_image:
            sample["color"] = read_image(color_file, HO3DError, (IMAGE_HEIGHT, IMAGE_WIDTH, 3))
        return sample
