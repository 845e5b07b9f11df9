"""`amt predict` end to end: folders of odd images, synthetic frames, video, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amt.cli import main as amt_main
from amt.data.transforms import CropConfig
from amt.data.ycb import YCB_CLASSES
from amt.inference.cli import predict_main
from amt.inference.intrinsics import DEFAULT_HFOV_DEG

GOOD = ("a_rgb", "b_gray", "c_rgba", "d_16bit", "e_tiny", "f_wide_palette")


def _project(points: np.ndarray, intr: dict) -> np.ndarray:
    """Independent pinhole projection (no amt code)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([intr["fx"] * p[:, 0] / p[:, 2] + intr["cx"], intr["fy"] * p[:, 1] / p[:, 2] + intr["cy"]], -1)


def _check_record(record: dict, width: int, height: int) -> None:
    hand = record["hand"]
    assert np.asarray(hand["joints_3d_m"]).shape == (21, 3)
    assert np.asarray(hand["joint_conf"]).shape == (21,)
    assert np.all((np.asarray(hand["joint_conf"]) >= 0) & (np.asarray(hand["joint_conf"]) <= 1))
    assert np.asarray(hand["mano_shape"]).shape == (10,)
    assert record["image_size"] == {"width": width, "height": height}
    np.testing.assert_allclose(
        hand["joints_2d_px"], _project(hand["joints_3d_m"], record["intrinsics"]), rtol=1e-4, atol=1e-3
    )
    for obj in record["objects"]:
        assert YCB_CLASSES[obj["class_id"]] == obj["class_name"]
        assert obj["score"] >= 0.0 and abs(np.linalg.norm(obj["quat_wxyz"]) - 1) < 1e-4
    assert [c["query"] for c in record["contacts"]] == [o["query"] for o in record["objects"]]


