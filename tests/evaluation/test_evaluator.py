"""Evaluator, report files and `amt eval` on a small cached split (fake DexYCB tree)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amt.data.cache import build_cache, open_cache
from amt.data.dexycb import DexYCB
from amt.data.loaders import CachedDataset
from amt.data.testing import write_fake_dexycb
from amt.data.ycb import BOP_OFFSETS_MM
from amt.evaluation import submission
from amt.evaluation.evaluator import evaluate
from amt.evaluation.metrics import collapse_ratio
from amt.evaluation.report import BOP_CSV, HPE_SUBMISSION, REPORT_JSON, provenance, write_report
from amt.geometry.rotations import matrix_to_quat_wxyz

NUM_CLASSES = 21


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """s0_train and s0_test caches of a tiny fake DexYCB tree (3 subjects, 2 serials)."""
    base = tmp_path_factory.mktemp("evaluator")
    frames = [1 if i % 5 in (0, 4) else 0 for i in range(50)]  # 80 train, 64 test samples
    root = write_fake_dexycb(
        base / "data", subjects=10, sequences_per_subject=5, serials=8, frames=frames, seed=3, no_hand_every=7
    )
    out = {"root": root}
    for split in ("s0_train", "s0_test"):
        out[split] = build_cache(root, split, base / "cache" / split, size=112, workers=1, progress=False)
    return out


class OracleModel(torch.nn.Module):
    """Returns the batch's ground truth in the output contract (object slot m -> query m)."""

    def __init__(self, num_queries: int = 10) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, m = batch["obj_class"].shape
        logits = torch.full((b, self.num_queries, NUM_CLASSES + 1), -20.0)
        logits[..., NUM_CLASSES] = 20.0
        slots = torch.arange(m)
        for i in range(b):
            valid = batch["obj_valid"][i]
            logits[i, slots[valid], NUM_CLASSES] = -20.0
            logits[i, slots[valid], batch["obj_class"][i, valid] - 1] = 20.0
        return {
            "joints_3d": batch["joints_3d"].clone(),
            "joint_conf": torch.ones(b, 21),
            "obj_t": batch["obj_t"].clone(),
            "obj_quat": matrix_to_quat_wxyz(batch["obj_R"]),
            "obj_logits": logits,
            "contact_points": batch["contact_points"].clone(),
            "contact_prob": batch["contact_valid"].float(),
        }


class NothingModel(OracleModel):
    """A constant hand and 'no object' on every query."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        out["joints_3d"] = torch.linspace(0, 0.1, 63).reshape(1, 21, 3).expand_as(out["joints_3d"]) + 0.5
        out["obj_t"] = torch.full_like(out["obj_t"], 0.3)
        out["obj_logits"] = torch.zeros_like(out["obj_logits"])
        out["obj_logits"][..., NUM_CLASSES] = 20.0
        return out


class NoisyModel(OracleModel):
    """Ground truth plus seeded noise: 1 cm on joints, 2 cm on object translations, random contacts."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        g = torch.Generator().manual_seed(int(batch["index"][0]))
        out["joints_3d"] = out["joints_3d"] + 0.01 * torch.randn(out["joints_3d"].shape, generator=g)
        out["obj_t"] = out["obj_t"] + 0.02 * torch.randn(out["obj_t"].shape, generator=g)
        out["contact_prob"] = torch.rand(out["contact_prob"].shape, generator=g)
        return out


def _evaluate(model: torch.nn.Module, caches: dict[str, Path], **kwargs) -> dict:
    return evaluate(
        model, CachedDataset(caches["s0_test"]), caches["root"] / "models", batch_size=4,
        train_dataset=CachedDataset(caches["s0_train"]), **kwargs,
    )  # fmt: skip


def test_oracle_predictions_score_perfectly(caches: dict[str, Path]) -> None:
    result = _evaluate(OracleModel(), caches)
    for alignment in ("absolute", "root-relative"):
        assert result["hand"][alignment]["mpjpe"] == 0.0
        assert result["hand"][alignment]["auc"] == pytest.approx(1.0, abs=1e-12)
    assert result["hand"]["procrustes"]["mpjpe"] < 1e-6
    objects = result["objects"]["all"]
    assert objects["num_instances"] > 0 and objects["num_missed"] == 0
    for key in ("add", "add_s", "add(-s)"):
        assert objects[key]["mean_mm"] < 1e-3
        assert objects[key]["auc"] == pytest.approx(1.0, abs=1e-4)
        assert objects[key]["acc_10pct_diameter"] == 1.0
    assert objects["recall"] == 1.0 and objects["detection"]["precision"] == 1.0
    assert result["contacts"]["accuracy"] == 1.0
    assert result["contacts"]["contact_point_error_mm"] in (None, 0.0)
    assert result["collapse_ratio"] == pytest.approx(1.0)


