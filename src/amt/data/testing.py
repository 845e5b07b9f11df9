"""Write tiny, format-exact DexYCB trees for tests (docs/data.md "Layout").

`write_fake_dexycb` produces the real folder names (subjects, serials, YYYYMMDD_HHMMSS
sequences), `meta.yml`, calibration files (intrinsics with the `!!python/tuple` tag,
`mano.yml`, extrinsics), per-view `labels_XXXXXX.npz` whose `joint_2d` is the projection of
`joint_3d` with the colour intrinsics, small 640x480 colour JPEGs and a `models/` folder of
box meshes, so `amt.data.dexycb.DexYCB` and `amt.data.object_models.ObjectModels` can read it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
import yaml
from PIL import Image
from scipy.spatial.transform import Rotation

from amt.data.dexycb import SERIALS, SUBJECTS, load_intrinsics
from amt.data.ycb import DEXYCB_USED_IDS, YCB_CLASSES

IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640

# A rough right hand in its own frame (metres): wrist at the origin, fingers along +y.
_FINGER_BASES = np.array(
    [[0.03, 0.02, 0.0], [0.02, 0.08, 0.0], [0.0, 0.085, 0.0], [-0.02, 0.08, 0.0], [-0.035, 0.07, 0.0]]
)
_FINGER_DIRS = np.array([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [-0.1, 1.0, 0.0]])
_PHALANX_LENGTHS = np.array([0.035, 0.025, 0.02])


def _template_hand() -> np.ndarray:
    """(21, 3) metres in DexYCB joint order (wrist, then thumb, index, middle, ring, little)."""
    joints = [np.zeros(3)]
    for base, direction in zip(_FINGER_BASES, _FINGER_DIRS, strict=True):
        direction = direction / np.linalg.norm(direction)
        joints.append(base)
        for length in np.cumsum(_PHALANX_LENGTHS):
            joints.append(base + length * direction)
    return np.asarray(joints)


def _resolve(items: int | Sequence[int | str], names: tuple[str, ...], what: str) -> list[str]:
    if isinstance(items, int):
        if not 0 <= items <= len(names):
            raise ValueError(f"write_fake_dexycb: {what}={items}, expected 0..{len(names)}")
        return list(names[:items])
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"write_fake_dexycb: unknown {what} {item!r}; expected one of {names}")
            out.append(item)
        else:
            out.append(names[int(item)])
    return out


def _intrinsics_yaml(rng: np.random.Generator) -> str:
    fx, fy = (float(v) for v in 615.0 + rng.uniform(-5, 5, size=2))
    ppx, ppy = float(320.0 + rng.uniform(-12, 12)), float(240.0 + rng.uniform(-10, 10))
    extr = [1.0, 0.0, 0.0, 0.015, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    lines = [
        "color:", f"  fx: {fx!r}", f"  fy: {fy!r}", f"  ppx: {ppx!r}", f"  ppy: {ppy!r}",
        "depth:", f"  fx: {fx - 18.0!r}", f"  fy: {fx - 18.0!r}", f"  ppx: {ppx + 10.0!r}", f"  ppy: {ppy - 10.0!r}",
        "extrinsics: !!python/tuple",
    ] + [f"- {v!r}" for v in extr]  # fmt: skip
    return "\n".join(lines) + "\n"


def _write_models(models_dir: Path, class_ids: set[int], rng: np.random.Generator) -> None:
    for cid in sorted(class_ids):
        folder = models_dir / YCB_CLASSES[cid]
        if (folder / "textured_simple.obj").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        box = trimesh.creation.box(extents=rng.uniform(0.04, 0.15, size=3))
        box.export(folder / "textured_simple.obj")


def _frame_labels(
    rng: np.random.Generator,
    K: np.ndarray,
    ycb_ids: list[int],
    side: str,
    hand_valid: bool,
) -> dict[str, np.ndarray]:
    n = len(ycb_ids)
    pose_y = np.zeros((n, 3, 4), dtype=np.float32)
    pose_y[:, :, :3] = Rotation.random(n, random_state=rng.integers(2**31)).as_matrix()
    pose_y[:, :, 3] = np.stack([rng.uniform(-0.15, 0.15, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.6, 0.9, n)], 1)

    hand = _template_hand()
    if side == "left":
        hand[:, 0] *= -1
    R_hand = Rotation.random(random_state=rng.integers(2**31)).as_matrix()
    wrist = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), rng.uniform(0.5, 0.7)])
    joint_3d = (hand @ R_hand.T + wrist).astype(np.float32)[None]
    uvw = joint_3d[0].astype(np.float64) @ K.T
    joint_2d = (uvw[:, :2] / uvw[:, 2:]).astype(np.float32)[None]
    pose_m = np.concatenate([rng.normal(0, 0.5, 48), wrist - np.array([0.09, 0.005, 0.006])]).astype(np.float32)[None]

    seg = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    centres = pose_y[:, :, 3].astype(np.float64) @ K.T
    for cid, (u, v, w) in zip(ycb_ids, centres, strict=True):
        x, y = int(u / w), int(v / w)
        seg[max(y - 20, 0) : max(y + 20, 0), max(x - 20, 0) : max(x + 20, 0)] = cid
    if hand_valid:
        for x, y in joint_2d[0].astype(int):
            seg[max(y - 4, 0) : max(y + 4, 0), max(x - 4, 0) : max(x + 4, 0)] = 255
    else:
        joint_3d[:] = -1
        joint_2d[:] = -1
        pose_m[:] = 0
    return {"seg": seg, "pose_y": pose_y, "pose_m": pose_m, "joint_3d": joint_3d, "joint_2d": joint_2d}


def _jpeg(seg: np.ndarray, rng: np.random.Generator) -> bytes:
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    palette[0] = rng.integers(60, 120, size=3)
    image = Image.fromarray(seg, mode="L").convert("P")
    image.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def write_fake_dexycb(
    root: str | Path,
    subjects: int | Sequence[int | str] = 10,
    sequences_per_subject: int = 5,
    serials: int | Sequence[int | str] = 8,
    frames: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    labels: bool = True,
    images: bool = True,
    models: bool = True,
    left_every: int = 2,
    no_hand_every: int = 0,
) -> Path:
    """Write a tiny DexYCB tree under `root` and return `root` as a Path.

    subjects: how many of the 10 real subject folders (the first n, in the official order),
        or explicit subject indices / folder names. The default (all 10) makes every split
        name valid.
    sequences_per_subject: sequence folders per subject (the real dataset has 100; sequence
        i grasps `DEXYCB_USED_IDS[i // 5]`). 5 makes s0 train, val and test all non-empty.
    serials: how many of the 8 real camera serials (the first n) or explicit indices / serial
        strings. A split that selects a serial not written cannot be opened.
    frames: frames per sequence (`num_frames` in meta.yml), one int or one per sequence in
        writing order (subject-major).
    seed: all random content (poses, intrinsics, colours) derives from it.
    labels / images: write `labels_XXXXXX.npz` / `color_XXXXXX.jpg` (set both False for a
        fast index-only tree: meta.yml plus empty serial folders).
    models: write `models/<class>/textured_simple.obj` boxes for every object used.
    left_every: every n-th sequence (by position within its subject, n > 0) is a left hand;
        0 = all right.
    no_hand_every: every n-th frame of a view has no hand (`joint_3d` all -1, `pose_m` zeros);
        0 = hands everywhere.

    Labels: `joint_3d` (1,21,3) metres of a rigid hand template randomly posed 0.5-0.7 m in
    front of the camera, `joint_2d` its exact projection with the serial's colour K; `pose_y`
    random rotations, 0.6-0.9 m deep; `seg` squares with class ids and 255 for the hand.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    subject_names = _resolve(subjects, SUBJECTS, "subject")
    serial_names = _resolve(serials, SERIALS, "serial")
    n_sequences = len(subject_names) * sequences_per_subject
    frame_counts = [frames] * n_sequences if isinstance(frames, int) else list(frames)
    if len(frame_counts) != n_sequences:
        raise ValueError(f"write_fake_dexycb: frames has {len(frame_counts)} entries, expected {n_sequences}")

    intr_dir = root / "calibration" / "intrinsics"
    intr_dir.mkdir(parents=True, exist_ok=True)
    Ks = {}
    for serial in SERIALS:
        text = _intrinsics_yaml(rng)
        (intr_dir / f"{serial}_640x480.yml").write_text(text)
        Ks[serial] = load_intrinsics(intr_dir / f"{serial}_640x480.yml").astype(np.float64)

    used_ids: set[int] = set()
    seq_counter = 0
    for subject in subject_names:
        date = subject.split("-")[0]
        tag = "subject-" + subject.split("-")[-1]
        extr_name = f"{date}_{tag}"
        extr_dir = root / "calibration" / f"extrinsics_{extr_name}"
        extr_dir.mkdir(parents=True, exist_ok=True)
        extr = {
            s: [1.0, 0.0, 0.0, float(i) * 0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            for i, s in enumerate(serial_names)
        }
        (extr_dir / "extrinsics.yml").write_text(yaml.safe_dump({"extrinsics": extr, "master": serial_names[0]}))
        for side in ("right", "left"):
            mano_dir = root / "calibration" / f"mano_{date}_090000_{tag}_{side}"
            mano_dir.mkdir(parents=True, exist_ok=True)
            betas = [float(b) for b in rng.normal(0, 1, 10)]
            (mano_dir / "mano.yml").write_text(yaml.safe_dump({"betas": betas}))

        for i in range(sequences_per_subject):
            seconds = 10 * 3600 + 97 * i
            seq_name = f"{date}_{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
            seq_dir = root / subject / seq_name
            seq_dir.mkdir(parents=True, exist_ok=True)
            grasped = DEXYCB_USED_IDS[(i // 5) % len(DEXYCB_USED_IDS)]
            others = [c for c in DEXYCB_USED_IDS if c != grasped]
            ycb_ids = sorted([grasped, *rng.choice(others, size=2, replace=False).tolist()])
            used_ids.update(ycb_ids)
            side = "left" if left_every and i % left_every == left_every - 1 else "right"
            num_frames = frame_counts[seq_counter]
            seq_counter += 1
            meta = {
                "serials": list(SERIALS),
                "num_frames": int(num_frames),
                "ycb_ids": [int(c) for c in ycb_ids],
                "ycb_grasp_ind": ycb_ids.index(grasped),
                "mano_sides": [side],
                "mano_calib": [f"{date}_090000_{tag}_{side}"],
                "extrinsics": extr_name,
            }
            (seq_dir / "meta.yml").write_text(yaml.safe_dump(meta, sort_keys=False))
            for serial in serial_names:
                view_dir = seq_dir / serial
                view_dir.mkdir(exist_ok=True)
                for f in range(num_frames if (labels or images) else 0):
                    hand_valid = not (no_hand_every and f % no_hand_every == no_hand_every - 1)
                    lab = _frame_labels(rng, Ks[serial], ycb_ids, side, hand_valid)
                    if labels:
                        np.savez_compressed(view_dir / f"labels_{f:06d}.npz", **lab)
                    if images:
                        (view_dir / f"color_{f:06d}.jpg").write_bytes(_jpeg(lab["seg"], rng))
    if models:
        _write_models(root / "models", used_ids, rng)
    return root