def test_folder_of_arbitrary_images_writes_json_and_overlays_and_skips_corrupt(
    tiny_checkpoint: Path, odd_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    rc = predict_main([str(tiny_checkpoint), str(odd_images), "--out", str(out), "--score-threshold", "0"])
    assert rc == 0
    for stem in GOOD:
        with Image.open(next(odd_images.glob(stem + ".*"))) as im:
            size = im.size
        record = json.loads((out / f"{stem}.json").read_text())
        _check_record(record, *size)
        assert record["intrinsics"]["source"].startswith("default")
        expected_f = size[0] / 2 / np.tan(np.radians(DEFAULT_HFOV_DEG) / 2)
        assert record["intrinsics"]["fx"] == pytest.approx(expected_f)
        assert record["crop"]["source"].startswith("centred")
        assert record["crop"]["side"] == min(size)
        assert len(record["objects"]) == 10  # threshold 0 keeps every query
        with Image.open(out / f"{stem}_overlay.png") as ov:
            assert ov.size == size and ov.mode == "RGB"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == len(GOOD)
    skipped = {Path(s["source"]).name: s["error"] for s in summary["skipped"]}
    assert set(skipped) == {"g_corrupt.jpg", "h_truncated.png"}
    assert all(name in err for name, err in skipped.items())
    assert "skipped 2" in capsys.readouterr().out
    assert not (out / "notes.json").exists()


def _synthetic_frames(tmp_path: Path) -> tuple[list[Path], Path, dict[str, list[float]], Path]:
    """A few frames with known hands: amt.data.synthetic when present, else random images with
    fake-DexYCB labels. Returns image paths, the calibration file, boxes from the GT 2D joints
    and the dataset's models/ folder."""
    from amt.data.dexycb import DexYCB

    if importlib.util.find_spec("amt.data.synthetic") is not None:
        from amt.data.synthetic import generate

        root = tmp_path / "synth"
        generate(root, frames=4, seed=0)
    else:
        from amt.data.testing import write_fake_dexycb

        root = write_fake_dexycb(tmp_path / "fake", subjects=1, sequences_per_subject=1, serials=1, frames=3, seed=0)
    ds = DexYCB(root, "s0_train")
    samples = [ds[i] for i in range(min(3, len(ds)))]
    assert samples, "no s0_train frames in the generated set"
    serial = samples[0]["serial"]
    calib = next((Path(root) / "calibration" / "intrinsics").glob(f"{serial}_*.yml"))
    frames, boxes = [], {}
    for i, s in enumerate(s for s in samples if s["serial"] == serial):
        path = tmp_path / "frames" / f"frame_{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(s["color"]).save(path)
        frames.append(path)
        if s["hand_valid"]:
            j = s["joint_2d"]
            boxes[path.name] = [float(j[:, 0].min()), float(j[:, 1].min()), float(j[:, 0].max()), float(j[:, 1].max())]
    return frames, calib, boxes, Path(root) / "models"


def test_synthetic_frames_with_calibration_and_box_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from amt.data.dexycb import load_intrinsics

    frames, calib, boxes, models = _synthetic_frames(tmp_path)
    box_file = tmp_path / "boxes.json"
    box_file.write_text(json.dumps(boxes))
    out = tmp_path / "out"
    argv = [
        str(tiny_checkpoint),
        str(frames[0].parent),
        "--out",
        str(out),
        "--calib",
        str(calib),
        "--boxes",
        str(box_file),
    ]
    assert predict_main(argv + ["--side-by-side", "--models", str(models), "--score-threshold", "0"]) == 0
    K = load_intrinsics(calib)
    for frame in frames:
        record = json.loads((out / f"{frame.stem}.json").read_text())
        _check_record(record, 640, 480)
        intr = record["intrinsics"]
        assert intr["source"] == f"calib {calib}"
        assert (intr["fx"], intr["fy"], intr["cx"], intr["cy"]) == pytest.approx((K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        if frame.name in boxes:
            assert record["crop"]["source"] == f"--boxes[{frame.name}]"
            x0, y0, x1, y1 = boxes[frame.name]
            crop = CropConfig()
            assert abs(record["crop"]["side"] - max(crop.min_size, crop.margin * max(x1 - x0, y1 - y0))) <= 1
        assert len(record["objects"]) == 10  # all drawn, with mesh boxes where the class has a mesh
        with Image.open(out / f"{frame.stem}_overlay.png") as ov:
            assert ov.height == 480 and ov.width > 640  # the 3D view sits beside the overlay
    assert predict_main(argv + ["--models", str(tmp_path / "no_models")]) == 2


def test_bbox_flag_and_explicit_K_are_used(tiny_checkpoint: Path, tmp_path: Path, random_image) -> None:
    img = tmp_path / "one.png"
    Image.fromarray(random_image(240, 320, 9)).save(img)
    out = tmp_path / "out"
    rc = amt_main(
        [
            "predict",
            str(tiny_checkpoint),
            str(img),
            "--out",
            str(out),
            "--bbox",
            "100,50,180,150",
            "--K",
            "300,310,160,120",
        ]
    )
    assert rc == 0
    record = json.loads((out / "one.json").read_text())
    assert record["intrinsics"] == {"fx": 300.0, "fy": 310.0, "cx": 160.0, "cy": 120.0, "source": "--K"}
    assert record["crop"] == {"x0": 65, "y0": 25, "side": 150, "source": "--bbox"}


def test_a_box_outside_the_image_skips_the_frame_and_says_why(
    tiny_checkpoint: Path, tmp_path: Path, random_image, capsys
) -> None:
    # a box in another resolution's pixels: the crop would be padding only, a silent wrong answer
    img = tmp_path / "one.png"
    Image.fromarray(random_image(240, 320, 9)).save(img)
    out = tmp_path / "out"
    assert amt_main(["predict", str(tiny_checkpoint), str(img), "--out", str(out), "--bbox", "900,700,1000,800"]) == 1
    assert "lies outside the 320x240 image" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 0 and "lies outside the 320x240 image" in summary["skipped"][0]["error"]
    # a box reaching past the image's edge (a hand at the border) is still predicted
    assert amt_main(["predict", str(tiny_checkpoint), str(img), "--out", str(out), "--bbox", "280,200,400,300"]) == 0


def test_box_file_keys_written_as_paths_match_by_file_name_and_misses_are_counted(
    tiny_checkpoint: Path, tmp_path: Path, random_image, capsys, caplog
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(random_image(240, 320, 3)).save(folder / name)
    boxes = tmp_path / "boxes.json"
    # a path key (absolute, or Windows-style) answers to its file name; c.png has no entry at all
    boxes.write_text(json.dumps({"/data/shoot/imgs/a.png": [10, 20, 110, 140], "imgs\\b.png": [30, 30, 90, 100]}))
    out = tmp_path / "out"
    assert amt_main(["predict", str(tiny_checkpoint), str(folder), "--out", str(out), "--boxes", str(boxes)]) == 0
    assert json.loads((out / "a.json").read_text())["crop"]["source"] == "--boxes[a.png]"
    assert json.loads((out / "b.json").read_text())["crop"]["source"] == "--boxes[b.png]"
    assert json.loads((out / "summary.json").read_text())["centred_crops"] == ["c"]
    assert "predicted 3 frame(s), skipped 0;" in (out_text := capsys.readouterr().out)
    assert "centred crops (no hand box): 1" in out_text
    assert "no --boxes entry for" in caplog.text and "looked up 'c.png', 'c'" in caplog.text


def test_intrinsics_of_another_resolution_are_warned_about(tiny_checkpoint: Path, tmp_path: Path, random_image, caplog):
    img = tmp_path / "one.png"
    Image.fromarray(random_image(240, 320, 5)).save(img)
    argv = ["predict", str(tiny_checkpoint), str(img), "--out", str(tmp_path / "out"), "--bbox", "100,50,180,150"]
    assert amt_main([*argv, "--K", "1400,1400,960,540"]) == 0  # a 1920x1080 calibration on a 320x240 image
    assert "principal point (960.0, 540.0) of the intrinsics (--K) lies outside the 320x240 image" in caplog.text
    caplog.clear()
    assert amt_main([*argv, "--K", "300,300,160,120", "--force"]) == 0
    assert "principal point" not in caplog.text


def test_out_folder_with_a_users_files_is_refused_unless_force(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, random_image
) -> None:
    """--out pointed at the images themselves, beside a LabelMe-style one.json: refused, nothing
    written; a folder an earlier `amt predict` wrote is rewritten; --force writes anyway."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(random_image(120, 160, 3)).save(photos / "one.png")
    label = photos / "one.json"
    label.write_text('{"shapes": []}')
    assert predict_main([str(tiny_checkpoint), str(photos), "--out", str(photos)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"amt predict: {photos}: holds files that `amt predict` did not write (one.json, one.png)")
    assert "--force" in err
    assert label.read_text() == '{"shapes": []}' and sorted(p.name for p in photos.iterdir()) == ["one.json", "one.png"]
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), str(photos), "--out", str(out)]) == 0
    assert predict_main([str(tiny_checkpoint), str(photos), "--out", str(out)]) == 0  # its own folder: a rerun
    assert predict_main([str(tiny_checkpoint), str(photos / "one.png"), "--out", str(photos), "--force"]) == 0
    assert json.loads(label.read_text())["crop"]["source"]  # replaced, as --force says


def test_video_gif_with_smoothing_and_video_output(tiny_checkpoint: Path, tmp_path: Path, random_image) -> None:
    frames = [random_image(120, 160, s) for s in range(4)]
    gif = tmp_path / "clip.gif"
    Image.fromarray(frames[0]).save(
        gif, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=100
    )
    out = tmp_path / "out"
    argv = [str(tiny_checkpoint), str(gif), "--out", str(out), "--smooth", "one-euro", "--video-out"]
    assert predict_main([*argv, str(out / "clip_pred.gif")]) == 0
    assert predict_main([*argv, str(out / "clip_pred.gif")]) == 0  # a rerun replaces its own video
    elsewhere = tmp_path / "clip_pred.gif"
    elsewhere.write_bytes(b"a user's file")
    assert predict_main([*argv, str(elsewhere)]) == 2 and elsewhere.read_bytes() == b"a user's file"
    records = [json.loads((out / f"clip_{i:06d}.json").read_text()) for i in range(4)]
    for r in records:
        _check_record(r, 160, 120)
    assert (out / "clip_pred.gif").stat().st_size > 0
    with Image.open(out / "clip_pred.gif") as im:
        assert im.n_frames == 4
    assert json.loads((out / "summary.json").read_text())["smoothing"] == "one-euro"


def test_mp4_without_ffmpeg_is_a_clear_error(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("imageio_ffmpeg", "av") else real(name, *a)
    )
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    assert predict_main([str(tiny_checkpoint), str(video), "--out", str(tmp_path / "out")]) == 2
    assert "imageio-ffmpeg" in capsys.readouterr().err


def test_mp4_in_and_out_with_smoothing_and_a_corrupt_mp4_is_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, random_image
) -> None:
    """The `video` extra's path (imageio-ffmpeg): frames read in order, an .mp4 overlay written with
    one frame per input frame; a corrupt file is one skipped entry whose message is one line, not
    ffmpeg's ~40-line banner; --video-out of no video type is refused before any work."""
    import imageio.v3 as iio

    clip = tmp_path / "clip.mp4"
    iio.imwrite(clip, np.stack([random_image(120, 160, s) for s in range(5)]), fps=10)
    out = tmp_path / "out"
    argv = [str(tiny_checkpoint), str(clip), "--out", str(out), "--smooth", "one-euro", "--K", "200,200,80,60"]
    assert predict_main([*argv, "--video-out", str(out / "overlay.mp4")]) == 0
    assert sorted(p.name for p in out.glob("*.json") if p.name != "summary.json") == [
        f"clip_{i:06d}.json" for i in range(5)
    ]
    assert iio.imread(out / "overlay.mp4").shape[0] == 5
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    capsys.readouterr()
    assert predict_main([str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "bad_out")]) == 1
    skipped = json.loads((tmp_path / "bad_out" / "summary.json").read_text())["skipped"]
    assert len(skipped) == 1 and "\n" not in skipped[0]["error"] and "(ffmpeg: " in skipped[0]["error"]
    assert "ffmpeg version" not in capsys.readouterr().err
    assert predict_main([*argv, "--out", str(tmp_path / "o3"), "--video-out", str(tmp_path / "o3.xyz")]) == 2
    assert "o3.xyz: not a video file name" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_unreadable_checkpoint_error_names_the_path(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, random_image
) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(random_image(64, 64)).save(img)
    missing = tmp_path / "no_such_ckpt"
    assert predict_main([str(missing), str(img), "--out", str(tmp_path / "o1")]) == 2
    assert str(missing) in capsys.readouterr().err
    broken = tmp_path / "broken_ckpt"
    broken.mkdir()
    (broken / "config.yaml").write_text((tiny_checkpoint / "config.yaml").read_text())
    (broken / "model.safetensors").write_bytes(b"definitely not safetensors")
    assert predict_main([str(broken), str(img), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "cannot be loaded" in err


def test_bad_box_file_names_file_and_key(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, random_image
) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(random_image(64, 64)).save(img)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [10, 10, 5]}))
    assert predict_main([str(tiny_checkpoint), str(img), "--out", str(tmp_path / "o"), "--boxes", str(boxes)]) == 2
    err = capsys.readouterr().err
    assert str(boxes) in err and "'x.png'" in err


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed")
def test_detector_without_mediapipe_says_how_to_install(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, random_image
) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(random_image(64, 64)).save(img)
    assert predict_main([str(tiny_checkpoint), str(img), "--out", str(tmp_path / "o"), "--detector"]) == 2
    assert "amt[detector]" in capsys.readouterr().err
