"""The demo's pictures (issue 16): one training-curve panel per loss term, the learned-weighting
total apart on a linear scale, and overlays that say which side is which."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amt.evaluation.evaluator import Predictions
from amt.evaluation.report import overlay_pair, plot_training_curves, training_curves_figure


def _history() -> dict[str, list[tuple[int, float]]]:
    steps = range(0, 100, 10)
    return {
        "total": [(s, 1.0 - s / 30) for s in steps],  # goes negative, as the learned weighting does
        "hand_coarse": [(s, 0.3 / (1 + s)) for s in steps],
        "hand_coarse/shape": [(s, 1e-3 / (1 + s)) for s in steps],
        "object_class": [(s, 2.5 - s / 100) for s in steps],
        "temporal": [(s, 0.0) for s in steps],  # inactive: left out
    }


def test_one_panel_per_term_total_linear_and_apart(tmp_path: Path) -> None:
    axes = [ax for ax in training_curves_figure(_history()).axes if ax.get_visible()]
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["total", "hand_coarse", "object_class"]
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log"]
    assert len(axes[1].get_lines()) == 2  # a term's parts share its panel
    assert plot_training_curves(_history(), tmp_path / "curves.png").stat().st_size > 0


def test_overlay_labels_ground_truth_and_prediction_sides() -> None:
    n, q, c = 1, 3, 22
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    joints = np.random.default_rng(0).normal(0, 0.02, (n, 21, 3)) + [0, 0, 0.5]
    prob = np.zeros((n, q, c))
    prob[..., -1] = 1.0
    pred = Predictions(
        index=np.arange(n), position=np.arange(n), meta=[{}], joints_3d=joints, joint_conf=np.ones((n, 21)),
        obj_t=np.zeros((n, q, 3)), obj_R=np.broadcast_to(np.eye(3), (n, q, 3, 3)).copy(), obj_prob=prob,
        contact_points=np.zeros((n, q, 3)), contact_prob=np.zeros((n, q)),
        gt={"K": K[None], "joints_3d": joints, "hand_valid": np.ones(n, bool), "obj_valid": np.zeros((n, 1), bool),
            "obj_R": np.zeros((n, 1, 3, 3)), "obj_t": np.zeros((n, 1, 3))},
    )  # fmt: skip
    image = np.full((64, 64, 3), 255, np.uint8)
    pair = np.asarray(overlay_pair(image, pred, 0, min_size=64))
    assert pair.shape[0] > 64  # a label strip above the pictures
    strip = pair[:12].min(axis=-1) < 100  # dark text on white
    half = pair.shape[1] // 2
    assert strip[:, :half].any() and strip[:, half:].any()
