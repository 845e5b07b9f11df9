"""The dataset interface (`open_dataset`) and the plain-folder format: exact round trips from a
DexYCB tree, joint-order conversion, validation errors naming file and field, and the README's
10-line example cached end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amt.cli import main as amt_main
from amt.data.cache import build_cache, open_cache, read_cache_meta
from amt.data.dataset import (
    SAMPLE_KEYS,
    DatasetError,
    HandObjectDataset,
    check_sample,
    dataset_class,
    open_dataset,
)
from amt.data.dexycb import DexYCB
from amt.data.folder import (
    FolderDataset,
    FolderError,
    from_dexycb_order,
    to_dexycb_order,
    write_folder,
)
from amt.data.testing import write_fake_dexycb
from amt.geometry.hand_skeleton import JOINT_NAMES


@pytest.fixture(scope="module")
def dexycb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Subject 7 (split s1_val), 2 sequences x 8 cameras x 2 frames; every 2nd frame has no hand."""
    root = tmp_path_factory.mktemp("dex")
    return write_fake_dexycb(root, subjects=[6], sequences_per_subject=2, frames=2, no_hand_every=2, seed=4)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b


@pytest.mark.parametrize(("per_frame_json", "joint_order"), [(False, "dexycb"), (True, "ho3d")])
def test_a_dexycb_split_written_as_folder_reads_back_exactly(dexycb_root, tmp_path, per_frame_json, joint_order):
    source = open_dataset("dexycb", dexycb_root, "s1_val")
    out = write_folder(source, tmp_path / "f", per_frame_json=per_frame_json, joint_order=joint_order)
    copy = open_dataset("folder", out, "s1_val")
    assert isinstance(copy, HandObjectDataset) and isinstance(source, HandObjectDataset)
    assert copy.splits == ("s1_val",) and copy.joint_order == joint_order
    assert len(copy) == len(source) == 32
    for i in range(len(source)):
        a, b = source[i], copy[i]
        for key in set(SAMPLE_KEYS) - {"color_file", "label_file"}:
            assert _same(a[key], b[key]), (i, key)
        assert np.array_equal(a["color"], b["color"])
        assert np.array_equal(copy.sample_intrinsics(i), source.sample_intrinsics(i))
    assert sum(not source[i]["hand_valid"] for i in range(len(source))) == 16
    if per_frame_json:
        assert len(list((out / "s1_val" / "annotations").glob("*.json"))) == 32
    else:
        assert len((out / "s1_val" / "annotations.jsonl").read_text().splitlines()) == 32


def test_joint_orders_convert_both_ways():
    joints = np.arange(63, dtype=np.float64).reshape(21, 3)
    ho3d = from_dexycb_order(joints, "ho3d")
    assert np.array_equal(to_dexycb_order(ho3d, "ho3d"), joints)
    # HO-3D / MANO order: 0 wrist, 1-3 index, 4-6 middle, 7-9 little, 10-12 ring, 13-15 thumb, 16-20 tips
    names = [JOINT_NAMES[int(k)] for k in ho3d[:, 0] // 3]
    assert names[:5] == ["wrist", "index_mcp", "index_pip", "index_dip", "middle_mcp"]
    assert names[13:] == ["thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip", "index_tip", "middle_tip",
                          "ring_tip", "little_tip"]  # fmt: skip


PLUGIN = """
from amt.data.folder import FolderDataset


class Mine(FolderDataset):
    source = "a user's reader: here the plain-folder one under another name"


class MillimetreJoints(FolderDataset):  # a user's reader that forgot to convert millimetres
    def __getitem__(self, i):
        sample = super().__getitem__(i)
        return {**sample, "joint_3d": sample["joint_3d"] * 1000}


class FirstInMillimetres(FolderDataset):
    def __getitem__(self, i):
        sample = super().__getitem__(i)
        return {**sample, "joint_3d": sample["joint_3d"] * (1000 if i == 0 else 1)}


class NoJoints2d(FolderDataset):
    def __getitem__(self, i):
        sample = super().__getitem__(i)
        del sample["joint_2d"]
        return sample


class NotADataset:
    def __init__(self, root, split, load_image=True):
        self.root, self.split = root, split
"""


def test_open_dataset_resolves_names_and_python_classes(dexycb_root, tmp_path, monkeypatch):
    assert dataset_class("dexycb") is DexYCB and dataset_class("folder") is FolderDataset
    out = write_folder(open_dataset("dexycb", dexycb_root, "s1_val"), tmp_path / "f")
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = open_dataset("python:my_plugin.Mine", out, "s1_val", load_image=False)
    assert len(custom) == 32 and "color" not in custom[0] and type(custom).__name__ == "Mine"
    with pytest.raises(DatasetError, match="unknown data format 'coco'"):
        open_dataset("coco", out, "s1_val")
    with pytest.raises(DatasetError, match="cannot import"):
        open_dataset("python:no_such_module.Data", out, "s1_val")
    with pytest.raises(DatasetError, match=r"NotADataset lacks \['splits', 'models_dir'"):
        open_dataset("python:my_plugin.NotADataset", out, "s1_val")


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        (
            "MillimetreJoints",
            r"MillimetreJoints\[0\] \(.*annotations.jsonl:1\): sample\['joint_3d'\] spans .* \(millimetres\?",
        ),
        ("NoJoints2d", r"NoJoints2d\[0\] \(.*\): the sample lacks \['joint_2d'\]"),
    ],
)
def test_a_python_readers_bad_samples_are_skipped_and_named(tmp_path, monkeypatch, capsys, reader, message):
    root = _write_example(tmp_path / "mine", [{"K": K, "joints_3d": _hand()}, {"K": K, "joints_3d": _hand()}])
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["cache", str(root), "--format", f"python:my_plugin.{reader}", "--split", "train", "--workers", "1"]
    # every sample bad (a reader's systematic mistake): the build stops with one line naming the first
    assert amt_main(argv) == 1
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("amt cache: ") and "every one of the 2 samples" in last and "Traceback" not in err, err
    assert re.search(message, last), last
    # one bad sample among good ones: skipped, named in the cache's record and on the console
    argv[3] = "python:my_plugin.FirstInMillimetres"
    assert amt_main([*argv, "--out", str(tmp_path / "cache")]) == 0
    assert re.search(r"skipped row 0: FirstInMillimetres\[0\] .*\(millimetres\?", capsys.readouterr().out)
    assert [entry["row"] for entry in read_cache_meta(tmp_path / "cache")["skipped"]] == [0]


