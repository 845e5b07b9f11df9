"""Synthetic hand-object frames written in the exact DexYCB layout (`amt synth`).

`generate(out, frames, seed)` writes `out/<subject>/<sequence>/{meta.yml, pose.npz,
<serial>/color_XXXXXX.jpg, <serial>/labels_XXXXXX.npz}`, `out/calibration/...` and
`out/models/<name>/textured_simple.obj`, readable by `amt.data.dexycb.DexYCB` unchanged.
The folder/frame-budget scheme is documented in `amt.data.synth.layout`.

Each instant of a sequence is one world scene (2-4 YCB objects on a table, one of them
grasped or approached by a hand, ~3 % without a hand) seen by the sequence's 8 cameras
(0.4-0.9 m away), each view with its own lighting and procedural background. The colour
image and the segmentation come from the same rasterisation (`amt.data.synth.render`).

Labels follow docs/data.md "Label files". With `mano=` the hand is a MANO fit and `pose_m` is MANO
as DexYCB stores it. With the default procedural hand (no MANO model) `pose_m` is NOT MANO: `[0:3]` is the axis-angle of the hand frame in the
camera frame (`amt.geometry.hand_model` defines the frame; for left hands the frame of the
x-mirrored geometry), `[3:48]` are zeros and `[48:51]` the wrist position (metres), and the
`mano.yml` betas are zeros. `pose_m` is all zeros only when there is no hand.

Determinism: every random draw comes from `numpy.random.default_rng([seed, stream, index])`
(per sequence, per subject, per instant, per view), so the files are identical for a given
seed whatever the number of workers.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from amt.data.dexycb import SERIALS, SUBJECTS
from amt.data.synth import layout
from amt.data.synth.mano_hand import ManoFitter, mano_path_for, pose_m_in_camera, vertex_normals
from amt.data.synth.objects import ObjectLibrary, find_models_dir, write_models
from amt.data.synth.render import Background, DrawItem, Light, Renderer
from amt.data.synth.scene import Scene, sample_rig, sample_scene
from amt.data.ycb import DEXYCB_USED_IDS, SEG_HAND
from amt.geometry import hand_model as hm

log = logging.getLogger(__name__)

EMPTY_FRACTION = 0.03
APPROACH_FRACTION = 0.25
JPEG_QUALITY = 90
# Streams of the per-purpose random generators (see the module docstring).
_SEQ, _SUBJECT, _INSTANT, _VIEW = 1, 2, 3, 4


@dataclass(frozen=True)
class SequenceSetup:
    """Everything random about a sequence, drawn once from (seed, sequence number)."""

    plan: layout.SequencePlan
    ycb_ids: list[int]
    side: str
    rig: np.ndarray  # (8, 3, 4) camera -> world
    kinds: tuple[str, ...]  # per frame: "grasp" | "approach" | "empty"


@dataclass(frozen=True)
class InstantJob:
    """One instant to synthesise: 8 views written under `out`."""

    out: str
    seed: int
    instant: int  # global instant number (RNG key)
    frame: int  # frame index within the sequence
    setup: SequenceSetup
    shape: hm.HandShape
    skin: tuple[float, float, float]
    mano: str | None = None  # MANO pickle folder/file; None = procedural hand
    betas: tuple[float, ...] = (0.0,) * 10  # the subject's MANO shape


def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def setup_sequence(plan: layout.SequencePlan, number: int, seed: int, left_fraction: float) -> SequenceSetup:
    """Objects (the grasped one plus 1-3 others, sorted by id), hand side, camera rig, frame kinds."""
    rng = _rng(seed, _SEQ, number)
    others = [c for c in DEXYCB_USED_IDS if c != plan.grasped_class]
    extra = rng.choice(others, size=int(rng.integers(1, 4)), replace=False)
    ycb_ids = sorted([plan.grasped_class, *map(int, extra)])
    side = "left" if rng.uniform() < left_fraction else "right"
    rig = sample_rig(rng)
    u = rng.uniform(size=plan.num_frames)
    kinds = tuple("empty" if x < EMPTY_FRACTION else "approach" if x < EMPTY_FRACTION + APPROACH_FRACTION
                  else "grasp" for x in u)  # fmt: skip
    return SequenceSetup(plan, ycb_ids, side, rig, kinds)


def subject_hand(seed: int, subject: int) -> tuple[hm.HandShape, tuple[float, float, float]]:
    """The subject's hand geometry and skin albedo."""
    rng = _rng(seed, _SUBJECT, subject)
    shape = hm.HandShape.sample(rng)
    tone = rng.uniform(0.0, 1.0)
    skin = np.array([0.92, 0.72, 0.60]) * (1 - tone) + np.array([0.45, 0.30, 0.22]) * tone
    return shape, tuple(float(c) for c in np.clip(skin + rng.normal(0, 0.03, 3), 0, 1))


