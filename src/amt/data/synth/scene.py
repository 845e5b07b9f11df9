"""Scene sampling: camera rigs, object placement on a table and plausible hand grasps.

World frame: z up, the table is the plane z = 0, the workspace is centred on the origin;
metres throughout. A grasp is found by closing the procedural hand's fingers until they
touch the object (signed distance of the finger capsules), see `synthesize_grasp`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from amt.data.synth.objects import ObjectModel
from amt.geometry import hand_model as hm

log = logging.getLogger(__name__)

N_SERIALS = 8
CAMERA_DISTANCE = (0.4, 0.9)  # metres, camera centre to its look-at point (DexYCB-like)
MIN_CAMERA_DISTANCE = 0.3  # metres, closest a hand joint may come to a camera
AXIS_SAMPLES = 6  # points per capsule axis in the contact search
FLEX_STEPS = 28
FLEX_SWEEP = 2.4  # radians of the coupled flexion sweep
BISECTIONS = 6
GRASP_CANDIDATES = 12
# Relative speed of the (base, middle, distal) joints while a finger closes.
CLOSING_WEIGHTS = np.array([[0.8, 1.0, 1.0]] + [[1.0, 1.0, 0.75]] * 4)


@dataclass
class HandState:
    """A posed hand: shape + articulation + rigid placement (hand frame -> world)."""

    shape: hm.HandShape
    pose: hm.HandPose
    rotation: np.ndarray  # (3, 3) proper rotation
    translation: np.ndarray  # (3,) wrist position, metres
    side_sign: float  # +1 right, -1 left (hand-frame geometry mirrored in x)

    def local_joints(self) -> np.ndarray:
        """(21, 3) joints in the (side-mirrored) hand frame."""
        return hm.forward_kinematics(self.shape, self.pose) * [self.side_sign, 1.0, 1.0]

    def joints(self) -> np.ndarray:
        """(21, 3) world joints, metres."""
        return self.local_joints() @ self.rotation.T + self.translation

    def mesh_world(self) -> hm.HandMesh:
        """Hand triangle soup in world coordinates."""
        mesh = hm.hand_mesh(self.shape, self.local_joints(), self.side_sign)
        mesh.positions = mesh.positions @ self.rotation.T + self.translation
        mesh.normals = mesh.normals @ self.rotation.T
        return mesh


@dataclass
class Scene:
    """One time instant of a sequence, world frame."""

    class_ids: list[int]  # ycb_ids order
    obj_rotations: np.ndarray  # (n, 3, 3) model -> world
    obj_translations: np.ndarray  # (n, 3)
    grasp_index: int
    kind: str  # "grasp", "approach" or "empty" (no hand)
    hand: HandState | None
    contact: dict = field(default_factory=dict)  # grasp diagnostics (see synthesize_grasp)


def look_at(centre: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """(3, 3) camera -> world rotation (OpenCV axes) for a camera at `centre` looking at `target`."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z], axis=1)
    return r @ Rotation.from_rotvec([0.0, 0.0, roll]).as_matrix()


def sample_rig(rng: np.random.Generator) -> np.ndarray:
    """(8, 3, 4) camera -> world extrinsics [R | t] around the workspace, one per serial."""
    out = np.zeros((N_SERIALS, 3, 4))
    for i in range(N_SERIALS):
        azimuth = 2 * np.pi * i / N_SERIALS + rng.uniform(-0.3, 0.3)
        elevation = rng.uniform(0.35, 1.2)
        distance = rng.uniform(*CAMERA_DISTANCE)
        target = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.04, 0.12)])
        centre = target + distance * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        out[i, :, :3] = look_at(centre, target, rng.uniform(-0.15, 0.15))
        out[i, :, 3] = centre
    return out


