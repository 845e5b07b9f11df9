"""Predictor: crop/K bookkeeping, decoding of the output contract, intrinsics sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amt.checkpoint import CheckpointError, load_checkpoint, load_model
from amt.data.transforms import CropConfig, square_box
from amt.data.ycb import NUM_CLASSES, YCB_CLASSES
from amt.inference.intrinsics import (
    Intrinsics,
    IntrinsicsError,
    default_intrinsics,
    load_calibration,
    parse_K,
)
from amt.inference.predictor import Predictor, box_from_xyxy, centred_box, decode


def test_translating_image_principal_point_and_box_together_leaves_3d_unchanged(
    tiny_model: torch.nn.Module, random_image
) -> None:
    """The model sees the same crop and crop K, so camera-frame 3D must not move; 2D moves by the shift."""
    predictor = Predictor(tiny_model, score_threshold=0.0)
    img = random_image(200, 260, 3)
    dx, dy = 37, 11
    shifted = np.zeros((200 + dy, 260 + dx, 3), np.uint8)
    shifted[dy:, dx:] = img
    a = predictor.predict(img, Intrinsics(500, 500, 130, 100, "test"), (40, 30, 150))
    b = predictor.predict(shifted, Intrinsics(500, 500, 130 + dx, 100 + dy, "test"), (40 + dx, 30 + dy, 150))
    np.testing.assert_allclose(a.joints_3d, b.joints_3d, atol=1e-6)
    np.testing.assert_allclose(a.joints_2d + [dx, dy], b.joints_2d, atol=1e-3)
    assert [o.class_id for o in a.objects] == [o.class_id for o in b.objects]
    for oa, ob in zip(a.objects, b.objects):
        np.testing.assert_allclose(oa.translation, ob.translation, atol=1e-6)


def test_changing_the_image_changes_the_prediction(tiny_model: torch.nn.Module, random_image) -> None:
    predictor = Predictor(tiny_model)
    intr = default_intrinsics(128, 128)
    a = predictor.predict(random_image(128, 128, 1), intr)
    b = predictor.predict(random_image(128, 128, 2), intr)
    assert np.abs(a.joints_3d - b.joints_3d).max() > 1e-6


def test_decode_keeps_objects_above_threshold_sorted_with_ycb_names() -> None:
    Q = 4
    logits = torch.full((1, Q, NUM_CLASSES + 1), -10.0)
    logits[0, 0, NUM_CLASSES] = 10.0  # query 0: "no object"
    logits[0, 1, 4] = 10.0  # query 1: class index 4 -> YCB id 5, prob ~1
    logits[0, 2, 0] = 1.0  # query 2: id 1, but "no object" is likelier: score ~0.38
    logits[0, 2, NUM_CLASSES] = 1.5
    logits[0, 3, 20] = 3.0  # query 3: id 21, prob ~0.95
    out = {
        "joints_3d": torch.rand(1, 21, 3) + torch.tensor([0, 0, 0.5]),
        "joint_conf": torch.rand(1, 21),
        "mano_shape": torch.zeros(1, 10),
        "obj_logits": logits,
        "obj_t": torch.rand(1, Q, 3) + torch.tensor([0, 0, 0.5]),
        "obj_quat": torch.nn.functional.normalize(torch.randn(1, Q, 4), dim=-1),
        "contact_points": torch.rand(1, Q, 3) + torch.tensor([0, 0, 0.5]),
        "contact_prob": torch.tensor([[0.1, 0.9, 0.2, 0.3]]),
        "contact_force": torch.randn(1, Q, 3),
    }
    K = default_intrinsics(640, 480).K
    hand, objects, contacts = decode(out, K, score_threshold=0.5)
    assert [(o.query, o.class_id, o.class_name) for o in objects] == [(1, 5, YCB_CLASSES[5]), (3, 21, YCB_CLASSES[21])]
    assert objects[0].score > objects[1].score > 0.5
    assert [c.query for c in contacts] == [1, 3] and contacts[0].prob == pytest.approx(0.9)
    uvw = out["obj_t"][0, 1].numpy() @ K.T
    np.testing.assert_allclose(objects[0].center_2d, uvw[:2] / uvw[2], rtol=1e-5)
    assert hand["joints_2d"].shape == (21, 2)


def test_hand_box_becomes_the_caches_square_crop() -> None:
    crop = CropConfig()
    assert box_from_xyxy((100, 50, 180, 150), crop) == square_box(
        np.array([[100, 50], [180, 150]]), crop.margin, crop.min_size
    )
    assert box_from_xyxy((100, 50, 180, 150), crop) == (65, 25, 150)
    assert centred_box(640, 480) == (80, 0, 480)
    with pytest.raises(ValueError, match="x0 < x1"):
        box_from_xyxy((10, 10, 5, 20), crop)


def test_default_intrinsics_have_the_documented_field_of_view() -> None:
    intr = default_intrinsics(640, 480)
    assert 2 * np.degrees(np.arctan(320 / intr.fx)) == pytest.approx(55.0)
    assert intr.fx == intr.fy and (intr.cx, intr.cy) == (319.5, 239.5)
    assert "55" in intr.source


def test_K_argument_and_calibration_file(tmp_path: Path) -> None:
    assert parse_K("600,601,320,240").K.tolist() == [[600, 0, 320], [0, 601, 240], [0, 0, 1]]
    for bad in ("600,601,320", "a,b,c,d", "-1,600,320,240"):
        with pytest.raises(IntrinsicsError, match="fx,fy,cx,cy"):
            parse_K(bad)
    calib = tmp_path / "836212060125_640x480.yml"
    calib.write_text(
        "color:\n  fx: 616.5\n  fy: 616.1\n  height: 480\n  ppx: 308.2\n  ppy: 246.0\n  width: 640\n"
        "depth:\n  fx: 380.0\n  fy: 380.0\n  ppx: 320.0\n  ppy: 240.0\n"
        "extrinsics: !!python/tuple\n- 1.0\n- 0.0\n- 0.0\n- 0.015\n"
    )
    intr = load_calibration(calib)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((616.5, 616.1, 308.2, 246.0), rel=1e-6)
    assert str(calib) in intr.source
    bad = tmp_path / "bad.yml"
    bad.write_text("depth:\n  fx: 1\n")
    with pytest.raises(IntrinsicsError, match="bad.yml"):
        load_calibration(bad)


def test_load_model_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty")


def test_the_paths_next_to_a_checkpoint_point_at_it(tiny_model, tmp_path: Path) -> None:
    """A run folder, its checkpoints/ folder or a file inside a checkpoint: the paths users pass
    (`amt eval runs/tiny`) used to give 'checkpoint incomplete: .../model.safetensors/config.yaml'."""
    run = tmp_path / "run"
    for name in ("step_000010", "step_000020"):
        tiny_model.save_pretrained(run / "checkpoints" / name)
    (run / "checkpoints" / "last").symlink_to("step_000020")
    last = run / "checkpoints" / "last"
    for path, message in [
        (run, f"{run}: a run folder, not a checkpoint; pass one of its checkpoints, e.g. {last} "
              "(here: last, step_000010, step_000020)"),
        (run / "checkpoints", f"{run / 'checkpoints'}: a folder of checkpoints, not a checkpoint"),
        (last / "model.safetensors", f"{last / 'model.safetensors'}: a file of the checkpoint folder {last}; pass"),
    ]:  # fmt: skip
        for load in (load_model, load_checkpoint):
            with pytest.raises(CheckpointError) as err:
                load(path)
            assert str(err.value).startswith(message), err.value
    assert load_model(last) is not None


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((10, 10, 100, 100), r"expected \(x0, y0, side\) finite pixels \(for an x0, y0, x1, y1 box: box_from_xyxy\)"),
        ((float("nan"), 1, 50), r"expected \(x0, y0, side\)"),
        ((10, 10, 0), r"the side must be at least 1 pixel"),
        ((10, 10, -5), r"the side must be at least 1 pixel"),
        ((1000, 1000, 50), r"lies outside the 160x120 image"),
        ((0, 0, 5000), r"more than 8x the 160x120 image"),
    ],
)
def test_a_box_the_image_cannot_give_a_crop_from_is_a_named_error(tiny_model, random_image, box, message) -> None:
    """The Python API used to predict on padding for a box outside the image, and fail with numpy's
    or torch's words for a four-number box, a NaN or a side <= 0."""
    predictor = Predictor(tiny_model)
    with pytest.raises(ValueError, match=message):
        predictor.predict(random_image(120, 160, 0), default_intrinsics(160, 120), box)
    with pytest.raises(TypeError, match="intrinsics: expected an amt.inference.intrinsics.Intrinsics"):
        predictor.predict(random_image(120, 160, 0), None)
