"""Both hands (issue 15, item 2): a left hand is cached as its mirror image (a right hand) and
mirrored back before metrics and in `amt predict --hand left`; the reader, the cache, the
evaluator and the predictor agree on handedness, and a left frame scores exactly like its mirrored
right twin (the x-mirrored scene, objects included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from torch.utils.data import Dataset

from amt.data.cache import build_cache, cache_folder, make_record, open_cache
from amt.data.contacts import ContactConfig
from amt.data.dexycb import DexYCB
from amt.data.loaders import CachedDataset
from amt.data.object_models import ObjectModels
from amt.data.synthetic_cli import main as synth_main
from amt.data.testing import write_fake_dexycb
from amt.data.transforms import CropConfig, mirror_points, mirror_record, mirror_rotations
from amt.evaluation import submission
from amt.evaluation.evaluator import collect_predictions, compute_metrics
from amt.geometry.rotations import matrix_to_quat_wxyz, quat_wxyz_to_matrix
from amt.inference.cli import predict_main
from amt.inference.intrinsics import Intrinsics
from amt.inference.predictor import Predictor
from amt.models import AMT, build_model
from amt.training.callbacks import Callback
from amt.training.config import load_run_config
from amt.training.trainer import Trainer

SPLIT, SIZE, NUM_CLASSES = "s0_train", 64, 21


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny DexYCB tree (every 2nd sequence left-handed), its s0_train cache and reader."""
    base = tmp_path_factory.mktemp("handedness")
    frames = [1 if i < 4 else 0 for i in range(20)]  # subjects 1-2: 1 right + 1 left sequence, x 8 views
    root = write_fake_dexycb(base / "data", subjects=10, sequences_per_subject=2, serials=8, frames=frames, seed=4)
    reader = DexYCB(root, SPLIT)
    folder = build_cache(root, SPLIT, base / "cache", size=SIZE, workers=1, progress=False)
    return {"root": root, "reader": reader, "cache": folder, "base": base}


def _projection(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return uvw[..., :2] / uvw[..., 2:]


def test_a_left_hand_is_cached_as_the_exact_mirror_of_its_unmirrored_crop(tree) -> None:
    reader = tree["reader"]
    sample = next(reader[i] for i in range(len(reader)) if reader[i]["is_left"])
    models = ObjectModels(tree["root"] / "models")
    crop, contact = CropConfig(size=SIZE), ContactConfig()
    image_l, labels_l, _ = make_record(sample, models, crop, contact)
    image_r, labels_r, _ = make_record({**sample, "is_left": False, "side": "right"}, models, crop, contact)
    assert np.array_equal(image_l, image_r[:, ::-1])
    _, mirrored = mirror_record(image_r, labels_r)
    for key in set(labels_l) - {"is_left"}:
        assert np.array_equal(labels_l[key], mirrored[key]), key
    assert labels_l["is_left"] and np.array_equal(labels_l["crop_box"], labels_r["crop_box"])
    # the mirrored K projects the mirrored 3D joints onto the mirrored 2D joints (the flipped crop)
    np.testing.assert_allclose(_projection(labels_l["joints_3d"], labels_l["K"]), labels_l["joints_2d"], atol=1e-3)
    np.testing.assert_allclose(_projection(labels_r["joints_3d"], labels_r["K"]), labels_r["joints_2d"], atol=1e-3)
    R = labels_l["obj_R"][labels_l["obj_valid"]]
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)  # still rotations
    # mirroring twice is the identity
    image_back, back = mirror_record(image_l, labels_l)
    assert np.array_equal(image_back, image_r)
    for key in set(back) - {"is_left"}:  # float round trips (S - 1 - (S - 1 - u)) are not bitwise
        np.testing.assert_allclose(back[key], labels_r[key], atol=1e-5, err_msg=key)


