"""Tests for amt.data.dexycb (reader, official splits, robustness) and amt.data.testing."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from amt.data.dexycb import SERIALS, SUBJECTS, DexYCB, DexYCBError, load_intrinsics
from amt.data.testing import write_fake_dexycb

REAL_SERIAL = "836212060125"


# --------------------------------------------------------------------------- real frame
@pytest.fixture(scope="module")
def real_root(shared_data, tmp_path_factory) -> Path:
    """The real frame as sample 0 of s0_train: subject 01, first sequence, serial 836212060125, frame 0."""
    src = shared_data / "dexycb_real_frame"
    root = write_fake_dexycb(
        tmp_path_factory.mktemp("real"), subjects=10, sequences_per_subject=1, serials=8, frames=1,
        labels=False, images=False, models=False,
    )  # fmt: skip
    shutil.copy(src / f"{REAL_SERIAL}_640x480.yml", root / "calibration" / "intrinsics" / f"{REAL_SERIAL}_640x480.yml")
    seq_dir = sorted((root / SUBJECTS[0]).iterdir())[0]
    meta = yaml.safe_load((seq_dir / "meta.yml").read_text())
    meta.update(ycb_ids=[5, 6, 13, 18], ycb_grasp_ind=1)
    (seq_dir / "meta.yml").write_text(yaml.safe_dump(meta))
    shutil.copy(src / "labels.npz", seq_dir / REAL_SERIAL / "labels_000000.npz")
    Image.open(src / "color.png").convert("RGB").save(seq_dir / REAL_SERIAL / "color_000000.jpg", quality=95)
    return root


def test_real_frame_labels_are_returned_exactly(real_root, shared_data):
    ds = DexYCB(real_root, "s0_train")
    sample = ds[0]
    assert (sample["subject"], sample["serial"], sample["frame"]) == (SUBJECTS[0], REAL_SERIAL, 0)
    ref = np.load(shared_data / "dexycb_real_frame" / "labels.npz")
    np.testing.assert_array_equal(sample["seg"], ref["seg"])
    np.testing.assert_array_equal(sample["obj_pose"], ref["pose_y"])
    np.testing.assert_array_equal(sample["pose_m"], ref["pose_m"][0])
    np.testing.assert_array_equal(sample["joint_3d"], ref["joint_3d"][0])
    np.testing.assert_array_equal(sample["joint_2d"], ref["joint_2d"][0])
    assert sample["obj_pose_valid"].all() and sample["hand_valid"]
    assert sample["ycb_ids"] == [5, 6, 13, 18] and sample["grasp_index"] == 1
    assert sample["obj_pose"].dtype == np.float32 and sample["K"].dtype == np.float32


def test_real_frame_joint_2d_is_projection_with_parsed_intrinsics(real_root):
    sample = DexYCB(real_root, "s0_train", load_image=False)[0]
    assert "color" not in sample
    K = sample["K"].astype(np.float64)
    assert K[0, 0] == pytest.approx(616.640869140625) and K[1, 2] == pytest.approx(248.52310180664062)
    uvw = sample["joint_3d"].astype(np.float64) @ K.T
    np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], sample["joint_2d"], atol=1e-3)


def test_real_frame_color_decodes_as_rgb_jpeg(real_root, shared_data):
    color = DexYCB(real_root, "s0_train")[0]["color"]
    ref = np.asarray(Image.open(shared_data / "dexycb_real_frame" / "color.png").convert("RGB"))
    assert color.shape == (480, 640, 3) and color.dtype == np.uint8
    assert np.abs(color.astype(int) - ref.astype(int)).mean() < 3.0  # JPEG q95 round trip


def test_intrinsics_python_tuple_tag_is_parsed_without_unsafe_load(shared_data):
    path = shared_data / "dexycb_real_frame" / f"{REAL_SERIAL}_640x480.yml"
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(path.read_text())
    K = load_intrinsics(path)
    np.testing.assert_allclose(
        K, [[616.640869140625, 0, 308.548095703125], [0, 616.2581787109375, 248.52310180664062], [0, 0, 1]]
    )


# --------------------------------------------------------------------------- fake tree
def test_fake_tree_labels_project_consistently_and_sides_follow_meta(fake_dexycb):
    ds = DexYCB(fake_dexycb, "s0_train")
    for i in range(0, len(ds), 37):
        s = ds[i]
        uvw = s["joint_3d"].astype(np.float64) @ s["K"].astype(np.float64).T
        np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], s["joint_2d"], atol=1e-3)
        assert s["color"].shape == (480, 640, 3) and s["index"] == i
        assert s["obj_pose"].shape == (len(s["ycb_ids"]), 3, 4) and s["mano_betas_valid"]
        assert s["is_left"] == (s["side"] == "left")
        assert set(np.unique(s["seg"])) <= {0, 255, *s["ycb_ids"]}
    assert {ds[i]["side"] for i in range(0, 64, 8)} == {"left", "right"}


def test_fake_tree_frames_without_hand_are_flagged(tmp_path):
    root = write_fake_dexycb(tmp_path, subjects=[6], sequences_per_subject=1, frames=2, no_hand_every=2, images=False)
    ds = DexYCB(root, "s1_val", load_image=False)
    valid = [ds[i]["hand_valid"] for i in range(len(ds))]
    assert valid == [True, False] * 8
    assert np.all(ds[1]["joint_3d"] == -1)


def test_sample_metadata_needs_no_label_files(fake_dexycb, tmp_path):
    root = write_fake_dexycb(tmp_path, subjects=10, sequences_per_subject=5, frames=3, labels=False, images=False)
    ds = DexYCB(root, "s0_test")
    assert len(ds) == 8 * 1 * 8 * 3 and len(ds.records) == len(ds)
    m = ds.meta(5)
    assert ds.records[5] == m and ds.records[-1] == ds.meta(len(ds) - 1)
    assert (m.subject, m.serial, m.frame) == (SUBJECTS[2], SERIALS[1], 2)
    assert m.label_file.endswith(f"{SERIALS[1]}/labels_000002.npz") and not Path(m.label_file).exists()
    with pytest.raises(DexYCBError, match="labels_000002.npz"):
        ds[5]


# --------------------------------------------------------------------------- splits
# The official rules, written independently of amt.data.dexycb: split -> (subjects, serials, keep(seq)).
_ORACLE_RULES = {
    "s0_train": (range(10), range(8), lambda i: i % 5 != 4),
    "s0_val": ([0, 1], range(8), lambda i: i % 5 == 4),
    "s0_test": (range(2, 10), range(8), lambda i: i % 5 == 4),
    "s1_train": ([0, 1, 2, 3, 4, 5, 9], range(8), lambda i: True),
    "s1_val": ([6], range(8), lambda i: True),
    "s1_test": ([7, 8], range(8), lambda i: True),
    "s2_train": (range(10), range(6), lambda i: True),
    "s2_val": (range(10), [6], lambda i: True),
    "s2_test": (range(10), [7], lambda i: True),
    "s3_train": (range(10), range(8), lambda i: i // 5 not in (3, 7, 11, 15, 19)),
    "s3_val": (range(10), range(8), lambda i: i // 5 in (3, 19)),
    "s3_test": (range(10), range(8), lambda i: i // 5 in (7, 11, 15)),
}
# (sequences, serials) per split in the full dataset; BOP scene counts s0 1280, s1 1600, s2 1000, s3 1200.
_VIEWS = {
    "s0_train": 800 * 8, "s0_val": 40 * 8, "s0_test": 160 * 8, "s1_train": 700 * 8, "s1_val": 100 * 8,
    "s1_test": 200 * 8, "s2_train": 1000 * 6, "s2_val": 1000, "s2_test": 1000, "s3_train": 750 * 8,
    "s3_val": 100 * 8, "s3_test": 150 * 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def full_index_tree(tmp_path_factory):
    frames = [1 + (k * 7) % 2 + (k % 11 == 0) * 4 for k in range(1000)]  # 1, 2 and some 5/6 (BOP keyframes)
    root = write_fake_dexycb(
        tmp_path_factory.mktemp("full"), subjects=10, sequences_per_subject=100, serials=8, frames=frames,
        labels=False, images=False, models=False,
    )  # fmt: skip
    return root, frames


@pytest.mark.parametrize("split", sorted(_ORACLE_RULES))
def test_split_membership_and_index_order_match_brute_force_oracle(full_index_tree, split):
    root, frames = full_index_tree
    subjects, serials, keep = _ORACLE_RULES[split]
    expected = []  # (subject, sequence, serial, frame, scene_id, is_bop_target, is_grasp_target)
    seq_pos = 0
    for s in subjects:
        names = sorted(p.name for p in (root / SUBJECTS[s]).iterdir())
        for i, name in enumerate(names):
            if not keep(i):
                continue
            nf = frames[s * 100 + i]
            for c_pos, c in enumerate(serials):
                for f in range(nf):
                    bop = split.endswith("test") and f % 4 == 0
                    expected.append(
                        (SUBJECTS[s], name, SERIALS[c], f, seq_pos * len(serials) + c_pos, bop, bop and f + 4 >= nf)
                    )
            seq_pos += 1
    ds = DexYCB(root, split)
    got = [
        (m.subject, m.sequence, m.serial, m.frame, m.scene_id, m.is_bop_target, m.is_grasp_target) for m in ds.records
    ]
    assert got == expected
    assert len({(m.scene_id) for m in ds.records}) == _VIEWS[split]
    assert all(m.index == i and m.im_id == m.frame for i, m in enumerate(ds.records[:50]))


def test_full_size_split_counts_follow_official_rules(full_index_tree):
    root, frames = full_index_tree
    frames = np.array(frames).reshape(10, 100)
    pos = np.arange(100)
    assert len(DexYCB(root, "s0_train")) == 8 * frames[:, pos % 5 != 4].sum()
    assert len(DexYCB(root, "s0_test")) == 8 * frames[2:, pos % 5 == 4].sum()
    assert len(DexYCB(root, "s1_val")) == 8 * frames[6].sum()
    assert len(DexYCB(root, "s2_train")) == 6 * frames.sum()


# --------------------------------------------------------------------------- robustness
@pytest.fixture
def small_root(tmp_path) -> Path:
    """Subject 6 only (split s1_val), 1 sequence, all serials, 1 frame: 8 samples."""
    return write_fake_dexycb(tmp_path / "ds", subjects=[6], sequences_per_subject=1, serials=8, frames=1, seed=3)


def _view(root: Path, serial: str = SERIALS[0]) -> Path:
    return next((root / SUBJECTS[6]).iterdir()) / serial


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DexYCBError, match="nowhere"):
        DexYCB(tmp_path / "nowhere", "s0_train")


def test_unknown_split_lists_valid_names(small_root):
    with pytest.raises(DexYCBError, match="s4_train.*s0_test"):
        DexYCB(small_root, "s4_train")


def test_missing_subject_folder_is_named(small_root):
    with pytest.raises(DexYCBError, match=f"{SUBJECTS[7]}.*not found"):
        DexYCB(small_root, "s1_test")


def test_missing_serial_folder_is_named(small_root):
    shutil.rmtree(_view(small_root, SERIALS[3]))
    with pytest.raises(DexYCBError, match=f"{SERIALS[3]}.*not found"):
        DexYCB(small_root, "s1_val")


def test_missing_meta_yml_is_named(small_root):
    (_view(small_root).parent / "meta.yml").unlink()
    with pytest.raises(DexYCBError, match=r"meta\.yml: file not found"):
        DexYCB(small_root, "s1_val")


def test_meta_yml_without_key_is_named(small_root):
    meta_file = _view(small_root).parent / "meta.yml"
    meta = yaml.safe_load(meta_file.read_text())
    del meta["num_frames"]
    meta_file.write_text(yaml.safe_dump(meta))
    with pytest.raises(DexYCBError, match=r"meta\.yml: missing key 'num_frames'"):
        DexYCB(small_root, "s1_val")


def test_missing_intrinsics_file_is_named(small_root):
    (small_root / "calibration" / "intrinsics" / f"{SERIALS[2]}_640x480.yml").unlink()
    with pytest.raises(DexYCBError, match=f"{SERIALS[2]}_640x480.yml"):
        DexYCB(small_root, "s1_val")


def test_missing_mano_calibration_gives_invalid_zero_betas(small_root):
    for mano in (small_root / "calibration").glob("mano_*"):
        shutil.rmtree(mano)
    sample = DexYCB(small_root, "s1_val", load_image=False)[0]
    assert not sample["mano_betas_valid"] and np.all(sample["mano_betas"] == 0)


def test_truncated_jpeg_is_named(small_root):
    jpg = _view(small_root) / "color_000000.jpg"
    jpg.write_bytes(jpg.read_bytes()[:2000])
    with pytest.raises(DexYCBError, match=r"color_000000\.jpg: corrupt or truncated"):
        DexYCB(small_root, "s1_val")[0]


def test_truncated_npz_is_named(small_root):
    npz = _view(small_root) / "labels_000000.npz"
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(DexYCBError, match=r"labels_000000\.npz: unreadable or truncated"):
        DexYCB(small_root, "s1_val")[0]


def _rewrite_labels(root: Path, **changes) -> None:
    npz = _view(root) / "labels_000000.npz"
    labels = dict(np.load(npz))
    labels.update(changes)
    np.savez_compressed(npz, **labels)


def test_nan_in_labels_is_named(small_root):
    joints = np.zeros((1, 21, 3), np.float32)
    joints[0, 4, 1] = np.nan
    _rewrite_labels(small_root, joint_3d=joints)
    with pytest.raises(DexYCBError, match=r"labels_000000\.npz: key 'joint_3d' contains NaN"):
        DexYCB(small_root, "s1_val")[0]


def test_wrong_shape_in_labels_is_named(small_root):
    _rewrite_labels(small_root, pose_y=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(
        DexYCBError, match=r"labels_000000\.npz: key 'pose_y' has shape \(2, 3, 4\), expected \(3, 3, 4\)"
    ):
        DexYCB(small_root, "s1_val")[0]


def test_wrong_seg_dtype_is_named(small_root):
    _rewrite_labels(small_root, seg=np.zeros((480, 640), np.float32))
    with pytest.raises(DexYCBError, match=r"labels_000000\.npz: key 'seg' has dtype float32, expected uint8"):
        DexYCB(small_root, "s1_val")[0]


def test_missing_label_key_is_named(small_root):
    npz = _view(small_root) / "labels_000000.npz"
    labels = dict(np.load(npz))
    del labels["pose_m"]
    np.savez_compressed(npz, **labels)
    with pytest.raises(DexYCBError, match=r"labels_000000\.npz: missing key.*pose_m"):
        DexYCB(small_root, "s1_val")[0]


def test_iter_samples_skips_bad_samples_logs_and_counts(small_root, caplog):
    (_view(small_root, SERIALS[1]) / "color_000000.jpg").write_bytes(b"not a jpeg")
    (_view(small_root, SERIALS[5]) / "labels_000000.npz").unlink()
    with pytest.raises(DexYCBError):
        list(DexYCB(small_root, "s1_val").iter_samples())
    ds = DexYCB(small_root, "s1_val", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="amt.data.dexycb"):
        indices = [s["index"] for s in ds.iter_samples()]
    assert indices == [0, 2, 3, 4, 6, 7] and ds.skipped == 2
    assert sum("skipping sample" in r.message for r in caplog.records) == 2
    assert any("color_000000.jpg" in m for m in ds.skip_messages)


# --------------------------------------------------------------------------- fuzz findings (issue 14)
def test_a_huge_declared_array_shape_is_refused_from_the_header(small_root):
    """A .npy header inside the npz declaring 10^11 rows: refused before any allocation."""
    npz = _view(small_root) / "labels_000000.npz"
    labels = dict(np.load(npz))
    labels["joint_3d"] = np.zeros((1000, 21, 3), np.float32)
    np.savez(npz, **labels)  # uncompressed: the header text is patchable (same length keeps the zip valid)
    npz.write_bytes(npz.read_bytes().replace(b"'shape': (1000, 21, 3)", b"'shape': (9999999999,)"))
    with pytest.raises(DexYCBError, match=r"labels_000000\.npz: key 'joint_3d' has shape \(9999999999,\)"):
        DexYCB(small_root, "s1_val")[0]


@pytest.mark.parametrize("dtype", ["<U3", "complex64"])
def test_a_non_numeric_label_dtype_is_named(small_root, dtype):
    _rewrite_labels(small_root, pose_m=np.zeros((1, 51), dtype))
    with pytest.raises(DexYCBError, match=rf"labels_000000\.npz: key 'pose_m' has dtype {dtype}"):
        DexYCB(small_root, "s1_val")[0]


@pytest.mark.parametrize("value", [".nan", "1e308", "-615.0", ".inf"])
def test_unusable_intrinsics_are_named(small_root, value):
    path = small_root / "calibration" / "intrinsics" / f"{SERIALS[0]}_640x480.yml"
    path.write_text(path.read_text().replace("  fx: ", f"  fx: {value}\n  old_fx: ", 1))
    with pytest.raises(DexYCBError, match=f"{SERIALS[0]}_640x480.yml: key 'color' must hold finite"):
        DexYCB(small_root, "s1_val")


@pytest.mark.parametrize("value", ["1000000000000", "true", "-3"])
def test_an_absurd_num_frames_is_named(small_root, value):
    meta = next((small_root / SUBJECTS[6]).iterdir()) / "meta.yml"
    meta.write_text(meta.read_text().replace("num_frames: 1", f"num_frames: {value}"))
    with pytest.raises(DexYCBError, match=r"meta\.yml: key 'num_frames' must be an int in 0\.\.100000"):
        DexYCB(small_root, "s1_val")


@pytest.mark.parametrize("text", [b"\xff\xfe not utf-8", b"[" * 5000, b"!!python/object/apply:os.system ['echo x']"])
def test_hostile_yaml_is_named(small_root, text):
    meta = next((small_root / SUBJECTS[6]).iterdir()) / "meta.yml"
    meta.write_bytes(text)
    with pytest.raises(DexYCBError, match=r"meta\.yml: "):
        DexYCB(small_root, "s1_val")


@pytest.mark.parametrize(("side", "message"), [(6000, "image is 6000x6000 pixels"), (60000, "image is not 640x480")])
def test_a_jpeg_declaring_a_huge_size_is_refused_before_decoding(small_root, side, message):
    jpg = _view(small_root) / "color_000000.jpg"
    data = jpg.read_bytes()
    i = data.find(b"\xff\xc0")
    jpg.write_bytes(data[: i + 5] + side.to_bytes(2, "big") * 2 + data[i + 9 :])
    with pytest.raises(DexYCBError, match=rf"color_000000\.jpg: {message}"):
        DexYCB(small_root, "s1_val")[0]
