"""Caches that cannot be half-built (issue 14): a build killed at any moment, or a cache whose
files were truncated, removed or altered afterwards, is never read as complete; the next use
resumes or rebuilds it to the same arrays, or refuses with a CacheError naming the file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amt.cli import main as amt_main
from amt.data.cache import (
    BUILD_FILE,
    IMAGES_FILE,
    LABEL_SPECS,
    LABELS_DIR,
    META_FILE,
    PROGRESS_FILE,
    CacheError,
    build_cache,
    cache_problem,
    ensure_cache,
    open_cache,
)
from amt.data.loaders import CachedDataset, GPUCachedDataset
from amt.data.testing import write_fake_dexycb

SPLIT, SIZE, CHUNK = "s0_val", 32, 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 s0_val samples: 2 subjects x 1 sequence x 8 serials x 4 frames."""
    return write_fake_dexycb(tmp_path_factory.mktemp("resume_tree"), subjects=2, frames=[0, 0, 0, 0, 4] * 2, seed=5)


@pytest.fixture(scope="module")
def reference(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cache(tree, SPLIT, tmp_path_factory.mktemp("ref") / "c", size=SIZE, workers=1, chunk_size=CHUNK,
                       progress=False)  # fmt: skip


def _same(a: Path, b: Path) -> None:
    ca, cb = open_cache(a, verify=True), open_cache(b, verify=True)
    np.testing.assert_array_equal(ca.images, cb.images)
    for key in LABEL_SPECS:
        np.testing.assert_array_equal(ca.labels[key], cb.labels[key], err_msg=key)
    assert ca.meta == cb.meta


def _build(tree: Path, out: Path, **kw) -> Path:
    return build_cache(tree, SPLIT, out, size=SIZE, workers=1, chunk_size=CHUNK, progress=False, **kw)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 2 ms) or it has run `timeout` s."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow  # five interpreter start-ups: ~10 s alone, up to a minute on a loaded 2-core machine