def test_no_object_predictions_are_misses_and_constant_hand_collapses(caches: dict[str, Path]) -> None:
    result = _evaluate(NothingModel(), caches)
    objects = result["objects"]["all"]
    assert objects["num_missed"] == objects["num_instances"]
    assert objects["add"]["auc"] == 0.0 and objects["add(-s)"]["acc_10pct_diameter"] == 0.0
    assert objects["add"]["mean_mm"] is None
    assert result["collapse_ratio"] == pytest.approx(0.0, abs=1e-9)
    # BOP protocol: a model that claims no object has no estimate to measure a translation error of
    assert objects["translation_error_mm"] is None and objects["recall"] == 0.0
    assert objects["detection"]["num_estimates"] == 0 and objects["detection"]["precision"] is None


def test_baselines_match_an_independent_computation(caches: dict[str, Path]) -> None:
    result = _evaluate(OracleModel(), caches)
    train, test = open_cache(caches["s0_train"]).labels, open_cache(caches["s0_test"]).labels
    hv = np.asarray(train["hand_valid"])
    train_rr = np.asarray(train["joints_3d"], np.float64)[hv]
    mean_rr = (train_rr - train_rr[:, :1]).mean(axis=0)
    test_j = np.asarray(test["joints_3d"], np.float64)[np.asarray(test["hand_valid"])]
    expected = np.mean([np.linalg.norm(mean_rr - (j - j[0]), axis=-1).mean() for j in test_j]) * 1000
    base = result["baselines"]
    assert base["hand_root_relative_mpjpe"] == pytest.approx(expected, rel=1e-5)
    ov = np.asarray(train["obj_valid"])
    mean_t = np.asarray(train["obj_t"], np.float64)[ov].mean(axis=0)
    test_t = np.asarray(test["obj_t"], np.float64)[np.asarray(test["obj_valid"])]
    expected_t = np.linalg.norm(test_t - mean_t, axis=-1).mean() * 1000
    assert base["object_translation_error"] == pytest.approx(expected_t, rel=1e-5)

    # grasped objects alone: the training split's mean grasped-object translation
    def grasped_t(labels: dict) -> np.ndarray:
        g = np.asarray(labels["grasped"])
        rows = np.nonzero(g >= 0)[0]
        return np.asarray(labels["obj_t"], np.float64)[rows, g[rows]]

    expected_g = np.linalg.norm(grasped_t(test) - grasped_t(train).mean(axis=0), axis=-1).mean() * 1000
    assert base["object_translation_error_grasped"] == pytest.approx(expected_g, rel=1e-5)


