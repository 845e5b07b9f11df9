"""A procedural articulated hand with the DexYCB 21-joint skeleton (numpy, metres).

Used by the synthetic generator when no MANO model is supplied. It is not MANO: the pose
is a set of per-joint flexion/abduction angles, the surface is tapered capsules along the
20 bones plus a palm slab (the convex hull of the wrist, the thumb base and the MCPs,
thickened along the palm normal).

Hand frame (right hand): origin at the wrist, +y from the wrist towards the middle-finger
MCP, +z out of the palm (palmar side), +x towards the thumb. Flexion is a rotation about a
bone's local +x axis, which curls the finger towards the palm; abduction is a rotation about
the local +z axis. A left hand is the mirror image (x -> -x) of the right hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from amt.geometry.hand_skeleton import FINGER_JOINTS, FINGERS, NUM_JOINTS

# Adult reference hand (metres): bone lengths base -> tip per finger, the tip segment ending
# on the fingertip surface (DexYCB's tip joint is a fingertip vertex).
BONE_LENGTHS: dict[str, tuple[float, float, float]] = {
    "thumb": (0.038, 0.032, 0.027),
    "index": (0.039, 0.023, 0.023),
    "middle": (0.043, 0.027, 0.024),
    "ring": (0.040, 0.026, 0.023),
    "little": (0.032, 0.019, 0.021),
}
# Capsule radii at the base of each segment (metres); the tip end uses 85 % of the last one.
BONE_RADII: dict[str, tuple[float, float, float]] = {
    "thumb": (0.0120, 0.0100, 0.0090),
    "index": (0.0095, 0.0085, 0.0076),
    "middle": (0.0096, 0.0088, 0.0078),
    "ring": (0.0091, 0.0082, 0.0073),
    "little": (0.0081, 0.0073, 0.0066),
}
# Base joint (thumb CMC / finger MCP) positions in the hand frame, metres.
BASE_POSITIONS: dict[str, tuple[float, float, float]] = {
    "thumb": (0.021, 0.027, 0.008),
    "index": (0.024, 0.083, 0.0),
    "middle": (0.002, 0.087, 0.0),
    "ring": (-0.018, 0.081, 0.0),
    "little": (-0.034, 0.070, 0.0),
}
# Rest direction of the first bone; the thumb points radially, distally and a little palmar.
REST_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "thumb": (0.70, 0.70, 0.25),
    "index": (0.08, 1.0, 0.0),
    "middle": (0.0, 1.0, 0.0),
    "ring": (-0.08, 1.0, 0.0),
    "little": (-0.18, 1.0, 0.0),
}
# Direction the thumb curls towards when it flexes (opposition: across and in front of the palm).
THUMB_CURL_TOWARDS = (-0.75, 0.15, 0.65)
PALM_HALF_THICKNESS = 0.013  # metres
WRIST_HALF_WIDTH = 0.027  # metres

# Joint limits in radians: flexion per segment (base, middle, distal) and base abduction.
FLEXION_LIMITS: dict[str, tuple[tuple[float, float], ...]] = {
    "thumb": ((-0.2, 1.0), (-0.1, 1.0), (-0.2, 1.4)),
    "index": ((-0.35, 1.57), (0.0, 1.92), (0.0, 1.40)),
    "middle": ((-0.35, 1.57), (0.0, 1.92), (0.0, 1.40)),
    "ring": ((-0.35, 1.57), (0.0, 1.92), (0.0, 1.40)),
    "little": ((-0.35, 1.57), (0.0, 1.92), (0.0, 1.40)),
}
ABDUCTION_LIMITS: dict[str, tuple[float, float]] = {
    "thumb": (-0.35, 0.6),
    "index": (-0.3, 0.3),
    "middle": (-0.2, 0.2),
    "ring": (-0.25, 0.25),
    "little": (-0.35, 0.35),
}


def _frame_from_y_and_z(y: np.ndarray, z_hint: np.ndarray) -> np.ndarray:
    """Rotation whose columns are (x, y, z) with y along `y` and z the part of `z_hint` orthogonal to y."""
    y = y / np.linalg.norm(y)
    z = z_hint - y * np.dot(z_hint, y)
    z = z / np.linalg.norm(z)
    return np.stack([np.cross(y, z), y, z], axis=1)


def rot_x(angle: np.ndarray) -> np.ndarray:
    """(...,) radians -> (..., 3, 3) rotation about +x."""
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(*np.shape(angle), 3, 3)


def rot_z(angle: np.ndarray) -> np.ndarray:
    """(...,) radians -> (..., 3, 3) rotation about +z."""
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*np.shape(angle), 3, 3)


@dataclass
class HandShape:
    """Per-subject hand geometry (metres), right-handed in the hand frame.

    lengths/radii: (5, 3) per finger (thumb..little) and segment; bases: (5, 3) base joints;
    base_frames: (5, 3, 3) rest frame of each finger's first bone (columns x, y, z).
    """

    lengths: np.ndarray
    radii: np.ndarray
    bases: np.ndarray
    base_frames: np.ndarray
    palm_half_thickness: float
    wrist_half_width: float

    @classmethod
    def sample(cls, rng: np.random.Generator | None = None, scale: float | None = None) -> HandShape:
        """A human-like hand: global scale in [0.85, 1.15] and +-5 % per-bone variation."""
        rng = rng if rng is not None else np.random.default_rng(0)
        s = float(rng.uniform(0.85, 1.15)) if scale is None else scale
        jitter = lambda shape: rng.uniform(0.95, 1.05, size=shape)
        lengths = np.array([BONE_LENGTHS[f] for f in FINGERS]) * s * jitter((5, 3))
        radii = np.array([BONE_RADII[f] for f in FINGERS]) * s * jitter((5, 1))
        bases = np.array([BASE_POSITIONS[f] for f in FINGERS]) * s
        frames = []
        for f in FINGERS:
            hint = np.array(THUMB_CURL_TOWARDS) if f == "thumb" else np.array([0.0, 0.0, 1.0])
            frames.append(_frame_from_y_and_z(np.array(REST_DIRECTIONS[f]), hint))
        return cls(lengths, radii, bases, np.stack(frames), PALM_HALF_THICKNESS * s, WRIST_HALF_WIDTH * s)


@dataclass
class HandPose:
    """Articulation in radians: flexion (5, 3) per finger segment, abduction (5,) per finger."""

    flexion: np.ndarray = field(default_factory=lambda: np.zeros((5, 3)))
    abduction: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def clipped(self) -> HandPose:
        """The pose with every angle clamped to the joint limits."""
        lo, hi = flexion_limits()
        alo = np.array([ABDUCTION_LIMITS[f][0] for f in FINGERS])
        ahi = np.array([ABDUCTION_LIMITS[f][1] for f in FINGERS])
        return HandPose(np.clip(self.flexion, lo, hi), np.clip(self.abduction, alo, ahi))


def flexion_limits() -> tuple[np.ndarray, np.ndarray]:
    """(5, 3) lower and upper flexion limits, radians."""
    lo = np.array([[lim[0] for lim in FLEXION_LIMITS[f]] for f in FINGERS])
    hi = np.array([[lim[1] for lim in FLEXION_LIMITS[f]] for f in FINGERS])
    return lo, hi


def finger_chain(shape: HandShape, finger: int, flexion: np.ndarray, abduction: float) -> np.ndarray:
    """Joint positions of one finger for a batch of flexions.

    flexion: (S, 3) radians. Returns (S, 4, 3): base, two middle joints and the tip, hand frame.
    """
    flexion = np.atleast_2d(flexion)
    r = shape.base_frames[finger] @ rot_z(np.asarray(abduction))  # (3, 3)
    out = np.empty((flexion.shape[0], 4, 3))
    out[:, 0] = shape.bases[finger]
    rot = np.broadcast_to(r, (flexion.shape[0], 3, 3))
    for k in range(3):
        rot = rot @ rot_x(flexion[:, k])
        out[:, k + 1] = out[:, k] + rot[:, :, 1] * shape.lengths[finger, k]
    return out


def forward_kinematics(shape: HandShape, pose: HandPose) -> np.ndarray:
    """(21, 3) joints in the hand frame (metres), DexYCB order, right hand."""
    joints = np.zeros((NUM_JOINTS, 3))
    for i, name in enumerate(FINGERS):
        joints[list(FINGER_JOINTS[name])] = finger_chain(shape, i, pose.flexion[i][None], pose.abduction[i])[0]
    return joints


def segments(shape: HandShape, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Capsule segments of the fingers: starts (15, 3), ends (15, 3), radii at start and end (15,).

    The distal capsule stops one radius short of the tip joint so the tip lies on its surface.
    Order: finger-major (thumb..little), segment-minor. Works for joints of either side.
    """
    starts, ends, r0, r1 = [], [], [], []
    for i, name in enumerate(FINGERS):
        idx = FINGER_JOINTS[name]
        for k in range(3):
            a, b = joints[idx[k]], joints[idx[k + 1]]
            rb = shape.radii[i, k + 1] if k < 2 else 0.85 * shape.radii[i, 2]
            if k == 2:
                d = b - a
                b = b - d / max(np.linalg.norm(d), 1e-9) * rb
            starts.append(a)
            ends.append(b)
            r0.append(shape.radii[i, k])
            r1.append(rb)
    return np.array(starts), np.array(ends), np.array(r0), np.array(r1)