def test_builds_killed_at_random_moments_are_never_read_as_complete(tree: Path, reference: Path, tmp_path: Path):
    """kill -9 a real `amt cache` process once mid-chunk (as soon as its first chunk is recorded)
    and then at 3 random moments of the resumed build (start-up, allocation, mid-chunk,
    finishing): after each kill the cache is either complete and equal to an uninterrupted
    build, or refused; the next build resumes it to the same arrays."""
    out = tmp_path / "killed"
    code = (
        "import sys; from amt.data.cache_cli import main; "
        f"sys.exit(main([{str(tree)!r}, '--split', {SPLIT!r}, '--out', {str(out)!r}, '--size', '{SIZE}', "
        f"'--workers', '1', '--chunk-size', '{CHUNK}']))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip

    def inspect() -> str:
        if cache_problem(out) is None:
            _same(out, reference)
            return "complete"
        with pytest.raises(CacheError):
            open_cache(out)
        with pytest.raises(CacheError):
            CachedDataset(out)
        done = len((out / PROGRESS_FILE).read_text().splitlines()) if (out / PROGRESS_FILE).exists() else 0
        return f"partial ({done} chunks)"

    # time to import and finish once, measured, so the random kills spread over the whole run
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    full = time.perf_counter() - t0
    shutil.rmtree(out)
    # One kill tied to the build's progress, not to the clock: a wall-clock delay alone can land
    # after the build ends when the machine's speed changes between runs (all "complete").
    progress = out / PROGRESS_FILE
    _kill_when(start(), lambda: progress.exists() and progress.read_text().count("\n") >= 1)
    states = [inspect()]
    assert states[0].startswith("partial"), states
    rng = np.random.default_rng(14)
    for delay in sorted(rng.uniform(0.3, 1.0, 3) * full):
        started = time.monotonic()
        _kill_when(start(), lambda delay=delay, started=started: time.monotonic() - started >= delay)
        states.append(inspect())
    assert any(s.startswith("partial") for s in states), states
    ensure_cache(tree, SPLIT, SIZE, out, workers=1, progress=False)  # what the next `amt train`/`eval` does
    _same(out, reference)


@pytest.mark.parametrize(
    "damage",
    ["no meta", "torn meta", "torn build.json", "truncated images", "truncated labels", "labels removed",
     "torn progress", "done chunk altered", "empty progress"],
)  # fmt: skip
def test_an_interrupted_build_in_any_state_resumes_to_the_same_cache(
    tree: Path, reference: Path, tmp_path: Path, damage: str
) -> None:
    """The states a kill (or a later accident) can leave, made by hand: the next use resumes or
    rebuilds, and the result equals an uninterrupted build."""
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    if damage != "torn meta":
        (out / META_FILE).unlink()
    lines = (out / PROGRESS_FILE).read_text().splitlines()
    if damage == "torn meta":
        (out / META_FILE).write_text((out / META_FILE).read_text()[:100])
    elif damage == "torn build.json":
        (out / BUILD_FILE).write_text('{"root": ')
    elif damage == "truncated images":
        os.truncate(out / IMAGES_FILE, 1000)
    elif damage == "truncated labels":
        os.truncate(out / LABELS_DIR / "joints_3d.npy", 200)
    elif damage == "labels removed":
        (out / LABELS_DIR / "K.npy").unlink()
    elif damage == "torn progress":
        (out / PROGRESS_FILE).write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    elif damage == "done chunk altered":
        images = np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+")
        images[5 * SIZE * SIZE * 3] ^= 0xFF  # a pixel of row 5 (chunk 1, recorded as done)
        images.flush()
        del images
    elif damage == "empty progress":
        (out / PROGRESS_FILE).write_text("")
    with pytest.raises(CacheError, match=str(out)):
        open_cache(out)
    ensure_cache(tree, SPLIT, SIZE, out, workers=1, progress=False)
    assert cache_problem(out) is None
    _same(out, reference)


@pytest.mark.parametrize("damage", ["truncated images", "truncated labels", "label flipped", "old version", "bad json"])
def test_a_damaged_complete_cache_is_refused_naming_the_file_and_rebuilt_on_use(
    tree: Path, reference: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    target = {"truncated images": out / IMAGES_FILE, "old version": out / META_FILE, "bad json": out / META_FILE}.get(
        damage, out / LABELS_DIR / "obj_t.npy"
    )
    if damage.startswith("truncated"):
        os.truncate(target, target.stat().st_size - 1)
    elif damage == "label flipped":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0x40
        target.write_bytes(bytes(data))
    elif damage == "old version":
        meta = json.loads(target.read_text())
        target.write_text(json.dumps({**meta, "version": 1}))
    else:
        target.write_text("{not json")
    with pytest.raises(CacheError, match=target.name):
        open_cache(out)
    with pytest.raises(CacheError, match="--force"):
        _build(tree, out)  # never silently overwritten by a plain build
    args = ["cache", str(tree), "--split", SPLIT, "--out", str(out), "--size", str(SIZE), "--verify"]
    assert amt_main(args) == 1 and target.name in capsys.readouterr().err
    ensure_cache(tree, SPLIT, SIZE, out, workers=1, progress=False)  # what amt eval / train do: rebuild
    _same(out, reference)
    assert amt_main(args) == 0 and "checksums match" in capsys.readouterr().out


def test_a_flipped_pixel_is_found_by_verify_only(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    images = np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+")
    images[123] ^= 1
    images.flush()
    del images
    open_cache(out)  # sizes and label checksums only: a pixel cannot break training
    with pytest.raises(CacheError, match="images.u8: checksum differs"):
        open_cache(out, verify=True)


def test_bad_samples_are_skipped_counted_and_left_out_by_the_loaders(
    tree: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tree, data)
    labels = sorted(data.glob("2020*/*/*/labels_000002.npz"))[0]
    labels.write_bytes(labels.read_bytes()[:500])
    colour = sorted(data.glob("2020*/*/*/color_000001.jpg"))[3]
    colour.write_bytes(b"not a jpeg")
    out = tmp_path / "c"
    args = ["cache", str(data), "--split", SPLIT, "--out", str(out), "--size", str(SIZE), "--workers", "1"]
    assert amt_main(args) == 0
    printed = capsys.readouterr().out
    assert "2 sample(s) skipped" in printed and labels.name in printed and colour.name in printed
    cache = open_cache(out)
    assert len(cache) == 64 and len(cache.rows) == 62
    skipped = sorted(set(range(64)) - set(cache.rows.tolist()))
    assert all(cache.labels["index"][r] == -1 and not cache.labels["hand_valid"][r] for r in skipped)
    ref = open_cache(reference)
    for ds in (CachedDataset(out, mode="disk"), CachedDataset(out, mode="memmap")):
        assert len(ds) == 62 and ds.skipped == 2 and len(ds.meta) == 62
        for item in (0, 30, 61):
            row = int(ds.indices[item])
            np.testing.assert_array_equal(ds[item]["joints_3d"].numpy(), ref.labels["joints_3d"][row])
            assert ds[item]["meta"] == ref.meta[row]
    gpu = GPUCachedDataset(out, "cpu", rank=1, world_size=2)
    assert len(gpu) == 31
    batch = gpu.get(__import__("torch").arange(31), with_meta=True)
    assert (batch["index"] >= 0).all() and [m["frame"] for m in batch["meta"]] == [
        ref.meta[int(r)]["frame"] for r in cache.rows[1::2]
    ]
    with pytest.raises(Exception, match=labels.name):  # --strict: the first bad sample stops the build
        _build(data, tmp_path / "strict", strict=True)


def test_a_folder_of_the_users_files_is_never_a_cache_folder(tree: Path, tmp_path: Path) -> None:
    """A rebuild deletes meta.json and labels/: names a user's folder may hold. `amt cache --out`
    (or data.cache_dir) pointed at such a folder is refused, --force included, and nothing in it changes."""
    mine = tmp_path / "mine"
    (mine / LABELS_DIR).mkdir(parents=True)
    (mine / LABELS_DIR / "a.txt").write_text("mine")
    (mine / META_FILE).write_text("{}")
    for force in (False, True):
        with pytest.raises(CacheError, match=r"holds files that are not a cache's \(labels, meta.json\)"):
            _build(tree, mine, force=force)
    assert sorted(p.name for p in mine.rglob("*")) == ["a.txt", LABELS_DIR, META_FILE]
    assert amt_main(["cache", str(tree), "--split", SPLIT, "--out", str(mine), "--size", str(SIZE)]) == 1


def test_a_disk_without_room_for_the_arrays_is_refused_before_writing_them(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arrays are sparse memory-mapped files: filling them on a full disk used to end the
    build with SIGBUS (no message). The space still needed is checked first; the build resumes
    once there is room."""
    out = tmp_path / "c"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(CacheError, match=r"the cache needs 0\.\d\d GB more and its disk has 0\.00 GB free"):
        _build(tree, out)
    monkeypatch.setattr(shutil, "disk_usage", real)
    _same(_build(tree, out), _build(tree, tmp_path / "fresh"))
