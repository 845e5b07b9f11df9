"""Write tiny, format-exact HO-3D v2 / v3 trees for tests (docs/datasets.md "HO-3D").

`write_fake_ho3d` produces the official names (`train.txt`, `evaluation.txt`,
`{train,evaluation}/<SEQUENCE>/{rgb,seg,depth,meta}/<FRAME>`), 640x480 images (`rgb/*.png` in
v2, `*.jpg` in v3), and per-frame meta pickles written with protocol 2 (as HO-3D's Python 2
files) holding the official keys and shapes in HO-3D's OpenGL frame and joint order: full
annotations in `train`, only the root joint and the hand box in `evaluation`. It returns what
it wrote so a test can check the reader against it independently.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from amt.data.ycb import CLASS_ID_BY_NAME

# A few official sequence names and the object each shows.
TRAIN_SEQUENCES: dict[str, str] = {
    "ABF10": "021_bleach_cleanser",
    "MC1": "003_cracker_box",
    "SM2": "006_mustard_bottle",
}
EVALUATION_SEQUENCES: dict[str, str] = {"SM1": "006_mustard_bottle", "MPM10": "010_potted_meat_can"}
HEIGHT, WIDTH = 480, 640


def _hand_gl(rng: np.random.Generator) -> np.ndarray:
    """(21, 3) metres, HO-3D order, OpenGL frame (z < 0): a random plausible skeleton."""
    wrist = np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06), -rng.uniform(0.45, 0.65)])
    offsets = rng.normal(0.0, 0.04, size=(21, 3))
    offsets[0] = 0.0
    return wrist + offsets


def _meta(rng: np.random.Generator, obj_name: str, evaluation: bool) -> dict[str, Any]:
    fx, fy = rng.uniform(610, 620, size=2)
    cam = np.array([[fx, 0.0, rng.uniform(310, 330)], [0.0, fy, rng.uniform(230, 250)], [0.0, 0.0, 1.0]])
    joints = _hand_gl(rng)
    obj_rot = Rotation.random(random_state=int(rng.integers(2**31))).as_rotvec().reshape(3, 1)
    obj_trans = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), -rng.uniform(0.5, 0.7)])
    corners = rng.normal(0, 0.05, size=(8, 3)) + obj_trans
    meta: dict[str, Any] = {
        "camMat": cam,
        "objName": obj_name,
        "objLabel": CLASS_ID_BY_NAME[obj_name],
        "objRot": obj_rot,
        "objTrans": obj_trans,
        "objCorners3D": corners,
        "objCorners3DRest": corners - obj_trans,
    }
    if evaluation:
        uvw = (joints * [1.0, -1.0, -1.0]) @ cam.T
        uv = uvw[:, :2] / uvw[:, 2:]
        meta.update(
            handJoints3D=joints[0].copy(),
            handBoundingBox=np.concatenate([uv.min(0) - 10, uv.max(0) + 10]),
            handPose=None,
            handTrans=None,
            handBeta=None,
        )
    else:
        meta.update(
            handJoints3D=joints,
            handPose=rng.normal(0, 0.3, size=48),
            handTrans=joints[0] + rng.normal(0, 0.01, size=3),
            handBeta=rng.normal(0, 1, size=10),
        )
    return meta


def write_fake_ho3d(
    root: str | Path,
    version: str = "v2",
    frames: int = 2,
    seed: int = 0,
    train: dict[str, str] | None = None,
    evaluation: dict[str, str] | None = None,
    models: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Write an HO-3D `version` ("v2" | "v3") tree under `root` with `frames` frames per sequence.

    train / evaluation: {sequence name: YCB object name} (defaults: a few official ones).
    models: write `models/<name>/textured_simple.obj` boxes for the objects used.
    Returns {split: {"SEQ/FRAME": meta dict as pickled}}.
    """
    if version not in ("v2", "v3"):
        raise ValueError(f"version must be 'v2' or 'v3', got {version!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, dict[str, Any]]] = {}
    ext = "png" if version == "v2" else "jpg"
    used: set[str] = set()
    for split, sequences in (("train", train or TRAIN_SEQUENCES), ("evaluation", evaluation or EVALUATION_SEQUENCES)):
        written[split] = {}
        for seq, obj in sequences.items():
            used.add(obj)
            folder = root / split / seq
            for sub in ("rgb", "depth", "meta") + (("seg",) if split == "train" else ()):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                name = f"{f:04d}"
                meta = _meta(rng, obj, split == "evaluation")
                with open(folder / "meta" / f"{name}.pkl", "wb") as fh:
                    pickle.dump(meta, fh, protocol=2)
                colour = rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
                image = Image.fromarray(colour).resize((WIDTH, HEIGHT), Image.NEAREST)
                image.save(folder / "rgb" / f"{name}.{ext}")
                Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(folder / "depth" / f"{name}.png")
                if split == "train":
                    Image.fromarray(np.zeros((HEIGHT // 2, WIDTH // 2, 3), np.uint8)).save(
                        folder / "seg" / f"{name}.jpg"
                    )
                written[split][f"{seq}/{name}"] = meta
        (root / f"{split}.txt").write_text("".join(f"{k}\n" for k in written[split]))
    if models:
        for obj in sorted(used):
            (root / "models" / obj).mkdir(parents=True, exist_ok=True)
            trimesh.creation.box(extents=rng.uniform(0.05, 0.15, size=3)).export(
                root / "models" / obj / "textured_simple.obj"
            )
    return written


class _RunsCode:
    """Pickles to a call of `os.system`: what a malicious meta file would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        # only the name os.system is pickled; nothing runs when the file is written
        return (os.system, (self.command,))


def write_malicious_meta(path: str | Path, command: str = "touch /tmp/amt_pwned") -> Path:
    """Overwrite a meta pickle with one whose loading would run `command` (for refusal tests)."""
    path = Path(path)
    path.write_bytes(pickle.dumps({"camMat": np.eye(3), "payload": _RunsCode(command)}, protocol=2))
    return path