def subject_betas(seed: int, subject: int) -> tuple[float, ...]:
    """The subject's MANO shape (10,), used only with --mano."""
    return tuple(float(b) for b in _rng(seed, _SUBJECT, subject, 1).normal(0.0, 0.8, size=10))


class _Worker:
    """Per-process state: the object library and the renderer (created on first use)."""

    library: ObjectLibrary | None = None
    renderer: Renderer | None = None
    fitters: dict = {}  # (mano path, side) -> ManoFitter

    @classmethod
    def init(cls, models_dir: str | None, preloaded: dict | None = None) -> None:
        cls.library = ObjectLibrary(Path(models_dir) if models_dir else None)
        cls.library.add(preloaded or {})
        if cls.renderer is not None:
            cls.renderer.clear_meshes()

    @classmethod
    def init_child(cls, models_dir: str | None, preloaded: dict) -> None:
        """Worker start: never reuse a GL context inherited from the parent through fork."""
        cls.renderer = None
        cls.init(models_dir, preloaded)

    @classmethod
    def get_fitter(cls, mano: str, side: str):
        key = (mano, side)
        if key not in cls.fitters:
            cls.fitters[key] = ManoFitter(mano_path_for(side, Path(mano)), side)
        return cls.fitters[key]

    @classmethod
    def get_renderer(cls) -> Renderer:
        if cls.renderer is None:
            cls.renderer = Renderer()
        return cls.renderer

    @classmethod
    def ensure_uploaded(cls, class_ids: list[int]) -> None:
        renderer = cls.get_renderer()
        for c in class_ids:
            if c not in renderer.meshes:
                model = cls.library.get(c)
                pos, nrm, uv, faces = model.render_arrays()
                renderer.add_mesh(c, pos, nrm, uv, model.texture, faces)