def test_reader_and_cache_agree_on_handedness(tree) -> None:
    reader, cache = tree["reader"], open_cache(tree["cache"])
    sides = set()
    for row in range(len(cache)):
        sample = reader[int(cache.labels["index"][row])]
        left = bool(cache.labels["is_left"][row])
        sides.add(left)
        assert left == (sample["side"] == "left") == sample["is_left"]
        expected = mirror_points(sample["joint_3d"]) if left else sample["joint_3d"]
        np.testing.assert_array_equal(cache.labels["joints_3d"][row], expected)
        R = np.asarray(sample["obj_pose"])[:, :, :3]
        np.testing.assert_allclose(cache.labels["obj_R"][row, : len(R)], mirror_rotations(R) if left else R, atol=1e-7)
    assert sides == {True, False}


class _NoisyOracle(torch.nn.Module):
    """The batch's labels (the stored, possibly mirrored frame) plus noise seeded by the sample
    index: 1 cm on joints, 2 cm on objects, a small rotation, random contact probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, m = batch["obj_class"].shape
        g = torch.Generator().manual_seed(int(batch["index"][0]))
        logits = torch.full((b, m, NUM_CLASSES + 1), -20.0)
        logits[..., NUM_CLASSES] = 20.0
        for i in range(b):
            valid = batch["obj_valid"][i]
            logits[i, valid, NUM_CLASSES] = -20.0
            logits[i, torch.arange(m)[valid], batch["obj_class"][i, valid] - 1] = 20.0
        quat = matrix_to_quat_wxyz(batch["obj_R"]) + 0.05 * torch.randn(b, m, 4, generator=g)
        return {
            "joints_3d": batch["joints_3d"] + 0.01 * torch.randn(b, 21, 3, generator=g),
            "joint_conf": torch.ones(b, 21),
            "obj_t": batch["obj_t"] + 0.02 * torch.randn(b, m, 3, generator=g),
            "obj_quat": quat / quat.norm(dim=-1, keepdim=True),
            "obj_logits": logits,
            "contact_points": batch["contact_points"] + 0.01 * torch.randn(b, m, 3, generator=g),
            "contact_prob": torch.rand(b, m, generator=g),
        }


class _Rows(Dataset):
    """Rows of a cached split, optionally relabelled as right hands (the mirrored twin)."""

    def __init__(self, base: CachedDataset, rows: list[int], twin: bool) -> None:
        self.base, self.rows, self.twin = base, rows, twin

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[self.rows[i]])
        if self.twin:
            sample["is_left"] = torch.zeros_like(torch.as_tensor(sample["is_left"]))
        return sample


def _write_models(folder: Path, class_ids: set[int], mirror: bool) -> Path:
    """Off-centre boxes (not mirror-symmetric), x-mirrored when `mirror` (the twin's objects)."""
    names = sorted(p.name for p in (folder.parent.parent / "data" / "models").iterdir())
    for k, name in enumerate(names):
        mesh = trimesh.creation.box(extents=[0.05 + 0.01 * k, 0.08, 0.03])
        mesh.apply_translation([0.02, 0.01 * (k % 3), -0.005])
        if mirror:  # faces kept in order (not re-wound), so the surface samples are the mirrored samples
            mesh = trimesh.Trimesh(mesh.vertices * [-1.0, 1.0, 1.0], mesh.faces, process=False)
        (folder / name).mkdir(parents=True)
        mesh.export(folder / name / "textured_simple.obj")
    return folder


def _leaves(tree: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}/{i}").items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def test_a_left_frame_and_its_mirrored_right_twin_give_the_same_metrics(tree) -> None:
    base, cache = CachedDataset(tree["cache"]), open_cache(tree["cache"])
    left_rows = [r for r in range(len(cache)) if cache.labels["is_left"][r] and cache.labels["hand_valid"][r]]
    assert left_rows
    model = _NoisyOracle()
    left = collect_predictions(model, _Rows(base, left_rows, twin=False), batch_size=1)
    twin = collect_predictions(model, _Rows(base, left_rows, twin=True), batch_size=1)
    # the evaluator mirrored the left frames back: labels are the reader's, in its camera frame
    assert left.gt["is_left"].all() and not twin.gt["is_left"].any()
    reader = tree["reader"]
    for n, row in enumerate(left_rows):
        sample = reader[int(cache.labels["index"][row])]
        np.testing.assert_array_equal(left.gt["joints_3d"][n], sample["joint_3d"])
        np.testing.assert_allclose(
            _projection(left.gt["joints_3d"][n], left.gt["K"][n]), left.gt["joints_2d"][n], atol=1e-3
        )
    np.testing.assert_allclose(left.joints_3d, mirror_points(twin.joints_3d), atol=1e-7)
    np.testing.assert_allclose(left.obj_R, mirror_rotations(twin.obj_R), atol=1e-6)
    # the twin is the x-mirrored scene: its objects are the mirrored meshes
    class_ids = {int(c) for c in np.asarray(cache.labels["obj_class"]).ravel() if c > 0}
    models = ObjectModels(_write_models(tree["base"] / "models" / "original", class_ids, mirror=False))
    mirrored = ObjectModels(_write_models(tree["base"] / "models" / "mirrored", class_ids, mirror=True))
    a, b = _leaves(compute_metrics(left, models)), _leaves(compute_metrics(twin, mirrored))
    assert a.keys() == b.keys() and len(a) > 50
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6, rel=1e-6, nan_ok=True), key
    # the HPE submission is unmirrored: scored like the toolkit against the reader's own labels,
    # it gives the evaluator's numbers
    path = submission.write_hpe_submission(tree["base"] / "hpe.txt", left.index, left.joints_3d)
    gt = {int(i): reader[int(i)]["joint_3d"] for i in left.index}
    scored = submission.score_hpe_submission(path, gt)
    for alignment, values in scored.items():
        for name, value in values.items():
            assert value == pytest.approx(a[f"/hand/{alignment}/{name}"], abs=1e-4), (alignment, name)
    # unmirrored metrics are not the stored-frame ones: scoring the mirrored poses against the
    # original meshes (what skipping the un-mirroring would do) changes the object numbers
    wrong = _leaves(compute_metrics(twin, models))
    assert any(abs(wrong[k] - a[k]) > 1e-3 for k in a if "add" in k.lower())


