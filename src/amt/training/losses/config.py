"""`LossConfig`: the weights of the eleven AMT loss terms and the terms' own parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from amt.errors import ConfigError, finite_number, require
from amt.models.matching import MatchCost

TERM_NAMES: tuple[str, ...] = (
    "hand_coarse", "hand_refined", "object_position", "object_rotation", "object_class",
    "contact", "physics", "diversity", "reprojection", "kl", "temporal",
)  # fmt: skip


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
    # hand: weight of the bone-vector (child - parent) smooth-L1 inside both hand terms (0 = off)
    bone_weight: float = 1.0
    # hand: MANO betas (inside hand_coarse) and joint confidence (inside hand_refined), whose
    # target is exp(-joint error / confidence_scale_m)
    shape_weight: float = 0.01
    confidence_weight: float = 0.1
    confidence_scale_m: float = 0.02
    # class: DETR's down-weighting of the "no object" class
    no_object_weight: float = 0.1
    # objects supervised: centre inside the crop or at most this fraction of its side outside
    # (None: every valid object, seen or not; AMTLoss._observable_objects)
    object_margin: float | None = 0.25
    # class: weight of the proposal head's per-token focal loss inside object_class (selected queries)
    proposal_weight: float = 1.0
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
    # reprojection: weight of the hand heatmaps' KL divergence from a Gaussian (sigma one cell)
    # around each joint's true pixel (hand_keypoints="heatmap" only; 0 = off); docs/losses.md
    heatmap_weight: float = 0.3
    # reprojection: the same for the matched object queries' centre heatmaps (object_centre="heatmap")
    object_heatmap_weight: float = 0.3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stage_multipliers) - set(TERM_NAMES))
        if unknown:
            raise ConfigError(f"LossConfig.stage_multipliers: unknown terms {unknown}; expected {TERM_NAMES}")
        # a negative weight turns a term's descent into ascent: the run would train, silently, away
        # from the labels; a zero scale divides by zero inside the term
        for name in (*TERM_NAMES, *_NON_NEGATIVE):
            value = getattr(self, name)
            require(finite_number(value) and value >= 0, f"loss.{name}", value, "a number >= 0")
        for name, value in self.stage_multipliers.items():
            require(finite_number(value) and value >= 0, f"loss.stage_multipliers.{name}", value, "a number >= 0")
        scale = self.confidence_scale_m
        require(finite_number(scale) and scale > 0, "loss.confidence_scale_m", scale, "a length > 0 (metres)")
        alpha = self.focal_alpha
        require(finite_number(alpha) and 0 <= alpha <= 1, "loss.focal_alpha", alpha, "a number in [0, 1]")
        margin = self.object_margin
        require(margin is None or finite_number(margin) and margin >= 0, "loss.object_margin", margin,
                "null or a fraction >= 0 of the crop side")  # fmt: skip


# LossConfig parameters that must be finite and >= 0 besides the term weights
_NON_NEGATIVE: tuple[str, ...] = (
    "smooth_l1_beta_m", "tip_weight", "bone_weight", "shape_weight", "confidence_weight", "no_object_weight",
    "proposal_weight", "focal_gamma", "friction_coefficient", "joint_std_target_m", "object_std_target_m",
    "reprojection_beta", "heatmap_weight", "object_heatmap_weight",
)  # fmt: skip
