"""The eleven AMT training losses and their weighted sum (formulas and reasons: docs/losses.md).

`AMTLoss(cfg)(outputs, batch) -> (total, terms)`: `outputs` and `batch` follow the output and
batch contracts of docs/architecture.md. Distances are in metres, angles in radians, 2D errors
in fractions of the image size. `terms` holds the unweighted value of each name in
`TERM_NAMES` (graph attached) plus detached diagnostics named "<term>/<part>".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import roma
import torch
import torch.nn.functional as F
from torch import nn

from amt.data.ycb import NUM_CLASSES
from amt.geometry.camera import project
from amt.geometry.hand_skeleton import BONES, NUM_JOINTS, PARENTS, TIP_JOINTS
from amt.geometry.hand_surface import skeleton_surface_points
from amt.geometry.rotations import rotation_about_z
from amt.training.matching import (
    NO_OBJECT,
    MatchCost,
    MatchedIndices,
    class_logit_index,
    gather_matched,
    match_objects,
    predicted_rotation,
)

TERM_NAMES: tuple[str, ...] = (
    "hand_coarse", "hand_refined", "object_position", "object_rotation", "object_class",
    "contact", "physics", "diversity", "reprojection", "kl", "temporal",
)  # fmt: skip

# Radius (m) of the largest sphere about the object origin treated as certainly solid: half the
# smallest side of each YCB mesh's axis-aligned bounding box (tests/training/test_losses.py
# recomputes it from ../shared/data/ycb_models).
OBJECT_CORE_RADIUS_M: dict[int, float] = {
    1: 0.0512, 2: 0.0359, 3: 0.0247, 4: 0.0339, 5: 0.0333, 6: 0.0168, 7: 0.0194,
    8: 0.0150, 9: 0.0301, 10: 0.0184, 11: 0.0724, 12: 0.0338, 13: 0.0275, 14: 0.0407,
    15: 0.0286, 16: 0.0450, 17: 0.0078, 18: 0.0094, 19: 0.0196, 20: 0.0182, 21: 0.0256,
}  # fmt: skip

# Nominal bone lengths (m) in `BONES` order (MANO mean-hand scale, DexYCB joints); a prediction
# is penalised outside [BONE_RANGE[0], BONE_RANGE[1]] x nominal, the spread of adult hands.
NOMINAL_BONE_LENGTH_M: tuple[float, ...] = (
    0.035, 0.032, 0.028, 0.030,  # thumb: wrist-cmc, cmc-mcp, mcp-ip, ip-tip
    0.088, 0.033, 0.022, 0.022,  # index: wrist-mcp, mcp-pip, pip-dip, dip-tip
    0.090, 0.032, 0.023, 0.024,  # middle
    0.083, 0.029, 0.023, 0.023,  # ring
    0.078, 0.022, 0.018, 0.020,  # little
)  # fmt: skip
BONE_RANGE: tuple[float, float] = (0.6, 1.5)

MIN_DEPTH_M = 0.01  # depth clamp of the reprojection term

# Largest bend (deg) between a joint's incoming and outgoing bone, per articulated joint
# (anatomical flexion range plus a 10 deg margin). Unsigned: it bounds flexion and hyperextension.
BEND_LIMIT_DEG: dict[int, float] = {
    1: 80.0, 2: 80.0, 3: 100.0,  # thumb cmc, mcp, ip
    **{j: 100.0 for j in (5, 9, 13, 17)},  # finger mcp
    **{j: 120.0 for j in (6, 10, 14, 18)},  # pip
    **{j: 100.0 for j in (7, 11, 15, 19)},  # dip
}


@dataclass
class LossConfig:
    """Term weights (seed defaults), stage multipliers and the terms' own parameters."""

    hand_coarse: float = 1.326
    hand_refined: float = 1.189
    object_position: float = 0.822
    object_rotation: float = 0.463
    object_class: float = 1.0
    contact: float = 0.359
    physics: float = 0.086
    diversity: float = 0.060
    reprojection: float = 0.553
    kl: float = 0.001
    temporal: float = 0.5
    # term name -> factor set by the training schedule (missing names: 1.0)
    stage_multipliers: dict[str, float] = field(default_factory=dict)
    # Kendall et al. 2018 learned homoscedastic uncertainty on top of the fixed weights
    dynamic_weighting: bool = False
    match: MatchCost = field(default_factory=MatchCost)
    # hand: smooth-L1 transition (m) and the relative weight of fingertips (others 1)
    smooth_l1_beta_m: float = 0.01
    tip_weight: float = 2.0
    # hand: MANO betas (inside hand_coarse) and joint confidence (inside hand_refined), whose
    # target is exp(-joint error / confidence_scale_m)
    shape_weight: float = 0.01
    confidence_weight: float = 0.1
    confidence_scale_m: float = 0.02
    # class: DETR's down-weighting of the "no object" class
    no_object_weight: float = 0.1
    # contact: focal loss (Lin et al. 2017)
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    # physics: skin-on-object friction coefficient of the friction cone
    friction_coefficient: float = 0.6
    # diversity: hinge targets on the batch standard deviation
    joint_std_target_m: float = 0.01
    object_std_target_m: float = 0.02
    # reprojection: smooth-L1 transition as a fraction of the image size
    reprojection_beta: float = 0.01

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stage_multipliers) - set(TERM_NAMES))
        if unknown:
            raise ValueError(f"LossConfig.stage_multipliers: unknown terms {unknown}; expected {TERM_NAMES}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` (same leading shape); 0 (graph kept) when the mask is empty."""
    mask = mask.to(device=values.device, dtype=torch.bool)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(values)
    # where, not multiply: labels of unlabelled samples may be anything (-1, inf, nan)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def _labels(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Labels `x` (B, ...) with the rows of unlabelled samples (`valid` (B,) False) set to 0, so
    whatever placeholder they hold (-1, nan) cannot reach a value or a gradient."""
    keep = valid.to(device=x.device, dtype=torch.bool).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, torch.zeros_like(x))


def _sequence_length(batch: Mapping) -> int:
    """`batch["sequence_length"]` as an int (1 when absent); a collated (B,) tensor must hold
    one value."""
    values = torch.as_tensor(batch.get("sequence_length", 1)).flatten().unique()
    if values.numel() != 1:
        raise ValueError(f"batch['sequence_length'] must hold one clip length, got {values.tolist()}")
    return int(values[0])


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph of `like`, so backward never breaks."""
    return like.sum() * 0.0


def joint_weights(tip_weight: float, device=None) -> torch.Tensor:
    """(21,) per-joint weights, fingertips `tip_weight`, others 1, normalised to mean 1."""
    w = torch.ones(NUM_JOINTS, device=device)
    w[list(TIP_JOINTS)] = tip_weight
    return w / w.mean()


def hand_joint_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor, beta: float
) -> torch.Tensor:
    """Smooth-L1 on absolute plus root-relative joints, per-joint weighted.

    pred, gt: (B, 21, 3) metres; valid: (B,) bool; weights: (21,). Returns metres (scalar).
    """
    def per_joint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.smooth_l1_loss(a, b, reduction="none", beta=beta).sum(-1) * weights).mean(-1)

    gt = gt.to(pred)
    absolute = per_joint(pred, gt)
    relative = per_joint(pred - pred[:, :1], gt - gt[:, :1])
    return _masked_mean(absolute + relative, valid)