def test_predict_left_runs_the_mirror_image_and_unmirrors(tiny_model_left: torch.nn.Module) -> None:
    """`hand="left"` on an image equals `hand="right"` on the flipped image (its K and box
    mirrored), mirrored back: the model sees the same crop and crop K."""
    predictor = Predictor(tiny_model_left, score_threshold=0.0)
    rng = np.random.default_rng(0)
    h, w = 200, 260
    img = np.clip(127 + 60 * np.sin(np.mgrid[0:h, 0:w].sum(0)[..., None] / 17.0 + rng.uniform(0, 3, 3)), 0, 255)
    img = (img + rng.normal(0, 10, img.shape)).clip(0, 255).astype(np.uint8)
    K = Intrinsics(500, 510, 120.3, 95.7, "test")
    K_flip = Intrinsics(500, 510, w - 1 - 120.3, 95.7, "test")
    x0, y0, side = 40, 30, 150
    a = predictor.predict(img, K, (x0, y0, side), hand="left")
    b = predictor.predict(np.ascontiguousarray(img[:, ::-1]), K_flip, (w - x0 - side, y0, side), hand="right")
    assert a.hand == "left" and a.to_json()["hand"]["side"] == "left"
    np.testing.assert_allclose(a.joints_3d, mirror_points(b.joints_3d), atol=1e-5)
    np.testing.assert_allclose(a.joints_2d[:, 0], w - 1 - b.joints_2d[:, 0], atol=1e-3)
    np.testing.assert_allclose(a.joints_2d[:, 1], b.joints_2d[:, 1], atol=1e-3)
    assert [o.class_id for o in a.objects] == [o.class_id for o in b.objects]
    for oa, ob in zip(a.objects, b.objects, strict=True):
        # 0.1 mm and 1e-4: the flipped image's float32 sums differ in order, and a selected object
        # query's pose goes through more layers of image features (its token) than the joints do;
        # a wrong mirroring moves these by centimetres
        np.testing.assert_allclose(oa.translation, mirror_points(ob.translation), atol=1e-4)
        Ra, Rb = (
            quat_wxyz_to_matrix(torch.as_tensor(q, dtype=torch.float64)).numpy() for q in (oa.quat_wxyz, ob.quat_wxyz)
        )
        np.testing.assert_allclose(Ra, mirror_rotations(Rb), atol=1e-4)
    right = predictor.predict(img, K, (x0, y0, side))
    assert right.hand == "right" and not np.allclose(right.joints_3d, a.joints_3d)
    with pytest.raises(ValueError, match="hand"):
        predictor.predict(img, K, (x0, y0, side), hand="both")