def palm_points(shape: HandShape, joints: np.ndarray, side_sign: float = 1.0) -> np.ndarray:
    """(12, 3) corners of the palm slab: wrist (2), thumb base and the 4 MCPs, each +- thickness.

    joints: (21, 3) in the hand frame. side_sign: +1 right hand, -1 left (mirrored x).
    """
    wrist = joints[0]
    outline = np.array(
        [
            wrist + [side_sign * shape.wrist_half_width, 0.0, 0.0],
            wrist - [side_sign * shape.wrist_half_width, 0.0, 0.0],
            joints[1],
            joints[5],
            joints[9] + [0.0, 0.004, 0.0],
            joints[13],
            joints[17] - [side_sign * 0.006, 0.0, 0.0],
        ]
    )
    up = np.array([0.0, 0.0, shape.palm_half_thickness])
    return np.concatenate([outline + up, outline - up])


def palm_spheres(shape: HandShape, joints: np.ndarray, side_sign: float = 1.0, n: int = 4) -> np.ndarray:
    """(n*n, 3) centres of spheres of radius `palm_half_thickness` filling the palm slab."""
    w0 = joints[0] + [side_sign * shape.wrist_half_width * 0.8, 0.0, 0.0]
    w1 = joints[0] - [side_sign * shape.wrist_half_width * 0.8, 0.0, 0.0]
    m0, m1 = joints[5], joints[17]
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0.15, 1.0, n))
    u, v = u.ravel()[:, None], v.ravel()[:, None]
    return (1 - v) * ((1 - u) * w0 + u * w1) + v * ((1 - u) * m0 + u * m1)