def test_collapse_ratio_of_scaled_predictions() -> None:
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(50, 21, 3))
    assert collapse_ratio(gt * 0.5, gt) == pytest.approx(0.5)
    assert collapse_ratio(np.repeat(gt[:1], 50, axis=0), gt) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def noisy_report(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    result = _evaluate(NoisyModel(), caches)
    out = tmp_path_factory.mktemp("report")
    reader = DexYCB(caches["root"], "s0_test", load_image=False)
    bop_ids = [(int(reader.scene_id[i]), int(reader.im_id[i])) for i in result["predictions"].index]
    info = provenance(None, {"preset": "tiny"}, caches["root"], "s0_test", synthetic_data=True)
    write_report(result, out, info, bop_ids=bop_ids)
    return result, out


def test_report_json_holds_every_section(noisy_report: tuple[dict, Path]) -> None:
    result, out = noisy_report
    report = json.loads((out / REPORT_JSON).read_text())
    for key in ("hand", "objects", "contacts", "collapse_ratio", "baselines", "provenance"):
        assert key in report
    assert set(report["hand"]) == {"absolute", "root-relative", "procrustes"}
    assert report["synthetic_data"] is True
    assert set(report["baselines"]) >= {"hand_root_relative_mpjpe", "object_translation_error"}
    assert report["hand"]["root-relative"]["mpjpe"] == pytest.approx(result["hand"]["root-relative"]["mpjpe"])
    assert "no ground truth" in report["contacts"]["forces"]
    for key in ("checkpoint", "config", "data_root", "split", "machine", "date"):
        assert key in report["provenance"]
    assert (out / "pck_curves.png").stat().st_size > 0
    assert "| alignment" in (out / "report.md").read_text()


def test_rescoring_the_submission_reproduces_the_report(noisy_report: tuple[dict, Path], caches) -> None:
    result, out = noisy_report
    pred = result["predictions"]
    lines = (out / HPE_SUBMISSION).read_text().splitlines()
    assert len(lines) == len(pred) and all(len(line.split(",")) == 64 for line in lines)
    valid = pred.gt["hand_valid"]
    gt_m = {int(i): j for i, j in zip(pred.index[valid], pred.gt["joints_3d"][valid])}
    rescored = submission.score_hpe_submission(out / HPE_SUBMISSION, gt_m)
    for alignment, numbers in result["hand"].items():
        assert rescored[alignment]["mpjpe"] == pytest.approx(numbers["mpjpe"], abs=1e-4)
        assert rescored[alignment]["auc"] == pytest.approx(numbers["auc"], abs=1e-6)


def test_bop_csv_has_the_bop19_header_and_mm_translations(noisy_report: tuple[dict, Path]) -> None:
    result, out = noisy_report
    pred = result["predictions"]
    with open(out / BOP_CSV, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["scene_id", "im_id", "obj_id", "score", "R", "t", "time"]
    none = pred.obj_prob.shape[-1] - 1
    expected = [
        (i, q) for i in range(len(pred)) for q in range(pred.obj_prob.shape[1]) if pred.obj_prob[i, q].argmax() != none
    ]
    assert len(rows) - 1 == len(expected)
    for row, (i, q) in zip(rows[1:], expected):
        obj_id = int(row[2])
        assert obj_id == pred.obj_prob[i, q].argmax() + 1
        R = np.array(row[4].split(), float).reshape(3, 3)
        t_mm = np.array(row[5].split(), float)
        np.testing.assert_allclose(R, pred.obj_R[i, q], atol=1e-5)
        # The official evaluator's offset: t_bop = t - R o (mm).
        t_dexycb = t_mm + R @ np.asarray(BOP_OFFSETS_MM[obj_id])
        np.testing.assert_allclose(t_dexycb, pred.obj_t[i, q] * 1000, atol=1e-2)
        assert float(row[6]) == -1


def test_eval_cli_errors_name_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str], caches) -> None:
    from amt.evaluation.cli import main

    missing = tmp_path / "nope"
    assert main([str(missing), "--data", str(caches["root"])]) == 1
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.yaml").write_text("preset: tiny\n")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main([str(corrupt), "--data", str(caches["root"])]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and str(corrupt) in err


def test_eval_cli_writes_the_report(tmp_path: Path, caches: dict[str, Path], capsys) -> None:
    from amt.evaluation.cli import main
    from amt.models import build_model

    ckpt = tmp_path / "ckpt"
    build_model("tiny", image_size=112).save_pretrained(ckpt)
    out = tmp_path / "report"
    rc = main([str(ckpt), "--data", str(caches["root"]), "--cache", str(caches["s0_test"]),
               "--train-cache", str(caches["s0_train"]), "--out", str(out), "--batch-size", "8"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| alignment" in printed and "baseline" in printed
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["provenance"]["checkpoint"] == str(ckpt.resolve())
    assert report["baselines"]["hand_root_relative_mpjpe"] > 0
    assert (out / BOP_CSV).exists() and (out / HPE_SUBMISSION).exists()


@pytest.mark.parametrize("scale", [1, 3])
def test_overlay_draws_joints_where_they_project(scale: int) -> None:
    from amt.evaluation.report import draw_hand_objects

    K = np.array([[100.0, 0, 30], [0, 100.0, 40], [0, 0, 1]])
    joints = np.zeros((21, 3))
    joints[:, 2] = 0.5
    joints[:, 0] = np.linspace(-0.1, 0.1, 21)  # a row of joints along x
    picture = np.asarray(draw_hand_objects(np.zeros((80, 80, 3), np.uint8), K, joints, [], scale=scale))
    assert picture.shape == (80 * scale, 80 * scale, 3)
    for x, y, z in joints[[0, 10, 20]]:
        u, v = 100 * x / z + 30, 100 * y / z + 40
        # pixel centres scale as u' = s (u + 0.5) - 0.5
        col, row = round(scale * (u + 0.5) - 0.5), round(scale * (v + 0.5) - 0.5)
        assert picture[row, col].min() == 255