@pytest.fixture(scope="module")
def tiny_model_left(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_model("tiny").save_pretrained(folder)
    return AMT.from_pretrained(folder).eval()


def test_amt_predict_hand_flag(tiny_model_left, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    tiny_model_left.save_pretrained(ckpt)
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "a.png")
    for hand in ("left", "right"):
        out = tmp_path / hand
        assert (
            predict_main([str(ckpt), str(tmp_path / "a.png"), "--out", str(out), "--hand", hand, "--device", "cpu"])
            == 0
        )
        record = json.loads((out / "a.json").read_text())
        assert record["hand"]["side"] == hand


class _FakeDetector:
    """Stands in for MediaPipe: a fixed box and handedness."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def detect_hand(self, image: np.ndarray):
        return (30.0, 20.0, 90.0, 80.0), "left"


def test_predict_takes_the_detectors_handedness_unless_hand_is_given(
    tiny_model_left, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("amt.inference.cli.MediaPipeHandDetector", _FakeDetector)
    ckpt = tmp_path / "ckpt"
    tiny_model_left.save_pretrained(ckpt)
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "a.png")
    for extra, side in (([], "left"), (["--hand", "right"], "right")):
        out = tmp_path / side
        args = [str(ckpt), str(tmp_path / "a.png"), "--out", str(out), "--detector", "--device", "cpu", *extra]
        assert predict_main(args) == 0
        record = json.loads((out / "a.json").read_text())
        assert record["hand"]["side"] == side and record["crop"]["source"] == "detector"


def test_synthetic_left_hand_sequences_are_cached_mirrored_and_train(tmp_path: Path) -> None:
    """`amt synth --left-fraction 1` writes left-hand sequences; the cache mirrors them (the crop
    K projects the stored joints onto the stored 2D joints) and two training steps run on them."""
    root = tmp_path / "synth"
    args = [str(root), "--frames", "4", "--primitives", "--workers", "1", "--left-fraction", "1.0", "--seed", "2"]
    assert synth_main(args) == 0
    reader = DexYCB(root, SPLIT)
    assert len(reader) == 8 and {reader[i]["side"] for i in range(len(reader))} == {"left"}
    cfg = load_run_config(
        "tiny",
        [
            f"data.root={root}", f"data.split={SPLIT}", "data.val_split=null", f"data.image_size={SIZE}",
            f"model.image_size={SIZE}", "data.cache_workers=1", "training.device=cpu", "training.batch_size=4",
            "training.max_steps=2", f"training.output_dir={tmp_path / 'run'}", "checkpoint.every_epochs=0",
            "logging.tensorboard=false", "logging.progress=false",
        ],
    )  # fmt: skip
    losses: list[float] = []

    class Record(Callback):
        def on_step_end(self, trainer, info):
            losses.append(info.loss)

    trainer = Trainer(cfg, evaluator=None)
    trainer.callbacks.append(Record())
    trainer.fit()
    assert len(losses) == 2 and np.isfinite(losses).all()
    cache = open_cache(cache_folder(root, SPLIT, SIZE))
    assert np.asarray(cache.labels["is_left"]).all()
    for row in range(len(cache)):
        sample = reader[int(cache.labels["index"][row])]
        np.testing.assert_array_equal(cache.labels["joints_3d"][row], mirror_points(sample["joint_3d"]))
        uv = _projection(cache.labels["joints_3d"][row], cache.labels["K"][row])
        np.testing.assert_allclose(uv, cache.labels["joints_2d"][row], atol=1e-2)
