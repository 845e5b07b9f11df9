"""The DexYCB folder layout written by the synthetic generator (docs/data.md "Layout").

Frame budget scheme (`plan_dataset`). A frame of DexYCB is one time instant seen by all 8
cameras, so the unit of the budget is an *instant* = 8 images: N requested images become
ceil(N / 8) instants and 8 * ceil(N / 8) images (N is rounded up to a multiple of 8).
Sequences are filled in blocks of 5 (the 5 trials of one grasped object; sequence i of a
subject grasps DEXYCB_USED_IDS[i // 5], as in DexYCB), blocks taken in the order
(subject 0, block 0), (subject 2, block 0), (subjects 1, 3, 4, ..., 9, block 0), then block 1
for subjects 0..9, and so on. The official splits select sequences by their position in the
subject's sorted folder list, so 10 sequences (N >= 80) give s0_train, s0_val (subject 0,
sequence 4) and s0_test (subject 2, sequence 4) samples; N >= 400 puts sequences in every
subject (s1 splits). min(instants, 1000) sequences are made (one instant each until the
1000 DexYCB sequences exist), the instants spread evenly over them. All 10 subject folders are always created (possibly empty), so every
split can be opened.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

from amt.data.dexycb import SERIALS, SUBJECTS
from amt.data.ycb import DEXYCB_USED_IDS

VIEWS = len(SERIALS)
MAX_SEQUENCES = 1000
BLOCK = 5
_SUBJECT_ORDER = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # DexYCB's label archives carry this fixed timestamp


@dataclass(frozen=True)
class SequencePlan:
    """One sequence folder: subject index, position in the subject, name, frames, first instant."""

    subject: int
    position: int
    name: str
    num_frames: int
    first_instant: int

    @property
    def subject_name(self) -> str:
        return SUBJECTS[self.subject]

    @property
    def grasped_class(self) -> int:
        return DEXYCB_USED_IDS[self.position // BLOCK]

    @property
    def mano_calib(self) -> str:
        """Calibration name without the side; the `_synthetic_` part is how consumers recognise
        a tree written by `amt synth` (its pose_m/betas are not MANO), so keep it."""
        return f"{self.subject_name.split('-')[0]}_synthetic_subject-{self.subject + 1:02d}"


SYNTHETIC_MARKER = "SYNTHETIC"  # file in the root of `amt synth --format folder` output


def is_synthetic(root: Path) -> bool:
    """A tree written by `amt synth`: its MANO calibration folders are `mano_<date>_synthetic_...`
    (DexYCB layout), or its root holds SYNTHETIC_MARKER (plain-folder layout)."""
    return any((Path(root) / "calibration").glob("mano_*_synthetic_*")) or (Path(root) / SYNTHETIC_MARKER).is_file()


def sequence_name(subject: int, position: int) -> str:
    """YYYYMMDD_HHMMSS: the subject's capture date, sequences 75 s apart from 10:00:00."""
    date = SUBJECTS[subject].split("-")[0]
    seconds = 10 * 3600 + 75 * position
    return f"{date}_{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def plan_dataset(frames: int) -> list[SequencePlan]:
    """Sequences for a budget of `frames` images (see the module docstring for the scheme)."""
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    instants = -(-frames // VIEWS)
    n_seq = min(instants, MAX_SEQUENCES)
    slots: list[tuple[int, int]] = []
    for block in range(len(DEXYCB_USED_IDS)):
        for subject in _SUBJECT_ORDER:
            slots += [(subject, block * BLOCK + trial) for trial in range(BLOCK)]
    base, extra = divmod(instants, n_seq)
    plans, first = [], 0
    for k, (subject, position) in enumerate(slots[:n_seq]):
        n = base + (k < extra)
        plans.append(SequencePlan(subject, position, sequence_name(subject, position), n, first))
        first += n
    return plans


def intrinsics_for(serial_index: int) -> tuple[dict, dict, list[float]]:
    """Fixed per-serial calibration: colour block, depth block, depth->colour extrinsics (12)."""
    rng = np.random.default_rng(7000 + serial_index)
    fx = 616.0 + rng.uniform(-6.0, 6.0)
    color = {"fx": fx, "fy": fx + rng.uniform(-1.0, 1.0), "ppx": 308.0 + rng.uniform(-8.0, 8.0),
             "ppy": 246.0 + rng.uniform(-6.0, 6.0)}  # fmt: skip
    dfx = 597.0 + rng.uniform(-5.0, 5.0)
    depth = {"fx": dfx, "fy": dfx, "ppx": 320.0 + rng.uniform(-4.0, 4.0), "ppy": 238.0 + rng.uniform(-4.0, 4.0)}
    angles = rng.normal(0.0, 0.004, size=3)
    rot = Rotation.from_rotvec(angles).as_matrix()
    trans = np.array([0.0149, 0.0, 0.0]) + rng.normal(0.0, 1e-4, size=3)
    extr = np.hstack([rot, trans[:, None]]).ravel()
    return ({k: float(v) for k, v in color.items()}, {k: float(v) for k, v in depth.items()},
            [float(v) for v in extr])  # fmt: skip


def K_from_color(color: dict) -> np.ndarray:
    """(3, 3) float64 intrinsics from a colour block."""
    return np.array([[color["fx"], 0.0, color["ppx"]], [0.0, color["fy"], color["ppy"]], [0.0, 0.0, 1.0]])


def intrinsics_yaml(serial_index: int) -> str:
    """The `<serial>_640x480.yml` text, with DexYCB's `!!python/tuple` tag on `extrinsics`."""
    color, depth, extr = intrinsics_for(serial_index)
    lines = ["color:"] + [f"  {k}: {v!r}" for k, v in color.items()]
    lines += ["depth:"] + [f"  {k}: {v!r}" for k, v in depth.items()]
    lines += ["extrinsics: !!python/tuple"] + [f"- {v!r}" for v in extr]
    return "\n".join(lines) + "\n"


def write_calibration(root: Path, rigs: dict[str, np.ndarray], betas: dict[str, np.ndarray]) -> None:
    """calibration/intrinsics/*.yml, extrinsics_<sequence>/extrinsics.yml, mano_<calib>/mano.yml."""
    calib = root / "calibration"
    (calib / "intrinsics").mkdir(parents=True, exist_ok=True)
    for i, serial in enumerate(SERIALS):
        (calib / "intrinsics" / f"{serial}_640x480.yml").write_text(intrinsics_yaml(i))
    for name, rig in rigs.items():
        folder = calib / f"extrinsics_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        data = {"extrinsics": {s: [float(v) for v in rig[i].ravel()] for i, s in enumerate(SERIALS)}}
        data["extrinsics"]["apriltag"] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        data["master"] = SERIALS[2]
        (folder / "extrinsics.yml").write_text(yaml.safe_dump(data, default_flow_style=None, sort_keys=False))
    for name, b in betas.items():
        folder = calib / f"mano_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mano.yml").write_text(yaml.safe_dump({"betas": [float(v) for v in b]}, default_flow_style=None))


def meta_yaml(plan: SequencePlan, ycb_ids: list[int], side: str) -> str:
    """The sequence's meta.yml text."""
    meta = {
        "serials": list(SERIALS),
        "num_frames": plan.num_frames,
        "ycb_ids": [int(c) for c in ycb_ids],
        "ycb_grasp_ind": ycb_ids.index(plan.grasped_class),
        "mano_sides": [side],
        "mano_calib": [f"{plan.mano_calib}_{side}"],
        "extrinsics": plan.name,
    }
    return yaml.safe_dump(meta, default_flow_style=None, sort_keys=False)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with a fixed member timestamp, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