def test_check_sample_names_what_is_wrong(tmp_path):
    root = _write_example(tmp_path / "mine", [{"K": K, "joints_3d": _hand(), "objects": []}])
    good = open_dataset("folder", root, "train")[0]
    check_sample(good, "here")
    for change, message in [
        ({"K": np.eye(2)}, r"here: sample\['K'\] has shape \(2, 2\), expected \(3, 3\)"),
        ({"joint_2d": np.full((21, 2), np.nan)}, r"sample\['joint_2d'\] contains NaN"),
        ({"joint_3d": np.zeros((21, 3))}, r"sample\['joint_3d'\] spans 0 between"),
        ({"color": good["color"].astype(np.float32)}, r"sample\['color'\] must be an \(H, W, 3\) uint8 RGB array"),
        ({"ycb_ids": [1]}, r"sample\['obj_pose'\] has shape \(0, 3, 4\), expected \(1, 3, 4\)"),
        (
            {"ycb_ids": [1], "obj_pose": np.c_[np.eye(3), [0, 0, 800.0]][None], "obj_pose_valid": np.ones(1, bool)},
            r"sample\['obj_pose'\]\[0\] puts the object 800 from the camera",
        ),
    ]:
        with pytest.raises(DatasetError, match=message):
            check_sample({**good, **change}, "here")
    check_sample({**good, "hand_valid": False, "joint_3d": -np.ones((21, 3))}, "here")  # no hand: not checked
    with pytest.raises(DatasetError, match="must be a dict, got list"):
        check_sample([good], "here")


# --- the README example and validation ----------------------------------------------------------
K = [[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]]


def _hand(z: float = 0.5) -> list[list[float]]:
    rng = np.random.default_rng(0)
    return (rng.normal(0, 0.03, size=(21, 3)) + [0.0, 0.0, z]).tolist()