class CapsuleTemplate:
    """A unit sphere split into two hemispheres, stretched between a capsule's end points."""

    def __init__(self, rings: int = 4, sectors: int = 10) -> None:
        lat = np.linspace(0.0, np.pi / 2, rings + 1)[1:]  # excludes the equator, ends at a pole
        phi = np.linspace(0.0, 2 * np.pi, sectors, endpoint=False)
        upper = [np.stack([np.cos(phi), np.sin(phi), np.zeros(sectors)], axis=1)]
        for a in lat[:-1]:
            upper.append(np.stack([np.cos(a) * np.cos(phi), np.cos(a) * np.sin(phi), np.full(sectors, np.sin(a))], 1))
        upper_v = np.concatenate(upper + [np.array([[0.0, 0.0, 1.0]])])
        lower_v = upper_v * [1.0, 1.0, -1.0]
        n_ring = len(upper) * sectors
        self.unit = np.concatenate([lower_v, upper_v])  # directions (= normals), (V, 3)
        self.is_upper = np.arange(len(self.unit)) >= len(lower_v)
        faces = []
        for _half, off in ((lower_v, 0), (upper_v, len(lower_v))):
            flip = off == 0
            for ring in range(len(upper) - 1):
                for s in range(sectors):
                    a, b = off + ring * sectors + s, off + ring * sectors + (s + 1) % sectors
                    c, d = a + sectors, b + sectors
                    faces += [(a, c, b), (b, c, d)] if not flip else [(a, b, c), (b, d, c)]
            pole = off + n_ring
            for s in range(sectors):
                a, b = off + (len(upper) - 1) * sectors + s, off + (len(upper) - 1) * sectors + (s + 1) % sectors
                faces.append((a, pole, b) if not flip else (a, b, pole))
        off = len(lower_v)
        for s in range(sectors):  # the cylinder band between the two equators
            a, b = s, (s + 1) % sectors
            faces += [(a, b, off + a), (b, off + b, off + a)]
        self.faces = np.array(faces, dtype=np.int64)

    def instantiate(self, starts: np.ndarray, ends: np.ndarray, r0: np.ndarray, r1: np.ndarray):
        """Vertices (S*V, 3), normals (S*V, 3), faces (S*F, 3) of S capsules."""
        axis = ends - starts
        length = np.linalg.norm(axis, axis=1, keepdims=True)
        zdir = axis / np.maximum(length, 1e-9)
        helper = np.where(np.abs(zdir[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        xdir = np.cross(helper, zdir)
        xdir /= np.linalg.norm(xdir, axis=1, keepdims=True)
        ydir = np.cross(zdir, xdir)
        basis = np.stack([xdir, ydir, zdir], axis=2)  # (S, 3, 3) columns
        normals = np.einsum("sij,vj->svi", basis, self.unit)
        radius = np.where(self.is_upper[None, :], r1[:, None], r0[:, None])  # (S, V)
        centre = np.where(self.is_upper[None, :, None], ends[:, None], starts[:, None])
        verts = centre + normals * radius[..., None]
        n_v = len(self.unit)
        faces = self.faces[None] + (np.arange(len(starts)) * n_v)[:, None, None]
        return verts.reshape(-1, 3), normals.reshape(-1, 3), faces.reshape(-1, 3)


_TEMPLATE = CapsuleTemplate()


@dataclass
class HandMesh:
    """Triangle soup of a posed hand: positions and normals (F*3, 3) metres, one row per corner."""

    positions: np.ndarray
    normals: np.ndarray
    finger_of_vertex: np.ndarray  # (F*3,) finger index 0..4, -1 for the palm
    segment_of_vertex: np.ndarray  # (F*3,) segment 0..2 within the finger, -1 for the palm


def hand_mesh(shape: HandShape, joints: np.ndarray, side_sign: float = 1.0) -> HandMesh:
    """Triangle soup of the capsule fingers and the palm slab for (21, 3) joints (hand frame)."""
    s, e, r0, r1 = segments(shape, joints)
    verts, normals, faces = _TEMPLATE.instantiate(s, e, r0, r1)
    per_caps = len(_TEMPLATE.faces)
    finger = np.repeat(np.arange(15) // 3, per_caps)
    segment = np.repeat(np.arange(15) % 3, per_caps)
    palm = palm_points(shape, joints, side_sign)
    hull = ConvexHull(palm)
    p_faces = hull.simplices
    p_pos = palm[p_faces]  # (Fp, 3, 3)
    fn = np.cross(p_pos[:, 1] - p_pos[:, 0], p_pos[:, 2] - p_pos[:, 0])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    positions = np.concatenate([verts[faces].reshape(-1, 3), p_pos.reshape(-1, 3)])
    norms = np.concatenate([normals[faces].reshape(-1, 3), np.repeat(fn, 3, axis=0)])
    finger_v = np.concatenate([np.repeat(finger, 3), np.full(len(p_faces) * 3, -1)])
    segment_v = np.concatenate([np.repeat(segment, 3), np.full(len(p_faces) * 3, -1)])
    return HandMesh(positions, norms, finger_v, segment_v)


def mirror_x(points: np.ndarray) -> np.ndarray:
    """Mirror hand-frame points (..., 3) across the x = 0 plane (right <-> left hand)."""
    return points * np.array([-1.0, 1.0, 1.0])


def wrist_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) hand-frame -> camera rotation -> (3,) axis-angle (radians)."""
    return Rotation.from_matrix(rotation).as_rotvec()