def place_objects(models: list[ObjectModel], grasp_index: int, lifted: bool, rng: np.random.Generator):
    """Rest the objects on the table without overlap; optionally lift and tilt the grasped one.

    Returns rotations (n, 3, 3) and translations (n, 3), model -> world. The YCB scans (and
    the primitives) rest on z = 0 in their model frame, so a yaw keeps them standing.
    """
    n = len(models)
    rots, centres, radii = [], [], []
    for m in models:
        yaw = Rotation.from_rotvec([0.0, 0.0, rng.uniform(-np.pi, np.pi)]).as_matrix()
        xy = (m.mesh.bounds[0, :2] + m.mesh.bounds[1, :2]) / 2
        rots.append(yaw)
        centres.append(xy)
        radii.append(float(np.max(np.linalg.norm(m.mesh.vertices[:, :2] - xy, axis=1))))
    spread = 0.15
    positions = np.zeros((n, 2))
    for i in range(n):
        for attempt in range(400):
            cand = rng.uniform(-spread, spread, size=2)
            if all(np.linalg.norm(cand - positions[j]) > radii[i] + radii[j] + 0.01 for j in range(i)):
                break
            if attempt % 50 == 49:
                spread *= 1.2
        positions[i] = cand
    rotations = np.stack(rots)
    translations = np.zeros((n, 3))
    for i in range(n):
        local_centre = np.array([*centres[i], 0.0])
        translations[i] = np.array([*positions[i], 0.0]) - rotations[i] @ local_centre
    if lifted:
        g = grasp_index
        tilt = Rotation.from_rotvec(rng.normal(size=3) * 0.35).as_matrix()
        pivot = rotations[g] @ np.array([*centres[g], models[g].mesh.bounds[1, 2] / 2]) + translations[g]
        rotations[g] = tilt @ rotations[g]
        translations[g] = pivot - rotations[g] @ np.array([*centres[g], models[g].mesh.bounds[1, 2] / 2])
        lowest = (models[g].mesh.vertices @ rotations[g].T + translations[g])[:, 2].min()
        translations[g, 2] += -lowest + rng.uniform(0.03, 0.15)
    return rotations, translations


def _axis_points(chain: np.ndarray, shape: hm.HandShape, finger: int, first_segment: int):
    """Capsule axis samples of segments >= first_segment of a batch of finger chains.

    chain: (S, 4, 3) joints. Returns points (S, K, 3), radii (K,), segment id (K,).
    """
    t = np.linspace(0.0, 1.0, AXIS_SAMPLES)
    pts, rad, seg = [], [], []
    for k in range(first_segment, 3):
        a, b = chain[:, k], chain[:, k + 1]
        r0 = shape.radii[finger, k]
        r1 = shape.radii[finger, k + 1] if k < 2 else 0.85 * shape.radii[finger, 2]
        if k == 2:
            d = b - a
            b = b - d / np.linalg.norm(d, axis=-1, keepdims=True) * r1
        pts.append(a[:, None] + t[None, :, None] * (b - a)[:, None])
        rad.append(r0 + t * (r1 - r0))
        seg.append(np.full(AXIS_SAMPLES, k))
    return np.concatenate(pts, axis=1), np.concatenate(rad), np.concatenate(seg)


