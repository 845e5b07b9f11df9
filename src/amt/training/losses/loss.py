"""The eleven AMT training losses and their weighted sum (formulas and reasons: docs/losses.md).

`AMTLoss(cfg)(outputs, batch) -> (total, terms)`: `outputs` and `batch` follow the output and
batch contracts of docs/architecture.md. Distances are in metres, angles in radians, 2D errors
in fractions of the image size. `terms` holds the unweighted value of each name in
`TERM_NAMES` (graph attached) plus detached diagnostics named "<term>/<part>".
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from amt.data.object_tables import core_radius_table
from amt.data.symmetry import ObjectSymmetries, symmetric_pose_error
from amt.geometry.camera import project
from amt.geometry.hand_skeleton import BEND_LIMIT_DEG, BONE_RANGE, NOMINAL_BONE_LENGTH_M, NUM_JOINTS
from amt.geometry.hand_surface import skeleton_surface_points
from amt.models.matching import (
    NO_OBJECT,
    MatchedIndices,
    class_logit_index,
    gather_matched,
    match_objects,
    predicted_rotation,
)
from amt.training.losses.config import TERM_NAMES, LossConfig
from amt.training.losses.distributed_stats import gather_batch, logsumexp_over_ranks, mean_over_ranks, sum_over_ranks
from amt.training.losses.terms import (
    batch_std,
    bend_angles,
    bone_lengths,
    focal_bce,
    graph_zero,
    hand_joint_loss,
    heatmap_kl,
    joint_weights,
    masked_mean,
    nan_safe_bce,
    sequence_length,
    valid_labels,
)

MIN_DEPTH_M = 0.01  # depth clamp of every projection in the loss


def project_in_front(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(..., 3) metres -> (..., 2) pixels, with depth clamped to >= MIN_DEPTH_M: nothing the loss
    projects (a hand, an object centre) is closer than 1 cm, and the clamp bounds 1/z so early
    predictions near or behind the camera cannot blow up the gradient."""
    return project(torch.cat([points[..., :2], points[..., 2:].clamp_min(MIN_DEPTH_M)], dim=-1), K)