def _homogeneous(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def _light(rng: np.random.Generator) -> Light:
    d = np.array([rng.uniform(-1, 1), rng.uniform(-1.0, 0.3), -rng.uniform(0.3, 1.0)])
    tint = rng.uniform(0.85, 1.0, size=3)
    return Light(d / np.linalg.norm(d), tint * rng.uniform(0.5, 1.0), float(rng.uniform(0.25, 0.55)),
                 float(rng.uniform(0.0, 0.4)))  # fmt: skip


def _background(rng: np.random.Generator, texture_keys: list[int]) -> Background:
    angle = rng.uniform(0, 2 * np.pi)
    stripe = rng.uniform(0, 2 * np.pi)
    use_tex = bool(texture_keys) and rng.uniform() < 0.3
    size = rng.uniform(0.15, 0.6)
    return Background(
        colors=rng.uniform(0.05, 0.95, size=(3, 3)),
        grad_dir=np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(0.0, 1.5),
        noise_scale=float(rng.uniform(2.0, 40.0)),
        noise_amp=float(rng.uniform(0.0, 1.0)),
        stripe_freq=float(rng.uniform(2.0, 30.0)),
        stripe_amp=float(rng.uniform(0.0, 0.15) if rng.uniform() < 0.4 else 0.0),
        stripe_dir=np.array([np.cos(stripe), np.sin(stripe)]),
        seed=float(rng.uniform(0, 100)),
        texture_key=int(rng.choice(texture_keys)) if use_tex else None,
        texture_amp=float(rng.uniform(0.5, 1.0)),
        texture_rect=np.array([*rng.uniform(0, 1 - size, size=2), size, size * 0.75]),
    )


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def view_labels(scene: Scene, extrinsic: np.ndarray, K: np.ndarray, fit=None) -> dict[str, np.ndarray]:
    """labels_XXXXXX.npz arrays (without seg) of one camera: pose_y, pose_m, joint_3d, joint_2d.

    fit: a `mano_hand.ManoFit` when the hand is MANO (joints and pose_m then come from it).
    """
    r_cw = extrinsic[:, :3].T
    t_cw = -r_cw @ extrinsic[:, 3]
    pose_y = np.zeros((len(scene.class_ids), 3, 4), dtype=np.float32)
    for i in range(len(scene.class_ids)):
        pose_y[i, :, :3] = r_cw @ scene.obj_rotations[i]
        pose_y[i, :, 3] = r_cw @ scene.obj_translations[i] + t_cw
    pose_m = np.zeros((1, 51), dtype=np.float32)
    joint_3d = -np.ones((1, 21, 3), dtype=np.float32)
    joint_2d = -np.ones((1, 21, 2), dtype=np.float32)
    if scene.hand is not None:
        joints = scene.hand.joints() if fit is None else fit.joints
        joint_3d[0] = joints @ r_cw.T + t_cw
        joint_2d[0] = _project(joint_3d[0].astype(np.float64), K)
        if fit is None:
            pose_m[0, :3] = hm.wrist_axis_angle(r_cw @ scene.hand.rotation)
            pose_m[0, 48:] = r_cw @ scene.hand.translation + t_cw
        else:
            pose_m[0] = pose_m_in_camera(fit, r_cw, t_cw)
    return {"pose_y": pose_y, "pose_m": pose_m, "joint_3d": joint_3d, "joint_2d": joint_2d}


def render_view(
    scene: Scene,
    extrinsic: np.ndarray,
    K: np.ndarray,
    rng: np.random.Generator,
    skin: tuple[float, float, float],
    background_textures: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """RGB (480, 640, 3) uint8 and seg (480, 640) uint8 of a scene from one camera."""
    _Worker.ensure_uploaded(scene.class_ids)
    renderer = _Worker.get_renderer()
    world_to_cam = np.linalg.inv(_homogeneous(extrinsic[:, :3], extrinsic[:, 3]))
    items = [DrawItem(c, world_to_cam @ _homogeneous(scene.obj_rotations[i], scene.obj_translations[i]), c)
             for i, c in enumerate(scene.class_ids)]  # fmt: skip
    if scene.hand is not None:
        items.append(DrawItem("hand", world_to_cam, SEG_HAND, np.array(skin)))
    return renderer.render(K, items, _light(rng), _background(rng, background_textures))


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def run_instant(job: InstantJob) -> dict:
    """Synthesise, render and write the 8 views of one instant; returns world poses + diagnostics."""
    setup = job.setup
    rng = _rng(job.seed, _INSTANT, job.instant)
    models = [_Worker.library.get(c) for c in setup.ycb_ids]
    kind = setup.kinds[job.frame]
    side_sign = 1.0 if setup.side == "right" else -1.0
    grasp_index = setup.ycb_ids.index(setup.plan.grasped_class)
    scene = sample_scene(models, setup.ycb_ids, grasp_index, kind, job.shape, side_sign, rng, setup.rig[:, :, 3])
    fit = None
    if scene.hand is not None and job.mano is not None:
        fit = _Worker.get_fitter(job.mano, setup.side).fit(scene.hand.joints(), np.array(job.betas))
        normals = vertex_normals(fit.vertices, fit.faces)
        _Worker.get_renderer().set_hand(fit.vertices[fit.faces].reshape(-1, 3), normals[fit.faces].reshape(-1, 3))
    elif scene.hand is not None:
        _Worker.get_renderer().set_hand(*_hand_arrays(scene))
    seq_dir = Path(job.out) / setup.plan.subject_name / setup.plan.name
    for v, serial in enumerate(SERIALS):
        K = layout.K_from_color(layout.intrinsics_for(v)[0])
        view_rng = _rng(job.seed, _VIEW, job.instant, v)
        rgb, seg = render_view(scene, setup.rig[v], K, view_rng, job.skin, setup.ycb_ids)
        labels = {"seg": seg, **view_labels(scene, setup.rig[v], K, fit)}
        folder = seq_dir / serial
        (folder / f"color_{job.frame:06d}.jpg").write_bytes(_encode_jpeg(rgb))
        layout.save_npz(folder / f"labels_{job.frame:06d}.npz", labels)
    return {
        "instant": job.instant,
        "frame": job.frame,
        "kind": scene.kind,
        "obj_rotations": scene.obj_rotations,
        "obj_translations": scene.obj_translations,
        "hand_rotation": None if scene.hand is None else scene.hand.rotation,
        "hand_translation": None if scene.hand is None else scene.hand.translation,
        "contact": scene.contact,
        "mano_fit_error_mm": None if fit is None else fit.error_mm,
        "hand_world": None if fit is None else {"orient": fit.global_orient, "pca": fit.pca, "transl": fit.transl},
    }


def _hand_arrays(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    mesh = scene.hand.mesh_world()
    return mesh.positions, mesh.normals


def _write_pose_npz(seq_dir: Path, results: list[dict], n_obj: int) -> None:
    """pose.npz in the world frame: pose_y (F, n, 7) quaternion xyzw + t; pose_m (F, 1, 51)."""
    results = sorted(results, key=lambda r: r["frame"])
    pose_y = np.zeros((len(results), n_obj, 7), dtype=np.float32)
    pose_m = np.zeros((len(results), 1, 51), dtype=np.float32)
    for f, r in enumerate(results):
        pose_y[f, :, :4] = Rotation.from_matrix(r["obj_rotations"]).as_quat()
        pose_y[f, :, 4:] = r["obj_translations"]
        if r["hand_world"] is not None:
            pose_m[f, 0, :3], pose_m[f, 0, 3:48], pose_m[f, 0, 48:] = r["hand_world"].values()
        elif r["hand_rotation"] is not None:
            pose_m[f, 0, :3] = Rotation.from_matrix(r["hand_rotation"]).as_rotvec()
            pose_m[f, 0, 48:] = r["hand_translation"]
    layout.save_npz(seq_dir / "pose.npz", {"pose_y": pose_y, "pose_m": pose_m})


@dataclass
class GenerateResult:
    """What `generate` wrote: root, images, instants, seconds, and per-instant diagnostics."""

    root: Path
    images: int
    instants: int
    seconds: float
    instants_info: list[dict]

    @property
    def frames_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def generate(
    out: str | os.PathLike,
    frames: int,
    seed: int = 0,
    models: str | os.PathLike | None = None,
    mano: str | os.PathLike | None = None,
    left_fraction: float = 0.0,
    workers: int = 1,
    primitives: bool = False,
) -> GenerateResult:
    """Write a synthetic DexYCB-format dataset of `frames` images (rounded up to a multiple of 8).

    out: dataset root (created). models: a DexYCB-style `models/` folder; default: found by
    `find_models_dir` ($AMT_YCB_MODELS, then `shared/data/ycb_models` above the cwd or the
    package); `primitives=True` (or nothing found) uses textured stand-in primitives.
    mano: MANO_RIGHT.pkl (MANO_LEFT.pkl beside it for left hands) or their folder: the
    hand is then a MANO fit to the procedural grasp (`amt.data.synth.mano_hand`), pose_m is
    genuine MANO and mano.yml holds the subject's random betas; default: procedural hand.
    left_fraction: share of sequences with a left hand. workers: processes (1 = in-process).
    """
    if mano is not None and not Path(mano).exists():
        raise FileNotFoundError(f"--mano {mano}: no such file or folder (MANO_RIGHT.pkl / MANO_LEFT.pkl)")
    if not 0.0 <= left_fraction <= 1.0:
        raise ValueError(f"left_fraction must be in [0, 1], got {left_fraction}")
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    models_dir = None if primitives else find_models_dir(models)
    log.info("synth: %s objects, %d requested images -> %s", models_dir or "primitive", frames, root)
    plans = layout.plan_dataset(frames)
    setups = [setup_sequence(p, k, seed, left_fraction) for k, p in enumerate(plans)]
    hands = {s: subject_hand(seed, s) for s in {p.subject for p in plans}}
    for subject in SUBJECTS:
        (root / subject).mkdir(exist_ok=True)
    jobs = []
    for setup in setups:
        seq_dir = root / setup.plan.subject_name / setup.plan.name
        for serial in SERIALS:
            (seq_dir / serial).mkdir(parents=True, exist_ok=True)
        (seq_dir / "meta.yml").write_text(layout.meta_yaml(setup.plan, setup.ycb_ids, setup.side))
        shape, skin = hands[setup.plan.subject]
        betas = subject_betas(seed, setup.plan.subject) if mano is not None else (0.0,) * 10
        jobs += [InstantJob(str(root), seed, setup.plan.first_instant + f, f, setup, shape, skin,
                            None if mano is None else str(mano), betas)
                 for f in range(setup.plan.num_frames)]  # fmt: skip
    layout.write_calibration(
        root, {s.plan.name: s.rig for s in setups},
        {f"{s.plan.mano_calib}_{s.side}": np.array(subject_betas(seed, s.plan.subject) if mano is not None
                                                  else np.zeros(10)) for s in setups},
    )  # fmt: skip
    results = _run_jobs(jobs, models_dir, workers, sorted({c for s in setups for c in s.ycb_ids}))
    by_seq: dict[str, list[dict]] = {}
    for job, res in zip(jobs, results, strict=True):
        by_seq.setdefault(job.setup.plan.name + job.setup.plan.subject_name, []).append(res)
    for setup in setups:
        seq_dir = root / setup.plan.subject_name / setup.plan.name
        _write_pose_npz(seq_dir, by_seq[setup.plan.name + setup.plan.subject_name], len(setup.ycb_ids))
    write_models(models_dir, sorted({c for s in setups for c in s.ycb_ids}), root / "models")
    seconds = time.perf_counter() - start
    result = GenerateResult(root, len(jobs) * layout.VIEWS, len(jobs), seconds, results)
    log.info(
        "synth: wrote %d images (%d instants) in %.1f s (%.1f images/s)",
        result.images,
        result.instants,
        seconds,
        result.frames_per_second,
    )
    return result


def _run_jobs(jobs: list[InstantJob], models_dir: Path | None, workers: int, class_ids: list[int]) -> list[dict]:
    """Run the instants in this process (workers <= 1) or a spawn pool; results in job order.

    The object models are loaded once here and handed to the workers; each worker keeps its
    own GL context and uploads each mesh once.
    """
    arg = str(models_dir) if models_dir else None
    if _Worker.library is None or _Worker.library.models_dir != models_dir:
        _Worker.init(arg)
    preloaded = _Worker.library.preload(class_ids)
    if workers <= 1 or len(jobs) <= 1:
        return [run_instant(job) for job in jobs]
    # fork is cheap (no re-import, models shared) but must not copy a live GL context.
    ctx = mp.get_context("fork" if _Worker.renderer is None and "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_Worker.init_child, initargs=(arg, preloaded)) as pool:
        return pool.map(run_instant, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