class GraspContext:
    """Hand placement relative to one object (model frame) and its clearance queries."""

    def __init__(
        self, model: ObjectModel, shape: hm.HandShape, side_sign: float, rotation: np.ndarray, translation: np.ndarray
    ) -> None:
        self.model, self.shape, self.side = model, shape, side_sign
        self.rotation, self.translation = rotation, translation  # hand -> object model frame

    def to_object(self, points: np.ndarray) -> np.ndarray:
        return (points * [self.side, 1.0, 1.0]) @ self.rotation.T + self.translation

    def clearance(self, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Signed gap (metres) between hand-frame spheres and the object surface, negative = overlap."""
        return self.model.signed_distance(self.to_object(points)) - radii

    def hand_clearance(self, pose: hm.HandPose) -> float:
        """Smallest gap over the palm and all finger segments."""
        joints = hm.forward_kinematics(self.shape, pose)
        palm = hm.palm_spheres(self.shape, joints)
        gaps = [self.clearance(palm, np.full(len(palm), self.shape.palm_half_thickness)).min()]
        for f in range(5):
            pts, rad, _ = _axis_points(joints[None, 1 + 4 * f : 5 + 4 * f], self.shape, f, 0)
            gaps.append(self.clearance(pts[0], rad).min())
        return float(min(gaps))

    def close_finger(self, pose: hm.HandPose, finger: int) -> tuple[bool, float]:
        """Flex `finger` in place until its distal segment touches the object (or the limits).

        Segments that touch first stay put and the joints beyond them keep closing (a wrap).
        Returns (distal contact reached, final smallest gap of the finger in metres).
        """
        lo, hi = hm.flexion_limits()
        lo, hi = lo[finger], hi[finger]
        flex = pose.flexion[finger].copy()
        first = 0
        while first < 3:
            weights = CLOSING_WEIGHTS[finger].copy()
            weights[:first] = 0.0

            def at(t: np.ndarray) -> np.ndarray:
                return np.clip(flex[None] + t[:, None] * weights[None] * FLEX_SWEEP, lo, hi)  # noqa: B023

            ts = np.linspace(0.0, 1.0, FLEX_STEPS)
            chains = hm.finger_chain(self.shape, finger, at(ts), pose.abduction[finger])
            pts, rad, seg = _axis_points(chains, self.shape, finger, first)
            gaps = self.clearance(pts, rad)  # (S, K)
            hit = np.nonzero(gaps.min(axis=1) <= 0.0)[0]
            if len(hit) == 0:
                flex = at(ts[-1:])[0]
                break
            if hit[0] == 0:  # already touching: nothing can move
                break
            t_free, t_hit = ts[hit[0] - 1], ts[hit[0]]
            for _ in range(BISECTIONS):
                mid = 0.5 * (t_free + t_hit)
                chain = hm.finger_chain(self.shape, finger, at(np.array([mid])), pose.abduction[finger])
                p, r, _ = _axis_points(chain, self.shape, finger, first)
                if self.clearance(p, r).min() <= 0.0:
                    t_hit = mid
                else:
                    t_free = mid
            chain = hm.finger_chain(self.shape, finger, at(np.array([t_hit])), pose.abduction[finger])
            p, r, s = _axis_points(chain, self.shape, finger, first)
            touching = int(s[np.argmin(self.clearance(p, r)[0])])
            flex = at(np.array([t_free]))[0]
            first = touching + 1
        pose.flexion[finger] = flex
        chain = hm.finger_chain(self.shape, finger, flex[None], pose.abduction[finger])
        p, r, s = _axis_points(chain, self.shape, finger, 0)
        gaps = self.clearance(p[0], r)
        distal_gap = float(gaps[s == 2].min())
        return distal_gap < 1e-3, float(gaps.min())


def _preshape(rng: np.random.Generator, open_: bool) -> hm.HandPose:
    flex = np.zeros((5, 3))
    if open_:
        flex[:] = rng.uniform(0.0, 0.6, size=(5, 3))
    else:
        flex[1:] = [0.1, 0.1, 0.05]
        flex[0] = [0.1, 0.1, 0.1]
        flex += rng.uniform(-0.05, 0.05, size=(5, 3))
    abduction = rng.uniform(-0.08, 0.08, size=5)
    abduction[0] = rng.uniform(0.1, 0.5)
    abduction[1] -= 0.05
    abduction[4] += 0.08
    return hm.HandPose(flex, abduction).clipped()


def _candidate_frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hand -> model rotation with the palm (+z) facing into the surface along -normal."""
    z = -normal / np.linalg.norm(normal)
    helper = rng.normal(size=3)
    y = helper - z * helper.dot(z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z], axis=1)


def _place_at_gap(ctx: GraspContext, pose: hm.HandPose, normal: np.ndarray, gap: float) -> float:
    """Slide the hand along the surface normal until its smallest clearance equals `gap`."""
    current = ctx.hand_clearance(pose)
    for _ in range(6):
        ctx.translation = ctx.translation + normal * (gap - current)
        current = ctx.hand_clearance(pose)
        if abs(current - gap) < 2e-4:
            break
    return current


def _world_ok(hand: HandState, others: list[tuple[ObjectModel, np.ndarray, np.ndarray]], cameras: np.ndarray) -> bool:
    """Hand above the table, forearm not through it, no overlap with the non-grasped objects,
    at least MIN_CAMERA_DISTANCE from every camera centre (cameras: (C, 3) world)."""
    joints = hand.joints()
    if joints[:, 2].min() < 0.012:
        return False
    if len(cameras) and np.linalg.norm(joints[None] - cameras[:, None], axis=-1).min() < MIN_CAMERA_DISTANCE:
        return False
    forearm = hand.translation - 0.15 * hand.rotation[:, 1]
    if forearm[2] < 0.03:
        return False
    pts = np.concatenate([joints, hand.mesh_world().positions[::7]])
    return all(model.signed_distance((pts - trans) @ rot).min() >= -0.001 for model, rot, trans in others)