class AMTLoss(nn.Module):
    """Weighted sum of the eleven terms; see docs/losses.md.

    With `cfg.dynamic_weighting` the module owns one learnable log-variance per term
    (`log_vars`, (11,)): add `loss.parameters()` to the optimiser. symmetries: the objects'
    symmetry rotations, centres and axes (`ObjectSymmetries.from_models`, or `ObjectTables.symmetries`; None: the
    fallback `from_tables()`, rotations about the model origins), used by the matching and the
    object terms alike. core_radius: (C+1,) metres per YCB id, the penetration term's solid core
    (`amt.data.object_tables.ObjectTables` of the dataset; None: the reference `core_radius_table()`).

    Non-finite outputs never raise: the total is then non-finite and the training step marks
    the step bad (`amt.training.step`).
    """

    def __init__(
        self,
        cfg: LossConfig | None = None,
        symmetries: ObjectSymmetries | None = None,
        core_radius: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # a copy: the schedule's stage multipliers change the module's config, never the caller's
        self.cfg = copy.deepcopy(cfg) if cfg is not None else LossConfig()
        self.log_vars = nn.Parameter(torch.zeros(len(TERM_NAMES))) if self.cfg.dynamic_weighting else None
        radius = core_radius_table() if core_radius is None else core_radius.detach().float().clone()
        self.register_buffer("core_radius", radius, persistent=False)  # index = YCB id
        sym = symmetries or ObjectSymmetries.from_tables()
        self.symmetry_source = sym.source
        self.register_buffer("sym_rotations", sym.rotations, persistent=False)
        self.register_buffer("sym_centres", sym.centres, persistent=False)
        self.register_buffer("sym_axes", sym.axes, persistent=False)
        self.register_buffer("nominal_bone", torch.tensor(NOMINAL_BONE_LENGTH_M), persistent=False)
        self.register_buffer("bend_limit", torch.tensor(list(BEND_LIMIT_DEG.values())).deg2rad(), persistent=False)

    def set_stage_multipliers(self, multipliers: Mapping[str, float]) -> None:
        """Replace the stage multipliers (term name -> factor; unnamed terms get 1)."""
        unknown = sorted(set(multipliers) - set(TERM_NAMES))
        if unknown:
            raise ValueError(f"AMTLoss.set_stage_multipliers: unknown terms {unknown}; expected {TERM_NAMES}")
        self.cfg.stage_multipliers = dict(multipliers)

    def learned_log_variances(self) -> dict[str, float] | None:
        """Term name -> its learned log-variance s_i (weight 0.5 exp(-s_i) w_i); None without
        dynamic weighting. One host read."""
        if self.log_vars is None:
            return None
        return dict(zip(TERM_NAMES, self.log_vars.detach().tolist(), strict=True))

    @property
    def symmetries(self) -> ObjectSymmetries:
        """The symmetry tables on the module's device."""
        return ObjectSymmetries(self.sym_rotations, self.sym_centres, self.sym_axes, self.symmetry_source)

    def weight(self, name: str) -> float:
        return float(getattr(self.cfg, name)) * float(self.cfg.stage_multipliers.get(name, 1.0))

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = self._observable_objects(batch)
        matches = match_objects(outputs, batch, self.cfg.match, self.symmetries)
        matched = gather_matched(matches, outputs["obj_t"].device)
        pairs = self._pair_count(matched)
        terms: dict[str, torch.Tensor] = {}
        terms["hand_coarse"] = self._hand_coarse(outputs, batch, terms)
        terms["hand_refined"] = self._hand_refined(outputs, batch, terms)
        terms["object_position"], terms["object_rotation"] = self._object_pose(outputs, batch, matched, pairs)
        terms["object_class"] = self._object_class(outputs, batch, matched, pairs, terms)
        terms["contact"] = self._contact(outputs, batch, matched, pairs)
        terms["physics"] = self._physics(outputs, batch, matched, pairs, terms)
        terms["diversity"] = self._diversity(outputs)
        terms["reprojection"] = self._reprojection(outputs, batch, matched, pairs, terms)
        terms["kl"] = self._kl(outputs, batch, matched)
        terms["temporal"] = self._temporal(outputs, batch)
        total = graph_zero(outputs["joints_3d"])
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

    @staticmethod
    def _pair_count(m: MatchedIndices) -> torch.Tensor:
        """The count the means over matched pairs divide by: N pairs, or in a distributed step the
        mean N over the ranks (DETR's num_boxes), so that DDP's average of the ranks' gradients
        equals the single-process gradient of the global batch even when the ranks hold different
        numbers of objects. Computed once per step on every rank (a collective must not depend on
        a rank's data)."""
        return mean_over_ranks(torch.tensor(float(m.batch.numel()), device=m.batch.device))

    def _observable_objects(self, batch: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The batch with `obj_valid` limited to the objects the crop can see: in front of the
        camera, with the centre projecting inside the crop or at most `object_margin` of its side
        outside it (None: every valid object). An object wholly out of view cannot be located
        from the crop; supervising it would only teach the data's prior of where objects lie
        (hand-centred crops leave ~2 of DexYCB-style scenes' ~3 objects out of view), and its
        unlearnable class and pose errors drown the learnable ones (docs/experiments.md "Object
        queries")."""
        margin = self.cfg.object_margin
        if margin is None or "image" not in batch:
            return batch
        t = batch["obj_t"]
        h, w = batch["image"].shape[-2:]
        uv = project_in_front(t, batch["K"].to(t))
        size = torch.tensor([w, h], dtype=uv.dtype, device=uv.device)
        inside = ((uv >= -margin * size) & (uv <= (1 + margin) * size)).all(-1) & (t[..., 2] > MIN_DEPTH_M)
        return {**batch, "obj_valid": batch["obj_valid"].bool() & inside.to(batch["obj_valid"].device)}

    # hand -----------------------------------------------------------------------------------
    def _hand(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = joint_weights(self.cfg.tip_weight, pred.device)
        gt = valid_labels(batch["joints_3d"], batch["hand_valid"])
        return hand_joint_loss(pred, gt, batch["hand_valid"], w, self.cfg.smooth_l1_beta_m, self.cfg.bone_weight)

    def _hand_coarse(self, outputs, batch, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Coarse joints, plus the MANO betas (squared error) where `mano_valid`."""
        joints = self._hand(outputs["joints_3d_coarse"], batch)
        if "mano_shape" not in outputs or "mano_valid" not in batch:
            return joints
        gt_shape = valid_labels(batch["mano_shape"], batch["mano_valid"]).to(outputs["mano_shape"])
        shape_err = (outputs["mano_shape"] - gt_shape).pow(2).mean(-1)
        shape = masked_mean(shape_err, batch["mano_valid"])
        terms["hand_coarse/shape"] = shape.detach()
        return joints + self.cfg.shape_weight * shape

    def _hand_refined(self, outputs, batch, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every refinement step's joints (the final output is the last step's), equally
        weighted, plus the joint-confidence calibration."""
        preds = self._per_step(outputs, [s["joints_3d"] for s in self._steps(outputs)], outputs["joints_3d"])
        joints = torch.stack([self._hand(p, batch) for p in preds]).mean()
        if "joint_conf" not in outputs:
            return joints
        conf = self._confidence(outputs["joint_conf"], outputs["joints_3d"], batch)
        terms["hand_refined/confidence"] = conf.detach()
        return joints + self.cfg.confidence_weight * conf

    def _confidence(self, conf: torch.Tensor, joints: torch.Tensor, batch) -> torch.Tensor:
        """BCE of `joint_conf` (B, 21) against exp(-error / scale) of the final joints (error
        detached: the confidence learns to report the error, not to change it)."""
        err = (joints.detach() - valid_labels(batch["joints_3d"], batch["hand_valid"]).to(joints)).norm(dim=-1)
        target = torch.exp(-err / self.cfg.confidence_scale_m)
        return masked_mean(nan_safe_bce(conf, target).mean(-1), batch["hand_valid"])

    @staticmethod
    def _steps(outputs) -> list[Mapping[str, torch.Tensor]]:
        return list(outputs.get("aux", {}).get("refine_steps", []))

    @staticmethod
    def _per_step(outputs, per_step: list, final):
        """One prediction per refinement step, equally weighted (deep supervision): the final
        output is the last step's estimate, so it stands in for that step (counting both would
        weight the last step twice); without steps, the final output alone."""
        return per_step[:-1] + [final]

    # objects --------------------------------------------------------------------------------
    def _object_pose_errors(
        self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(position (metres), rotation (radians)) errors of the matched pairs, each the mean over
        the refinement steps (`_per_step`), symmetry-aware about the symmetry centres
        (`amt.data.symmetry.symmetric_pose_error`: zero for every visually identical pose)."""
        gt_R = batch["obj_R"][m.batch, m.slot].to(outputs["obj_t"])
        gt_t = batch["obj_t"][m.batch, m.slot].to(outputs["obj_t"])
        cls = batch["obj_class"][m.batch, m.slot].to(m.batch.device)
        steps = [s for s in self._steps(outputs) if "obj_t" in s and ("obj_R" in s or "obj_quat" in s)]
        rot, pos = [], []
        for p in self._per_step(outputs, steps, outputs):
            r, d = symmetric_pose_error(
                predicted_rotation(p)[m.batch, m.query], p["obj_t"][m.batch, m.query], gt_R, gt_t, cls, self.symmetries
            )
            rot.append(r.sum() / pairs.clamp_min(1.0))
            pos.append(d.sum() / pairs.clamp_min(1.0))
        return torch.stack(pos).mean(), torch.stack(rot).mean()

    def _object_pose(self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(object_position (m), object_rotation (rad)) terms; graph-attached zeros without pairs."""
        if m.batch.numel() == 0:
            return graph_zero(outputs["obj_t"]), graph_zero(outputs["obj_quat"])
        return self._object_pose_errors(outputs, batch, m, pairs)

    def _class_targets(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        logits = outputs["obj_logits"]
        target = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.int64, device=logits.device)
        target[m.batch, m.query] = class_logit_index(batch["obj_class"][m.batch, m.slot].to(logits.device))
        return target

    def _object_class(
        self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Cross-entropy of the matched classes ("no object" for the unmatched queries, down-weighted),
        plus, for selected queries, the proposal head's per-token focal loss (`_proposals`)."""
        logits = outputs["obj_logits"]
        class_w = torch.ones(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        class_w[NO_OBJECT] = self.cfg.no_object_weight
        target = self._class_targets(outputs, batch, m)
        # DETR's weighted mean, sum(w_target CE) / sum(w_target), with the weight sum taken from
        # the (cross-rank mean) pair count: matched queries weigh 1, the others no_object_weight
        per_query = F.cross_entropy(logits.flatten(0, 1), target.flatten(), weight=class_w, reduction="none")
        w = self.cfg.no_object_weight
        queries = per_query.sum() / (target.numel() * w + pairs * (1.0 - w)).clamp_min(1e-12)
        if "proposal_logits" not in outputs.get("aux", {}):
            return queries
        proposals = self._proposals(outputs["aux"], batch)
        terms["object_class/proposals"] = proposals.detach()
        return queries + self.cfg.proposal_weight * proposals

    def _proposals(self, aux, batch) -> torch.Tensor:
        """Focal loss (sigmoid per class, Lin et al. 2017) of the per-token proposal logits (B,T,C):
        a token is positive for a class when the projected centre of a valid object of that class
        lies in its cell (one token per pyramid level and object), negative otherwise; summed and
        divided by the number of positives, as detectors normalise it."""
        logits = aux["proposal_logits"]
        token_uv, stride = aux["proposal_uv"].to(logits), aux["proposal_stride"].to(logits)  # (T, 2), (T,)
        t = batch["obj_t"].to(logits)  # (B, M, 3)
        in_front = t[..., 2] > MIN_DEPTH_M
        uv = project_in_front(t, batch["K"].to(logits))
        # (B, M, T): the cell holds the centre (half-open so a centre on an edge lands in one cell)
        offset = uv.unsqueeze(2) - token_uv + stride[:, None] / 2
        inside = ((offset >= 0) & (offset < stride[:, None])).all(-1)
        inside &= (batch["obj_valid"].to(logits.device).bool() & in_front).unsqueeze(-1)
        cls = batch["obj_class"].to(logits.device).clamp(1, logits.shape[-1])
        onehot = F.one_hot(class_logit_index(cls), logits.shape[-1]).to(logits)  # (B, M, C)
        target = (inside.to(logits).transpose(1, 2) @ onehot).clamp(max=1.0)  # (B, T, C)
        loss = focal_bce(F.logsigmoid(logits), F.logsigmoid(-logits), target, self.cfg.focal_gamma, 0.25)
        # normalised by the mean number of positives per rank (as DETR's num_boxes): after DDP
        # averages the ranks' gradients, the update is the single-process one on the global batch
        return loss.sum() / mean_over_ranks(target.sum().detach()).clamp_min(1.0)

    # contact --------------------------------------------------------------------------------
    def _contact(self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor) -> torch.Tensor:
        if m.batch.numel() == 0:
            return graph_zero(outputs["contact_prob"]) + graph_zero(outputs["contact_points"])
        label = batch["contact_valid"][m.batch, m.slot].to(m.batch.device)
        logit = outputs.get("aux", {}).get("contact_logit")
        if logit is not None:  # exact log-probabilities when the model exposes its logits
            z = logit[m.batch, m.query]
            log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)
        else:
            p = outputs["contact_prob"][m.batch, m.query].clamp(1e-6, 1 - 1e-6)
            log_p, log_not_p = p.log(), (1 - p).log()
        cls = focal_bce(log_p, log_not_p, label, self.cfg.focal_gamma, self.cfg.focal_alpha)
        cls = cls.sum() / pairs.clamp_min(1.0)
        pred_point = outputs["contact_points"][m.batch, m.query]
        gt_point = valid_labels(batch["contact_points"][m.batch, m.slot], label).to(pred_point)
        point_err = (pred_point - gt_point).norm(dim=-1)
        return cls + masked_mean(point_err, label)

    # physics --------------------------------------------------------------------------------
    def _hand_points(self, outputs) -> torch.Tensor:
        points = outputs.get("aux", {}).get("hand_points")
        return points if points is not None else skeleton_surface_points(outputs["joints_3d"])

    def _physics(
        self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        parts = {
            "penetration": self._penetration(outputs, batch, m, pairs),
            "joint_limits": torch.relu(bend_angles(outputs["joints_3d"]) - self.bend_limit).mean(),
            "bone_length": self._bone_length(outputs["joints_3d"]),
            "stability": self._stability(outputs, m, pairs),
        }
        for name, value in parts.items():
            terms[f"physics/{name}"] = value.detach()
        return sum(parts.values())

    def _penetration(self, outputs, batch, m: MatchedIndices, pairs: torch.Tensor) -> torch.Tensor:
        """Mean depth (m) of hand points inside each matched object's core sphere."""
        points = self._hand_points(outputs)
        if m.batch.numel() == 0:
            return graph_zero(points) + graph_zero(outputs["obj_t"])
        centre = outputs["obj_t"][m.batch, m.query]  # (N, 3)
        radius = self.core_radius.to(points)[batch["obj_class"][m.batch, m.slot].to(m.batch.device)]
        dist = (points[m.batch] - centre[:, None]).norm(dim=-1)  # (N, P)
        return torch.relu(radius[:, None] - dist).mean(-1).sum() / pairs.clamp_min(1.0)

    def _bone_length(self, joints: torch.Tensor) -> torch.Tensor:
        """Mean distance (m) of each bone length outside its human range."""
        length = bone_lengths(joints)
        lo, hi = self.nominal_bone.to(length) * BONE_RANGE[0], self.nominal_bone.to(length) * BONE_RANGE[1]
        return (torch.relu(lo - length) + torch.relu(length - hi)).mean()

    def _stability(self, outputs, m: MatchedIndices, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """Friction-cone violation of each matched contact force plus the norm of the
        probability-weighted net force per sample (force units of the model's head).

        The term trains the forces only: contact probabilities and the contact geometry (the
        cone's normal, from the contact point to the object centre) are detached. Otherwise the
        cheapest way to balance forces is to predict no contact, and the normal's gradient,
        which scales with 1 / |centre - contact point|, blows up when the two are close (one of
        three paths cut when the demo's gradients exploded: docs/experiments.md).
        """
        pairs = self._pair_count(m) if pairs is None else pairs
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
        return net + (prob[m.batch, m.query] * cone).sum() / pairs.clamp_min(1.0)

    # regularisers ---------------------------------------------------------------------------
    def _diversity(self, outputs) -> torch.Tensor:
        # the batch std of the global batch in a distributed training step (distributed_stats)
        joints, obj_t = gather_batch(outputs["joints_3d"]), gather_batch(outputs["obj_t"])
        if joints.shape[0] < 2:
            return graph_zero(joints) + graph_zero(obj_t)
        rel = joints - joints[:, :1]
        hand = torch.relu(self.cfg.joint_std_target_m - batch_std(rel[:, 1:])).mean()
        objects = torch.relu(self.cfg.object_std_target_m - batch_std(obj_t)).mean()
        return hand + objects

    def _reprojection(
        self, outputs, batch, matched: MatchedIndices, pairs: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The image-plane term: smooth-L1 of the joints' pixels, as fractions of the image size,
        plus `heatmap_weight` x the hand heatmaps' and `object_heatmap_weight` x the matched object
        centre heatmaps' `heatmap_kl`."""
        joints = outputs["joints_3d"]
        h, w = batch["image"].shape[-2:]
        size = torch.tensor([w, h], dtype=joints.dtype, device=joints.device)
        uv = project_in_front(joints, batch["K"].to(joints)) / size
        gt = valid_labels(batch["joints_2d"], batch["hand_valid"]).to(joints)
        err = F.smooth_l1_loss(uv, gt / size, reduction="none", beta=self.cfg.reprojection_beta).sum(-1).mean(-1)
        total = masked_mean(err, batch["hand_valid"])
        aux = outputs.get("aux", {})
        if self.cfg.heatmap_weight > 0 and "hand_heatmap_scores" in aux:
            kl = heatmap_kl(aux["hand_heatmap_scores"], gt, aux["heatmap_uv"], aux["heatmap_stride"])  # (B, 21)
            heat = masked_mean(kl.mean(-1), batch["hand_valid"])
            terms["reprojection/heatmap"] = heat.detach()
            total = total + self.cfg.heatmap_weight * heat
        if self.cfg.object_heatmap_weight > 0 and "object_heatmap_scores" in aux:
            heat = self._object_heatmap(aux, batch, matched, pairs)
            terms["reprojection/object_heatmap"] = heat.detach()
            total = total + self.cfg.object_heatmap_weight * heat
        return total

    @staticmethod
    def _object_heatmap(aux, batch, m: MatchedIndices, pairs: torch.Tensor) -> torch.Tensor:
        """`heatmap_kl` of the matched queries' centre heatmaps around their objects' true
        centre pixels, clamped to the grid (the head's offset reaches centres outside the crop),
        summed over pairs / the (cross-rank mean) pair count."""
        scores = aux["object_heatmap_scores"]
        if m.batch.numel() == 0:
            return graph_zero(scores)
        centres = aux["heatmap_uv"].to(scores)
        uv = project_in_front(batch["obj_t"].to(scores), batch["K"].to(scores))[m.batch, m.slot]  # (N, 2)
        uv = uv.clamp(centres.amin(0), centres.amax(0))
        kl = heatmap_kl(scores[m.batch, m.query][:, None], uv[:, None], centres, aux["heatmap_stride"])
        return kl.sum() / pairs.clamp_min(1.0)

    def _kl(self, outputs, batch, m: MatchedIndices) -> torch.Tensor:
        """KL(label marginal || predicted marginal) of the class distribution over all queries."""
        logits = outputs["obj_logits"]
        target = self._class_targets(outputs, batch, m).flatten()
        # marginals over the global batch in a distributed training step (distributed_stats);
        # one_hot, not bincount: bincount is not deterministic on CUDA
        counts = sum_over_ranks(F.one_hot(target, logits.shape[-1]).to(logits.dtype).sum(0))
        label = counts / counts.sum()
        log_pred = logsumexp_over_ranks(logits.flatten(0, 1).log_softmax(-1)) - counts.sum().log()
        present = label > 0
        return (label[present] * (label[present].log() - log_pred[present])).sum()

    def _temporal(self, outputs, batch) -> torch.Tensor:
        """Second difference (velocity for K=2) of the joints across a clip, minus the ground
        truth's where all frames involved have a hand label; metres per frame^2 (frame)."""
        joints = outputs["joints_3d"]
        k = sequence_length(batch)
        if k < 2:
            return graph_zero(joints)
        if joints.shape[0] % k:
            raise ValueError(f"batch['sequence_length']={k} does not divide the batch size {joints.shape[0]}")
        pred = joints.reshape(-1, k, NUM_JOINTS, 3)
        gt = valid_labels(batch["joints_3d"], batch["hand_valid"]).to(joints).reshape(-1, k, NUM_JOINTS, 3)
        valid = batch["hand_valid"].reshape(-1, k)

        def diff(x: torch.Tensor) -> torch.Tensor:
            return x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2] if k >= 3 else x[:, 1:] - x[:, :-1]

        span = 3 if k >= 3 else 2
        labelled = valid.unfold(1, span, 1).all(-1)  # (N, k - span + 1)
        gt_diff = torch.where(labelled[..., None, None], diff(gt), torch.zeros_like(gt[:, : k - span + 1]))
        residual = diff(pred) - gt_diff
        return residual.norm(dim=-1).mean()