def _geodesic(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """`amt.geometry.rotations.geodesic_angle` with roma's clamping below 1, so the gradient
    stays finite for predictions 180 deg away (the angle saturates 2.8e-3 rad below pi)."""
    return roma.rotmat_geodesic_distance(R1, R2, clamping=1.0 - 1e-6)


# Discrete symmetries of the YCB objects in their model frames, as rotations about the object's
# centre (checked against the meshes in tests/training/test_losses.py): 4-fold about z plus the
# flips for the square wood block, the three 180 deg flips for the foam brick, the flip about
# the long axis for the clamps (y for 19, x for 20). The bowl (13) is continuous about z
# (`CONTINUOUS_SYMMETRY_AXIS`). Every other class has the identity only.
_X180, _Y180 = torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
_Z_TURNS = rotation_about_z(torch.arange(4) * (math.pi / 2))  # 0, 90, 180, 270 deg
SYMMETRY_ROTATIONS: dict[int, torch.Tensor] = {
    16: torch.cat([_Z_TURNS, _X180 @ _Z_TURNS]),
    19: torch.stack([torch.eye(3), _Y180]),
    20: torch.stack([torch.eye(3), _X180]),
    21: torch.stack([torch.eye(3), _X180, _Y180, _Z_TURNS[2]]),
}
CONTINUOUS_SYMMETRY_AXIS: dict[int, int] = {13: 2}  # class id -> model axis (0 x, 1 y, 2 z)


def symmetry_table() -> torch.Tensor:
    """(NUM_CLASSES + 1, S, 3, 3): each class id's symmetry rotations, padded with the identity."""
    size = max(len(r) for r in SYMMETRY_ROTATIONS.values())
    table = torch.eye(3).expand(NUM_CLASSES + 1, size, 3, 3).clone()
    for class_id, rotations in SYMMETRY_ROTATIONS.items():
        table[class_id, : len(rotations)] = rotations
    return table


def rotation_error(
    pred_R: torch.Tensor, gt_R: torch.Tensor, class_id: torch.Tensor, table: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 3, 3) x2, (N,) YCB ids -> (N,) radians, symmetry-aware.

    Discrete symmetries: the smallest geodesic angle to any equivalent ground truth
    `gt_R @ S_k` (`table` = `symmetry_table()`, the identity only for asymmetric classes).
    Continuous symmetry about a model axis a: the angle between `pred_R a` and `gt_R a`, the
    exact minimum over all rotations about a.
    """
    table = symmetry_table() if table is None else table
    sym = table.to(pred_R)[class_id]  # (N, S, 3, 3)
    error = _geodesic(pred_R[:, None], gt_R[:, None] @ sym).amin(dim=1)
    for cid, axis in CONTINUOUS_SYMMETRY_AXIS.items():
        a, b = pred_R[..., axis], gt_R[..., axis]
        aligned = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))
        error = torch.where(class_id == cid, aligned, error)
    return error


def focal_bce(log_p: torch.Tensor, log_not_p: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Element-wise focal binary cross-entropy (nats) from log p and log(1 - p).

    -2 alpha_t (1 - p_t)^gamma log p_t; alpha = 0.5, gamma = 0 is the plain BCE.
    """
    positive = target.to(torch.bool)
    log_p_true = torch.where(positive, log_p, log_not_p)
    a = torch.where(positive, torch.full_like(log_p, alpha), torch.full_like(log_p, 1 - alpha))
    return -2.0 * a * (1 - log_p_true.exp()).pow(gamma) * log_p_true


def bend_angles(joints: torch.Tensor) -> torch.Tensor:
    """(B, 21, 3) -> (B, 15) radians: angle between incoming and outgoing bone at each
    articulated joint in `BEND_LIMIT_DEG` order (0 = straight)."""
    ids = list(BEND_LIMIT_DEG)
    incoming = joints[:, ids] - joints[:, [PARENTS[j] for j in ids]]
    outgoing = joints[:, [j + 1 for j in ids]] - joints[:, ids]
    cross = torch.linalg.cross(incoming, outgoing).norm(dim=-1)
    return torch.atan2(cross, (incoming * outgoing).sum(-1))


def bone_lengths(joints: torch.Tensor) -> torch.Tensor:
    """(B, 21, 3) -> (B, 20) metres, `BONES` order."""
    return (joints[:, [c for _, c in BONES]] - joints[:, [p for p, _ in BONES]]).norm(dim=-1)


def _std(x: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over dim 0, with an epsilon so a collapsed batch
    (std 0) still has a finite gradient."""
    return (x.var(dim=0, unbiased=False) + 1e-12).sqrt()


class AMTLoss(nn.Module):
    """Weighted sum of the eleven terms; see docs/losses.md.

    With `cfg.dynamic_weighting` the module owns one learnable log-variance per term
    (`log_vars`, (11,)): add `loss.parameters()` to the optimiser.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.log_vars = nn.Parameter(torch.zeros(len(TERM_NAMES))) if self.cfg.dynamic_weighting else None
        radius = [0.0] + [OBJECT_CORE_RADIUS_M[i] for i in range(1, NUM_CLASSES + 1)]  # index = YCB id
        self.register_buffer("core_radius", torch.tensor(radius), persistent=False)
        self.register_buffer("symmetries", symmetry_table(), persistent=False)
        self.register_buffer("nominal_bone", torch.tensor(NOMINAL_BONE_LENGTH_M), persistent=False)
        self.register_buffer("bend_limit", torch.tensor(list(BEND_LIMIT_DEG.values())).deg2rad(), persistent=False)

    def set_stage_multipliers(self, multipliers: Mapping[str, float]) -> None:
        """Replace the stage multipliers (term name -> factor; unnamed terms get 1)."""
        unknown = sorted(set(multipliers) - set(TERM_NAMES))
        if unknown:
            raise ValueError(f"AMTLoss.set_stage_multipliers: unknown terms {unknown}; expected {TERM_NAMES}")
        self.cfg.stage_multipliers = dict(multipliers)

    def weight(self, name: str) -> float:
        return float(getattr(self.cfg, name)) * float(self.cfg.stage_multipliers.get(name, 1.0))

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        matched = gather_matched(match_objects(outputs, batch, self.cfg.match), outputs["obj_t"].device)
        terms: dict[str, torch.Tensor] = {}
        terms["hand_coarse"] = self._hand_coarse(outputs, batch, terms)
        terms["hand_refined"] = self._hand_refined(outputs, batch, terms)
        terms["object_position"] = self._object_position(outputs, batch, matched)
        terms["object_rotation"] = self._object_rotation(outputs, batch, matched)
        terms["object_class"] = self._object_class(outputs, batch, matched)
        terms["contact"] = self._contact(outputs, batch, matched)
        terms["physics"] = self._physics(outputs, batch, matched, terms)
        terms["diversity"] = self._diversity(outputs)
        terms["reprojection"] = self._reprojection(outputs, batch)
        terms["kl"] = self._kl(outputs, batch, matched)
        terms["temporal"] = self._temporal(outputs, batch)
        total = _zero(outputs["joints_3d"])
        for i, name in enumerate(TERM_NAMES):
            w = self.weight(name)
            if w == 0.0:
                continue
            if self.log_vars is None:
                total = total + w * terms[name]
            else:
                s = self.log_vars[i]
                total = total + 0.5 * torch.exp(-s) * w * terms[name] + 0.5 * s
        return total, terms

    # hand -----------------------------------------------------------------------------------
    def _hand(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = joint_weights(self.cfg.tip_weight, pred.device)
        gt = _labels(batch["joints_3d"], batch["hand_valid"])
        return hand_joint_loss(pred, gt, batch["hand_valid"], w, self.cfg.smooth_l1_beta_m)

    def _hand_coarse(self, outputs, batch, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Coarse joints, plus the MANO betas (squared error) where `mano_valid`."""
        joints = self._hand(outputs["joints_3d_coarse"], batch)
        if "mano_shape" not in outputs or "mano_valid" not in batch:
            return joints
        gt_shape = _labels(batch["mano_shape"], batch["mano_valid"]).to(outputs["mano_shape"])
        shape_err = (outputs["mano_shape"] - gt_shape).pow(2).mean(-1)
        shape = _masked_mean(shape_err, batch["mano_valid"])
        terms["hand_coarse/shape"] = shape.detach()
        return joints + self.cfg.shape_weight * shape

    def _hand_refined(self, outputs, batch, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final joints and every refinement step, plus the joint-confidence calibration."""
        preds = [outputs["joints_3d"]] + [s["joints_3d"] for s in self._steps(outputs)]
        joints = torch.stack([self._hand(p, batch) for p in preds]).mean()
        if "joint_conf" not in outputs:
            return joints
        conf = self._confidence(outputs["joint_conf"], outputs["joints_3d"], batch)
        terms["hand_refined/confidence"] = conf.detach()
        return joints + self.cfg.confidence_weight * conf

    def _confidence(self, conf: torch.Tensor, joints: torch.Tensor, batch) -> torch.Tensor:
        """BCE of `joint_conf` (B, 21) against exp(-error / scale) of the final joints (error
        detached: the confidence learns to report the error, not to change it)."""
        err = (joints.detach() - _labels(batch["joints_3d"], batch["hand_valid"]).to(joints)).norm(dim=-1)
        target = torch.exp(-err / self.cfg.confidence_scale_m)
        bce = F.binary_cross_entropy(conf.clamp(1e-6, 1 - 1e-6), target, reduction="none").mean(-1)
        return _masked_mean(bce, batch["hand_valid"])

    @staticmethod
    def _steps(outputs) -> list[Mapping[str, torch.Tensor]]:
        return list(outputs.get("aux", {}).get("refine_steps", []))

    # objects --------------------------------------------------------------------------------
    def _object_predictions(self, outputs, key: str) -> list[torch.Tensor]:
        """The final prediction of `key` and every refinement step's (deep supervision)."""
        return [outputs[key]] + [s[key] for s in self._steps(outputs) if key in s]

    def _object_position(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        if m.batch.numel() == 0:
            return _zero(outputs["obj_t"])
        gt = batch["obj_t"][m.batch, m.slot].to(outputs["obj_t"])
        errs = [(p[m.batch, m.query] - gt).norm(dim=-1).mean() for p in self._object_predictions(outputs, "obj_t")]
        return torch.stack(errs).mean()

    def _object_rotation(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        if m.batch.numel() == 0:
            return _zero(outputs["obj_quat"])
        gt = batch["obj_R"][m.batch, m.slot].to(outputs["obj_quat"])
        cls = batch["obj_class"][m.batch, m.slot].to(m.batch.device)
        preds = [outputs] + [s for s in self._steps(outputs) if "obj_R" in s or "obj_quat" in s]
        errs = [rotation_error(predicted_rotation(p)[m.batch, m.query], gt, cls, self.symmetries).mean() for p in preds]
        return torch.stack(errs).mean()

    def _class_targets(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        logits = outputs["obj_logits"]
        target = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.int64, device=logits.device)
        target[m.batch, m.query] = class_logit_index(batch["obj_class"][m.batch, m.slot].to(logits.device))
        return target

    def _object_class(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        logits = outputs["obj_logits"]
        class_w = torch.ones(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        class_w[NO_OBJECT] = self.cfg.no_object_weight
        target = self._class_targets(outputs, batch, m)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), weight=class_w)

    # contact --------------------------------------------------------------------------------
    def _contact(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        if m.batch.numel() == 0:
            return _zero(outputs["contact_prob"]) + _zero(outputs["contact_points"])
        label = batch["contact_valid"][m.batch, m.slot].to(m.batch.device)
        logit = outputs.get("aux", {}).get("contact_logit")
        if logit is not None:  # exact log-probabilities when the model exposes its logits
            z = logit[m.batch, m.query]
            log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)
        else:
            p = outputs["contact_prob"][m.batch, m.query].clamp(1e-6, 1 - 1e-6)
            log_p, log_not_p = p.log(), (1 - p).log()
        cls = focal_bce(log_p, log_not_p, label, self.cfg.focal_gamma, self.cfg.focal_alpha).mean()
        pred_point = outputs["contact_points"][m.batch, m.query]
        gt_point = _labels(batch["contact_points"][m.batch, m.slot], label).to(pred_point)
        point_err = (pred_point - gt_point).norm(dim=-1)
        return cls + _masked_mean(point_err, label)

    # physics --------------------------------------------------------------------------------
    def _hand_points(self, outputs) -> torch.Tensor:
        points = outputs.get("aux", {}).get("hand_points")
        return points if points is not None else skeleton_surface_points(outputs["joints_3d"])

    def _physics(self, outputs, batch, m: MatchedIndices, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = {
            "penetration": self._penetration(outputs, batch, m),
            "joint_limits": torch.relu(bend_angles(outputs["joints_3d"]) - self.bend_limit).mean(),
            "bone_length": self._bone_length(outputs["joints_3d"]),
            "stability": self._stability(outputs, m),
        }
        for name, value in parts.items():
            terms[f"physics/{name}"] = value.detach()
        return sum(parts.values())

    def _penetration(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        """Mean depth (m) of hand points inside each matched object's core sphere."""
        points = self._hand_points(outputs)
        if m.batch.numel() == 0:
            return _zero(points) + _zero(outputs["obj_t"])
        centre = outputs["obj_t"][m.batch, m.query]  # (N, 3)
        radius = self.core_radius.to(points)[batch["obj_class"][m.batch, m.slot].to(m.batch.device)]
        dist = (points[m.batch] - centre[:, None]).norm(dim=-1)  # (N, P)
        return torch.relu(radius[:, None] - dist).mean()

    def _bone_length(self, joints: torch.Tensor) -> torch.Tensor:
        """Mean distance (m) of each bone length outside its human range."""
        length = bone_lengths(joints)
        lo, hi = self.nominal_bone.to(length) * BONE_RANGE[0], self.nominal_bone.to(length) * BONE_RANGE[1]
        return (torch.relu(lo - length) + torch.relu(length - hi)).mean()

    def _stability(self, outputs, m: MatchedIndices) -> torch.Tensor:
        """Friction-cone violation of each matched contact force plus the norm of the
        probability-weighted net force per sample (force units of the model's head).

        The term trains the forces only: contact probabilities and the contact geometry (the
        cone's normal, from the contact point to the object centre) are detached. Otherwise the
        cheapest way to balance forces is to predict no contact, and the normal's gradient,
        which scales with 1 / |centre - contact point|, blows up when the two are close (cut
        with two other ill-conditioned paths when the demo's gradients exploded; the
        explosions also happened while this term was switched off, so it was not the only cause).
        """
        force, prob = outputs["contact_force"], outputs["contact_prob"].detach()
        net = (prob.unsqueeze(-1) * force).sum(dim=1).norm(dim=-1).mean()
        if m.batch.numel() == 0:
            return net
        f = force[m.batch, m.query]
        inward = (outputs["obj_t"][m.batch, m.query] - outputs["contact_points"][m.batch, m.query]).detach()
        normal = inward / inward.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        f_n = (f * normal).sum(-1)
        f_t = (f - f_n.unsqueeze(-1) * normal).norm(dim=-1)
        cone = torch.relu(f_t - self.cfg.friction_coefficient * f_n)
        return net + (prob[m.batch, m.query] * cone).mean()

    # regularisers ---------------------------------------------------------------------------
    def _diversity(self, outputs) -> torch.Tensor:
        joints, obj_t = outputs["joints_3d"], outputs["obj_t"]
        if joints.shape[0] < 2:
            return _zero(joints) + _zero(obj_t)
        rel = joints - joints[:, :1]
        hand = torch.relu(self.cfg.joint_std_target_m - _std(rel[:, 1:])).mean()
        objects = torch.relu(self.cfg.object_std_target_m - _std(obj_t)).mean()
        return hand + objects

    def _reprojection(self, outputs, batch) -> torch.Tensor:
        joints = outputs["joints_3d"]
        h, w = batch["image"].shape[-2:]
        size = torch.tensor([w, h], dtype=joints.dtype, device=joints.device)
        # a hand closer than 1 cm is impossible; the clamp bounds 1/z so early predictions near
        # or behind the camera cannot blow up the gradient
        in_front = torch.cat([joints[..., :2], joints[..., 2:].clamp_min(MIN_DEPTH_M)], dim=-1)
        uv = project(in_front, batch["K"].to(joints)) / size
        gt = _labels(batch["joints_2d"], batch["hand_valid"]).to(joints) / size
        err = F.smooth_l1_loss(uv, gt, reduction="none", beta=self.cfg.reprojection_beta).sum(-1).mean(-1)
        return _masked_mean(err, batch["hand_valid"])

    def _kl(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        """KL(label marginal || predicted marginal) of the class distribution over all queries."""
        logits = outputs["obj_logits"]
        target = self._class_targets(outputs, batch, m).flatten()
        label = F.one_hot(target, logits.shape[-1]).to(logits.dtype).mean(0)  # (bincount is not deterministic on CUDA)
        log_pred = torch.logsumexp(logits.flatten(0, 1).log_softmax(-1), dim=0) - math.log(target.numel())
        present = label > 0
        return (label[present] * (label[present].log() - log_pred[present])).sum()

    def _temporal(self, outputs, batch) -> torch.Tensor:
        """Second difference (velocity for K=2) of the joints across a clip, minus the ground
        truth's where all frames involved have a hand label; metres per frame^2 (frame)."""
        joints = outputs["joints_3d"]
        k = _sequence_length(batch)
        if k < 2:
            return _zero(joints)
        if joints.shape[0] % k:
            raise ValueError(f"batch['sequence_length']={k} does not divide the batch size {joints.shape[0]}")
        pred = joints.reshape(-1, k, NUM_JOINTS, 3)
        gt = _labels(batch["joints_3d"], batch["hand_valid"]).to(joints).reshape(-1, k, NUM_JOINTS, 3)
        valid = batch["hand_valid"].reshape(-1, k)

        def diff(x: torch.Tensor) -> torch.Tensor:
            return x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2] if k >= 3 else x[:, 1:] - x[:, :-1]

        span = 3 if k >= 3 else 2
        labelled = valid.unfold(1, span, 1).all(-1)  # (N, k - span + 1)
        residual = diff(pred) - torch.where(labelled[..., None, None], diff(gt), torch.zeros_like(gt[:, : k - span + 1]))
        return residual.norm(dim=-1).mean()