def _write_example(root: Path, records: list[dict], split: str = "train") -> Path:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    for k, rec in enumerate(records):
        rec.setdefault("image", f"images/{k:04d}.png")
        image = np.full((480, 640, 3), 40 * k % 255, np.uint8)
        Image.fromarray(image).save(root / split / rec["image"])
    (root / split / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_readme_example_without_objects_caches_end_to_end(tmp_path):
    root = _write_example(tmp_path / "mine", [{"K": K, "joints_3d": _hand()}, {"K": K, "joints_3d": None}])
    data = open_dataset("folder", root, "train")
    s = data[0]
    uvw = np.asarray(s["joint_3d"], np.float64) @ np.asarray(K).T
    np.testing.assert_allclose(s["joint_2d"], uvw[:, :2] / uvw[:, 2:], rtol=1e-6)  # projected when absent
    assert s["ycb_ids"] == [] and not s["mano_betas_valid"] and s["side"] == "right"
    assert not data[1]["hand_valid"]
    cache = open_cache(build_cache(root, "train", tmp_path / "cache", size=64, workers=1, progress=False,
                                   format="folder"))  # fmt: skip
    assert len(cache) == 2 and bool(cache.labels["hand_valid"][0]) and not cache.labels["obj_valid"].any()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"joints_3d": None}, r"annotations.jsonl:1: missing field 'K'"),
        ({"K": [[1, 0], [0, 1]]}, r"annotations.jsonl:1: field 'K' has shape \(2, 2\)"),
        ({"K": K, "joints_3d": [[0.0, 0.0, 0.5]] * 20}, r"field 'joints_3d' has shape \(20, 3\)"),
        ({"K": K, "joints_3d": [[float("nan"), 0.0, 0.5]] * 21}, r"field 'joints_3d' contains NaN"),
        ({"K": K, "joints_3d": (-np.asarray(_hand())).tolist()}, r"field 'joints_3d' lies behind the camera"),
        # unit mistakes: millimetres, and placeholder joints all at one point
        (
            {"K": K, "joints_3d": (1000 * np.asarray(_hand())).tolist()},
            r"'joints_3d' spans .* metres are expected \(millimetres\?",
        ),
        ({"K": K, "joints_3d": [[0.0, 0.0, 0.5]] * 21}, r"field 'joints_3d' spans 0 between its farthest joints"),
        (
            {"K": K, "objects": [{"class": 3, "pose": np.c_[np.eye(3), [0, 0, 600.0]].tolist()}]},
            r"field 'objects\[0\].pose' puts the object 600 from the camera; .*millimetres",
        ),
        ({"K": K, "joint_order": "coco"}, r"field 'joint_order' is 'coco'"),
        ({"K": K, "side": "both"}, r"field 'side' must be"),
        ({"K": K, "objects": [{"class": 99}]}, r"field 'objects\[0\].class' must be a YCB class id"),
        (
            {"K": K, "objects": [{"class": 3, "pose": np.eye(3, 4).tolist()}]},
            r"'objects\[0\].class' = 3 needs the mesh",
        ),
        ({"K": K, "objects": [{"class": 3, "pose": None}], "grasped": 2}, r"field 'grasped' must index 'objects'"),
        ({"K": K, "mano": {"betas": [0.0] * 9}}, r"mano: field 'betas' has shape \(9,\)"),
        ({"K": K, "frame": "one"}, r"field 'frame' must be a int"),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, record, message):
    root = _write_example(tmp_path / "bad", [record])
    with pytest.raises(FolderError, match=message):
        open_dataset("folder", root, "train")


def test_bad_files_name_the_file(tmp_path):
    root = _write_example(tmp_path / "d", [{"K": K, "joints_3d": _hand()}, {"K": K, "joints_3d": _hand()}])
    (root / "train" / "images" / "0000.png").unlink()
    (root / "train" / "images" / "0001.png").write_bytes(b"\x89PNG truncated")
    data = open_dataset("folder", root, "train")
    with pytest.raises(FolderError, match=r"0000.png: image file not found"):
        data[0]
    with pytest.raises(FolderError, match=r"0001.png: corrupt or unreadable image"):
        data[1]
    with pytest.raises(FolderError, match=r"split folder not found \(splits here: \['train'\]\)"):
        open_dataset("folder", root, "val")
    (root / "train" / "annotations.jsonl").write_text('{"K": ' + json.dumps(K) + ', "image": "x.png"}\n{oops\n')
    with pytest.raises(FolderError, match=r"annotations.jsonl:2: not valid JSON"):
        open_dataset("folder", root, "train")
    (root / "dataset.json").write_text('{"joint_order": "xyz"}')
    with pytest.raises(FolderError, match=r"dataset.json: field 'joint_order' is 'xyz'"):
        open_dataset("folder", root, "train")


def test_amt_cache_prints_one_line_for_a_bad_folder(tmp_path, capsys):
    root = _write_example(tmp_path / "bad", [{"K": K, "joints_3d": [[0.0, 0.0, 0.5]] * 3}])
    assert amt_main(["cache", str(root), "--format", "folder", "--split", "train"]) == 1
    err = capsys.readouterr().err.strip()
    assert "annotations.jsonl:1: field 'joints_3d' has shape (3, 3)" in err and "Traceback" not in err


def test_the_readme_example_writes_a_dataset_that_trains(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Your own data") :]
    code = section[section.index("```python") + len("```python") : section.index("```", section.index("```python") + 9)]
    assert len(code.strip().splitlines()) <= 12

    def my_frames():
        for k in range(3):
            yield np.full((480, 640, 3), 60 * k, np.uint8), (_hand() if k != 1 else None)

    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"my_frames": my_frames})
    data = open_dataset("folder", tmp_path / "mine", "train")
    assert len(data) == 3 and data[0]["hand_valid"] and not data[1]["hand_valid"]
    cache = open_cache(build_cache(tmp_path / "mine", "train", tmp_path / "c", size=64, workers=1, progress=False,
                                   format="folder"))  # fmt: skip
    assert cache.labels["hand_valid"].tolist() == [True, False, True]
