"""The training cache (cache.py, cache_cli.py, loaders.py, transforms.py): crops, round trips,
refusal to overwrite, resume after an interruption, sharding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from amt.cli import main as amt_main
from amt.data.cache import IMAGES_FILE, LABEL_SPECS, META_FILE, PROGRESS_FILE, build_cache, make_record, open_cache
from amt.data.contacts import ContactConfig
from amt.data.dexycb import DexYCB
from amt.data.loaders import CachedDataset, GPUCachedDataset, make_loader
from amt.data.object_models import ObjectModels
from amt.data.testing import write_fake_dexycb
from amt.data.transforms import CropConfig, crop_and_resize, crop_intrinsics_for_box, normalize_images, to_crop_pixels
from amt.geometry.camera import project

SPLIT = "s0_val"  # subjects 0-1, sequence 4 of each, 8 serials
SIZE = 64
CHUNK = 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 s0_val samples (2 subjects x 1 sequence x 8 serials x 3 frames), every third without a hand."""
    root = tmp_path_factory.mktemp("cache_tree")
    return write_fake_dexycb(root, subjects=2, serials=8, frames=[0, 0, 0, 0, 3] * 2, no_hand_every=3, seed=3)


@pytest.fixture(scope="module")
def cache(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference cache, built in parallel (2 workers)."""
    out = tmp_path_factory.mktemp("caches") / "ref"
    return build_cache(tree, SPLIT, out, size=SIZE, workers=2, chunk_size=CHUNK, progress=False)


def _direct(tree: Path, i: int):
    """The record the reader + crop code produce for sample i, without the cache."""
    reader = DexYCB(tree, SPLIT)
    return make_record(reader[i], ObjectModels(reader.models_dir), CropConfig(size=SIZE), ContactConfig())


def _assert_same_arrays(a: Path, b: Path) -> None:
    ca, cb = open_cache(a), open_cache(b)
    np.testing.assert_array_equal(ca.images, cb.images)
    for key in LABEL_SPECS:
        np.testing.assert_array_equal(ca.labels[key], cb.labels[key], err_msg=key)
    assert ca.meta == cb.meta


@pytest.mark.parametrize("side", [32, 100, 256])
def test_crop_and_resize_puts_a_pixel_where_the_crop_intrinsics_project_it(side: int) -> None:
    image = np.zeros((120, 160, 3), np.uint8)
    x, y = 71, 52
    image[y - 1 : y + 2, x - 1 : x + 2] = 255  # 3x3 blob centred on (x, y)
    box = (x - side // 3, y - side // 2, side)
    crop = crop_and_resize(image, box, SIZE).astype(np.float64)[..., 0]
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    found = np.array([(crop * xs).sum(), (crop * ys).sum()]) / crop.sum()
    want = to_crop_pixels(np.array([x, y]), box, SIZE)
    np.testing.assert_allclose(found, want, atol=0.05)
    K = np.array([[500.0, 0, 80], [0, 510.0, 60], [0, 0, 1]])
    point = np.array([[0.03, -0.02, 0.5]])
    full = point @ K.T
    Kc = crop_intrinsics_for_box(K, box, SIZE)
    cropped = point @ Kc.T.astype(np.float64)
    np.testing.assert_allclose(
        cropped[:, :2] / cropped[:, 2:], to_crop_pixels(full[:, :2] / full[:, 2:], box, SIZE), atol=1e-3
    )


def test_cached_labels_project_consistently_and_hand_crops_contain_the_hand(cache: Path) -> None:
    c = open_cache(cache)
    hand = np.asarray(c.labels["hand_valid"])
    assert hand.any() and not hand.all()
    j3d, K = torch.from_numpy(np.array(c.labels["joints_3d"])), torch.from_numpy(np.array(c.labels["K"]))
    j2d = np.array(c.labels["joints_2d"])
    err = (project(j3d, K).numpy() - j2d)[hand]
    assert np.abs(err).max() < 1e-2
    assert (j2d[hand] > 0).all() and (j2d[hand] < SIZE).all()
    assert (np.asarray(c.labels["joints_3d"])[~hand] == 0).all()
    valid = np.asarray(c.labels["obj_valid"])
    assert (valid.sum(1) == 3).all() and (np.asarray(c.labels["obj_class"])[~valid] == 0).all()
    assert (np.asarray(c.labels["grasped"]) >= 0).all()
    assert not np.asarray(c.labels["contact_valid"])[~hand].any()


def test_round_trip_equals_reader_plus_crop_code_all_three_ways(tree: Path, cache: Path) -> None:
    n = len(DexYCB(tree, SPLIT, load_image=False))
    raw = {mode: CachedDataset(cache, mode=mode, normalize=False) for mode in ("disk", "memmap", "ram")}
    normalised = CachedDataset(cache, mode="disk")
    gpu = GPUCachedDataset(cache, "cpu", normalize=False)
    assert all(len(ds) == n for ds in raw.values()) and len(gpu) == n
    for i in (0, 2, 5, n - 1):  # frame 2 of a view has no hand
        image, labels, meta = _direct(tree, i)
        want_image = torch.from_numpy(image).permute(2, 0, 1)
        samples = {name: ds[i] for name, ds in raw.items()}
        samples["gpu"] = {k: v[0] for k, v in gpu.get(torch.tensor([i]), with_meta=True).items()}
        for name, sample in samples.items():
            torch.testing.assert_close(sample["image"], want_image, atol=0, rtol=0, msg=name)
            for key, value in labels.items():
                torch.testing.assert_close(sample[key], torch.from_numpy(value), atol=0, rtol=0, msg=f"{name} {key}")
            assert sample["meta"] == meta, name
        torch.testing.assert_close(normalised[i]["image"], normalize_images(want_image[None])[0])


def test_collate_builds_the_batch_contract(cache: Path) -> None:
    loader = make_loader(
        CachedDataset(cache, mode="memmap"), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    expected = {
        "K": ((5, 3, 3), torch.float32), "joints_3d": ((5, 21, 3), torch.float32),
        "joints_2d": ((5, 21, 2), torch.float32), "hand_valid": ((5,), torch.bool),
        "mano_pose": ((5, 48), torch.float32), "mano_shape": ((5, 10), torch.float32),
        "obj_R": ((5, 10, 3, 3), torch.float32), "obj_t": ((5, 10, 3), torch.float32),
        "obj_class": ((5, 10), torch.int64), "obj_valid": ((5, 10), torch.bool), "grasped": ((5,), torch.int64),
        "contact_points": ((5, 10, 3), torch.float32), "contact_valid": ((5, 10), torch.bool),
        "index": ((5,), torch.int64), "image_id": ((5,), torch.int64),
    }  # fmt: skip
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert len(batch["meta"]) == 5 and set(batch["meta"][0]) == {"subject", "sequence", "serial", "frame"}
    gpu_batch = next(GPUCachedDataset(cache, "cpu").batches(5, shuffle=False))
    assert {k: (v.shape, v.dtype) for k, v in gpu_batch.items()} == {
        k: (v.shape, v.dtype) for k, v in batch.items() if k != "meta"
    }


def test_shards_are_disjoint_and_cover_the_split(cache: Path) -> None:
    n = len(CachedDataset(cache))
    seen = []
    for rank in range(3):
        shard = CachedDataset(cache, mode="memmap", rank=rank, world_size=3)
        gpu = GPUCachedDataset(cache, "cpu", rank=rank, world_size=3)
        ids = [int(shard[i]["index"]) for i in range(len(shard))]
        gpu_ids = torch.cat([b["index"] for b in gpu.batches(4, shuffle=False)]).tolist()
        assert ids == gpu_ids
        seen += ids
    assert sorted(seen) == list(range(n))


def test_gpu_batches_shuffle_deterministically_and_drop_last(cache: Path) -> None:
    ds = GPUCachedDataset(cache, "cpu")
    epoch = lambda seed, drop: [b["index"] for b in ds.batches(7, True, torch.Generator().manual_seed(seed), drop)]
    a, b, c = epoch(0, False), epoch(0, False), epoch(1, False)
    assert sorted(torch.cat(a).tolist()) == list(range(len(ds)))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    dropped = epoch(0, True)
    assert all(len(x) == 7 for x in dropped) and len(dropped) == len(ds) // 7


def test_refuses_to_overwrite_a_complete_cache_without_force(tree: Path, cache: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(FileExistsError, match=str(cache)):
        build_cache(tree, SPLIT, cache, size=SIZE, workers=1, chunk_size=CHUNK, progress=False)
    out = tmp_path / "cli"
    args = ["cache", str(tree), "--split", SPLIT, "--out", str(out), "--size", str(SIZE), "--workers", "1"]
    assert amt_main(args) == 0
    assert amt_main(args) == 1
    assert str(out) in capsys.readouterr().err
    (out / IMAGES_FILE).write_bytes(b"")  # damage it; --force must rebuild from scratch
    assert amt_main(args + ["--force"]) == 0
    _assert_same_arrays(out, cache)


def test_resume_after_an_interruption_gives_identical_arrays(tree: Path, cache: Path, tmp_path: Path) -> None:
    """State on disk after a kill: some chunks recorded, the rest half-written, no meta.json."""
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / META_FILE).unlink()
    lines = (broken / PROGRESS_FILE).read_text().splitlines()
    kept = lines[:2]
    (broken / PROGRESS_FILE).write_text("\n".join(kept) + "\n" + lines[2][: len(lines[2]) // 2])  # torn last line
    finished = {json.loads(line)["chunk"] for line in kept}
    images = np.memmap(broken / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=open_cache(cache).images.shape)
    joints = np.load(broken / "labels" / "joints_3d.npy", mmap_mode="r+")
    for chunk in range(len(lines)):
        if chunk not in finished:
            images[chunk * CHUNK : (chunk + 1) * CHUNK] = 255
            joints[chunk * CHUNK : (chunk + 1) * CHUNK] = 7.0
    images.flush()
    joints.flush()
    del images, joints

    build_cache(tree, SPLIT, broken, size=SIZE, workers=1, chunk_size=CHUNK, progress=False)
    _assert_same_arrays(broken, cache)
    chunks = [json.loads(line)["chunk"] for line in (broken / PROGRESS_FILE).read_text().splitlines()]
    assert sorted(chunks) == list(range(len(lines)))  # each chunk recorded once: finished ones were not redone


def test_resume_with_other_parameters_is_refused(tree: Path, cache: Path, tmp_path: Path) -> None:
    broken = tmp_path / "other"
    shutil.copytree(cache, broken)
    (broken / META_FILE).unlink()
    with pytest.raises(ValueError, match="other parameters"):
        build_cache(tree, SPLIT, broken, size=SIZE + 16, workers=1, chunk_size=CHUNK, progress=False)


def test_frames_without_a_hand_are_cropped_around_the_grasped_object(tree: Path) -> None:
    reader = DexYCB(tree, SPLIT)
    models = ObjectModels(reader.models_dir)
    sample = reader[2]
    assert not sample["hand_valid"]
    _, labels, _ = make_record(sample, models, CropConfig(size=SIZE), ContactConfig())
    g = int(labels["grasped"])
    centre = labels["obj_t"][g] @ labels["K"].T
    u, v = centre[:2] / centre[2]
    assert 0.2 * SIZE < u < 0.8 * SIZE and 0.2 * SIZE < v < 0.8 * SIZE


def test_contacts_in_a_record_mark_the_touched_object(tree: Path) -> None:
    reader = DexYCB(tree, SPLIT)
    models = ObjectModels(reader.models_dir)
    sample = reader[0]
    assert sample["hand_valid"]
    # move object 1 so that its surface touches the index fingertip
    cid = sample["ycb_ids"][1]
    pts = models.points(cid)
    pose = sample["obj_pose"][1].copy()
    tip = sample["joint_3d"][8]
    pose[:, 3] = tip - pose[:, :3] @ pts[0]
    sample["obj_pose"] = sample["obj_pose"].copy()
    sample["obj_pose"][1] = pose
    sample["obj_pose"][2, :, 3] += [5.0, 0.0, 0.0]  # far away
    _, labels, _ = make_record(sample, models, CropConfig(size=SIZE), ContactConfig())
    assert labels["contact_valid"][1] and not labels["contact_valid"][2]
    assert np.linalg.norm(labels["contact_points"][1] - tip) < 1e-5


def test_a_build_that_crashes_midway_resumes_to_the_same_cache(
    tree: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import amt.data.cache as cache_module

    real = cache_module.make_record

    def crash_at_sample_20(sample, *args):
        if sample["index"] == 20:
            raise KeyboardInterrupt("simulated kill")
        return real(sample, *args)

    out = tmp_path / "crashed"
    monkeypatch.setattr(cache_module, "make_record", crash_at_sample_20)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tree, SPLIT, out, size=SIZE, workers=1, chunk_size=CHUNK, progress=False)
    assert not (out / META_FILE).exists()
    assert len((out / PROGRESS_FILE).read_text().splitlines()) == 20 // CHUNK
    monkeypatch.setattr(cache_module, "make_record", real)
    build_cache(tree, SPLIT, out, size=SIZE, workers=1, chunk_size=CHUNK, progress=False)
    _assert_same_arrays(out, cache)


def test_contacts_use_mano_vertices_when_a_mano_folder_is_given(tree: Path, tmp_path: Path) -> None:
    from amt.data.cache import load_mano_layers, mano_vertices
    from amt.geometry.hand_surface import skeleton_surface_points
    from amt.geometry.mano import write_fake_mano_pickle

    mano_dir = tmp_path / "mano"
    mano_dir.mkdir()
    write_fake_mano_pickle(mano_dir / "MANO_RIGHT.pkl", seed=0)
    write_fake_mano_pickle(mano_dir / "MANO_LEFT.pkl", seed=1)
    layers = load_mano_layers(mano_dir)
    reader = DexYCB(tree, SPLIT)
    models = ObjectModels(reader.models_dir)
    sample = reader[0]
    verts = mano_vertices(sample, layers)
    assert verts is not None and verts.shape == (778, 3)
    skeleton = skeleton_surface_points(torch.from_numpy(sample["joint_3d"])).numpy()
    gap = np.linalg.norm(verts[:, None] - skeleton[None], axis=-1).min(axis=1)
    v = verts[int(np.argmax(gap))]  # the vertex farthest from every skeleton point
    assert gap.max() > 0.02
    # object 1 touches that vertex with one surface point; object 2 is far away
    pts = models.points(sample["ycb_ids"][1])
    R = sample["obj_pose"][1, :, :3]
    sample["obj_pose"] = sample["obj_pose"].copy()
    sample["obj_pose"][1, :, 3] = v - R @ pts[0]
    posed = pts @ R.T + sample["obj_pose"][1, :, 3]
    if np.linalg.norm(posed[:, None] - skeleton[None], axis=-1).min() <= 0.01:
        pytest.skip("this random object shape reaches the skeleton; the check needs a clear gap")
    sample["obj_pose"][2, :, 3] += [5.0, 0.0, 0.0]
    _, with_mano, _ = make_record(sample, models, CropConfig(size=SIZE), ContactConfig(), layers)
    _, without, _ = make_record(sample, models, CropConfig(size=SIZE), ContactConfig())
    assert with_mano["contact_valid"][1] and not without["contact_valid"][1]
    assert np.linalg.norm(with_mano["contact_points"][1] - v) < 1e-5

    out = build_cache(
        tree, SPLIT, tmp_path / "mano_cache", size=SIZE, workers=1, chunk_size=64, mano_dir=mano_dir, progress=False
    )
    cached = open_cache(out)
    for i in (0, 1, 4):
        _, labels, _ = make_record(reader[i], models, CropConfig(size=SIZE), ContactConfig(), layers)
        np.testing.assert_array_equal(cached.labels["contact_valid"][i], labels["contact_valid"])
        np.testing.assert_array_equal(cached.labels["contact_points"][i], labels["contact_points"])


def test_an_empty_split_is_an_error_naming_the_split(tmp_path: Path) -> None:
    root = write_fake_dexycb(tmp_path / "data", subjects=2, serials=8, frames=[1, 1, 1, 1, 0] * 2, seed=0)
    with pytest.raises(ValueError, match=SPLIT):
        build_cache(root, SPLIT, tmp_path / "cache", size=SIZE, workers=1, progress=False)