def synthesize_grasp(
    model: ObjectModel,
    rotation: np.ndarray,
    translation: np.ndarray,
    shape: hm.HandShape,
    side_sign: float,
    kind: str,
    others: list,
    rng: np.random.Generator,
    cameras: np.ndarray = np.zeros((0, 3)),  # noqa: B008 -- read-only default
):
    """A hand grasping (or approaching) the object posed at (rotation, translation) in the world.

    Grasp: try surface points with outward normals; put the palm a few millimetres off the
    surface facing it, close each finger until its distal segment touches (the thumb first),
    keep the candidate with the most touching fingers (accepting at once with the thumb plus
    two fingers). Approach: the same placement, 3-10 cm back along the normal, fingers
    loosely open, no contact. Returns (HandState, diagnostics dict) or (None, {}) if no
    candidate keeps the hand clear of the table and the other objects.
    """
    best, best_score, best_diag = None, -1.0, {}
    up_local = rotation.T @ np.array([0.0, 0.0, 1.0])
    for _ in range(GRASP_CANDIDATES):
        i = rng.integers(len(model.surface_points))
        p, n = model.surface_points[i], model.surface_normals[i]
        if n.dot(up_local) < -0.3:
            continue
        pose = _preshape(rng, open_=kind == "approach")
        r = _candidate_frame(n, rng)
        ctx = GraspContext(model, shape, side_sign, r, np.zeros(3))
        palm_centre = hm.palm_spheres(shape, hm.forward_kinematics(shape, pose)).mean(axis=0)
        ctx.translation = p + n * (shape.palm_half_thickness + 0.01) - ctx.to_object(palm_centre[None])[0]
        if kind == "approach":
            _place_at_gap(ctx, pose, n, rng.uniform(0.03, 0.10))
            contacts, gaps = np.zeros(5, bool), np.full(5, np.nan)
        else:
            _place_at_gap(ctx, pose, n, rng.uniform(0.001, 0.012))
            pre = HandState(shape, pose, rotation @ ctx.rotation, rotation @ ctx.translation + translation, side_sign)
            if not _world_ok(pre, others, cameras):  # cheap reject before closing the fingers
                continue
            results = [ctx.close_finger(pose, f) for f in range(5)]
            contacts = np.array([c for c, _ in results])
            gaps = np.array([g for _, g in results])
        hand = HandState(shape, pose, rotation @ ctx.rotation, rotation @ ctx.translation + translation, side_sign)
        if not _world_ok(hand, others, cameras):
            continue
        score = contacts.sum() + 0.5 * contacts[0]
        if score > best_score:
            best, best_score = hand, score
            best_diag = {"finger_contact": contacts, "finger_gap": gaps, "min_gap": ctx.hand_clearance(pose)}
        if kind == "approach" or (contacts[0] and contacts.sum() >= 3):
            break
    return best, best_diag


def sample_scene(
    models: list[ObjectModel],
    class_ids: list[int],
    grasp_index: int,
    kind: str,
    shape: hm.HandShape,
    side_sign: float,
    rng: np.random.Generator,
    cameras: np.ndarray,
) -> Scene:
    """Objects on the table plus a hand of the given kind ("grasp", "approach", "empty").

    cameras: (C, 3) camera centres (world) the hand must keep MIN_CAMERA_DISTANCE from.
    """
    rotations, translations = place_objects(models, grasp_index, lifted=kind == "grasp", rng=rng)
    hand, diag = None, {}
    if kind != "empty":
        others = [(models[i], rotations[i], translations[i]) for i in range(len(models)) if i != grasp_index]
        for _ in range(4):
            hand, diag = synthesize_grasp(
                models[grasp_index],
                rotations[grasp_index],
                translations[grasp_index],
                shape,
                side_sign,
                kind,
                others,
                rng,
                cameras,
            )
            if hand is not None:
                break
            rotations, translations = place_objects(models, grasp_index, lifted=kind == "grasp", rng=rng)
        if hand is None:
            log.warning(
                "no collision-free %s found for class %d; writing a frame without a hand", kind, class_ids[grasp_index]
            )
            kind = "empty"
    return Scene(class_ids, rotations, translations, grasp_index, kind, hand, diag)
