"""`amt predict` and `amt export`.

amt predict CKPT INPUT --out DIR [--bbox x0,y0,x1,y1 | --boxes FILE.json | --detector] [--hand left|right]
            [--K fx,fy,cx,cy | --calib FILE.yml] [--side-by-side] [--smooth ema|one-euro]
            [--video-out FILE] [--score-threshold T] [--models DIR] [--device cpu|cuda]
amt export CKPT --format onnx|torchscript [--dynamic-batch] [--out FILE] [--tolerance 1e-4]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from amt.argtypes import float_in, int_at_least
from amt.checkpoint import CheckpointError, load_model
from amt.data.object_models import ObjectModels
from amt.data.transforms import MAX_CROP_MARGIN, CropConfig
from amt.data.ycb import YCB_CLASSES
from amt.errors import ConfigError, check_device
from amt.extras import MissingExtraError
from amt.inference.detector import MediaPipeHandDetector
from amt.inference.export import ExportParityError, export
from amt.inference.fastpath import FastPathConfig
from amt.inference.frames import (
    MAX_IMAGE_PIXELS,
    Frame,
    FrameSourceError,
    is_video,
    iter_frames,
    require_video_backend,
    video_fps,
    write_video,
)
from amt.inference.intrinsics import (
    DEFAULT_HFOV_DEG,
    Intrinsics,
    IntrinsicsError,
    default_intrinsics,
    load_calibration,
    parse_K,
)
from amt.inference.predictor import HANDS, Predictor, box_from_xyxy
from amt.inference.smoothing import PredictionSmoother
from amt.inference.visualize import draw_3d_view, draw_overlay, side_by_side
from amt.outputs import OutputExistsError, claim_output_file, claim_output_folder
from amt.training.step import CompileUnavailable

log = logging.getLogger(__name__)

SUMMARY = "summary.json"  # written last by `amt predict`: marks its --out folder as its own


class BoxFileError(ValueError):
    """A --boxes JSON file is unreadable or holds a malformed box."""


MAX_COORDINATE = 1e6  # |pixel coordinate| accepted in a hand box (anything larger is a typo or junk)


def _box_ok(values: tuple[float, ...]) -> bool:
    return (
        len(values) == 4
        and all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in values)
        and values[2] > values[0]
        and values[3] > values[1]
    )


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not _box_ok(values):
        raise argparse.ArgumentTypeError(f"--bbox {text!r}: expected x0,y0,x1,y1 pixels with x0 < x1, y0 < y1")
    return values  # type: ignore[return-value]


def load_box_file(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """JSON {filename: [x0, y0, x1, y1]} -> dict; errors name the file and the key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
        raise BoxFileError(f"{path}: cannot read box file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise BoxFileError(f"{path}: expected a JSON object {{filename: [x0, y0, x1, y1]}}")
    boxes = {}
    for key, value in data.items():
        numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not (numbers and len(value) == 4):
            raise BoxFileError(f"{path}: key {key!r}: expected [x0, y0, x1, y1] numbers, got {value!r:.200}")
        if not _box_ok(tuple(float(v) for v in value)):
            raise BoxFileError(
                f"{path}: key {key!r}: expected finite pixels (|v| <= {MAX_COORDINATE:g}) with x0 < x1 and y0 < y1, "
                f"got {value}"
            )
        boxes[key] = tuple(float(v) for v in value)
    # keys written as paths ("/data/imgs/a.png", "imgs\\a.png") also answer to their file name,
    # the documented key, when no other key claims that name (a folder input is not recursive)
    names: dict[str, list[str]] = {}
    for key in boxes:
        name = key.replace("\\", "/").rsplit("/", 1)[-1]
        if name != key:
            names.setdefault(name, []).append(key)
    for name, keys in names.items():
        if name not in boxes and len(keys) == 1:
            boxes[name] = boxes[keys[0]]
    return boxes


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amt predict", description="Run a checkpoint on images, a folder or a video.")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (config.yaml + model.safetensors)")
    p.add_argument(
        "input", type=Path, help="image file, folder of images, or video (.gif; .mp4 etc. need imageio-ffmpeg)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for JSON and overlay PNGs")
    p.add_argument(
        "--force", action="store_true",
        help="write into an --out folder holding other files, and replace an existing --video-out",
    )  # fmt: skip
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--bbox", type=parse_bbox, help="hand box x0,y0,x1,y1 (pixels) for every frame")
    crop.add_argument("--boxes", type=Path, help="JSON {filename or frame name: [x0,y0,x1,y1]}")
    crop.add_argument(
        "--detector", action="store_true", help="find the hand with MediaPipe (pip install 'amt[detector]')"
    )
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--K", dest="K", type=str, help="intrinsics fx,fy,cx,cy (pixels)")
    cam.add_argument("--calib", type=Path, help="DexYCB-style intrinsics .yml (block 'color')")
    p.add_argument(
        "--hfov",
        type=float_in(0, 180, open_low=True, open_high=True),
        default=DEFAULT_HFOV_DEG,
        help="horizontal FOV (deg) of the default intrinsics",
    )
    p.add_argument("--margin", type=float_in(1, MAX_CROP_MARGIN), default=None,
                   help="crop side / hand box side (default: the margin the model was trained on, else "
                        f"{CropConfig().margin:g})")  # fmt: skip
    p.add_argument(
        "--hand", choices=HANDS, default=None,
        help="which hand: right or left (a left hand runs mirrored; results are unmirrored); "
        "default: the detector's handedness with --detector, else right",
    )  # fmt: skip
    p.add_argument("--score-threshold", type=float_in(0, 1), default=0.5, help="minimum object score to report")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="inference model storage dtype (bfloat16: weights cast once, geometric heads float32; "
        "pays on CPUs with AVX512-BF16/AMX and on GPUs)",
    )  # fmt: skip
    p.add_argument("--models", type=Path, help="DexYCB-style models/ folder: draw each object's mesh box")
    p.add_argument("--side-by-side", action="store_true", help="add a 3D view (matplotlib) next to the overlay")
    p.add_argument(
        "--smooth", choices=("none", "ema", "one-euro"), default="none", help="temporal smoothing (frames in order)"
    )
    p.add_argument(
        "--fps",
        type=float_in(0, open_low=True),
        default=None,
        help="frame rate for smoothing/--video-out (default: the video's, else 30)",
    )
    p.add_argument(
        "--video-out", type=Path, help="also write the overlays as a video (.gif, or .mp4 with imageio-ffmpeg)"
    )
    p.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=MAX_IMAGE_PIXELS,
        help=f"skip images with more pixels than this, checked before decoding (default {MAX_IMAGE_PIXELS})",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--autocast", default="auto", choices=("auto", "bf16", "fp16", "none"), help="auto: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model with frozen weights: minutes to compile, then on CPU ~1.2-1.4x faster at batch 1 (benchmarks/README.md)",
    )
    return p


def _model_bounds(models_dir: Path) -> dict[int, np.ndarray]:
    models = ObjectModels(models_dir)
    bounds = {}
    for cid in YCB_CLASSES:
        try:
            bounds[cid] = np.asarray(models.mesh(cid).bounds, dtype=np.float64)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            log.debug("no mesh for class %d in %s: %s", cid, models_dir, exc)
    return bounds


class _CropChooser:
    """Decides each frame's square crop box: --bbox, --boxes entry, detector, else centred (warned)."""

    def __init__(self, args: argparse.Namespace, crop: CropConfig) -> None:
        self.bbox, self.crop = args.bbox, crop
        self.hand = args.hand  # None: the detector's handedness, else right
        self.side = args.hand or "right"  # the hand of the frame last given a box
        self.boxes = load_box_file(args.boxes) if args.boxes else None
        self.detector = None
        if args.detector:
            self.detector = MediaPipeHandDetector()
        self.warned = False

    def __call__(self, frame: Frame) -> tuple[tuple[int, int, int] | None, str]:
        self.side = self.hand or "right"
        if self.bbox is not None:
            return box_from_xyxy(self.bbox, self.crop), "--bbox"
        if self.boxes is not None:
            # images: keyed by file name (or stem); video frames: by `<video stem>_<index:06d>`
            keys = (frame.name,) if is_video(Path(frame.source)) else (Path(frame.source).name, frame.name)
            for key in keys:
                if key in self.boxes:
                    return box_from_xyxy(self.boxes[key], self.crop), f"--boxes[{key}]"
        if self.detector is not None:
            found = self.detector.detect_hand(frame.image)
            if found is not None:
                self.side = self.hand or found[1] or "right"
                return box_from_xyxy(found[0], self.crop), "detector"
        if not self.warned:
            if self.boxes is not None:  # a box file whose keys name the frames otherwise: say what was looked up
                looked_up = ", ".join(repr(k) for k in keys)
                log.warning(
                    "no --boxes entry for %s (looked up %s; the file's keys include %r) and no other hand box: "
                    "using a centred square crop (and maybe for later frames)",
                    frame.source, looked_up, next(iter(self.boxes), None),
                )  # fmt: skip
            else:
                log.warning("no hand box for %s (and maybe later frames): using a centred square crop", frame.source)
            self.warned = True
        return None, "centred (no hand box)"


def _check_finite(pred) -> None:
    """ValueError when the model produced NaN / inf (e.g. weights that overflow): nothing to draw or report."""
    values = [pred.joints_3d, pred.joints_2d, pred.joint_conf, pred.mano_shape]
    values += [np.r_[o.quat_wxyz, o.translation, o.center_2d, o.score] for o in pred.objects]
    values += [np.r_[c.point, c.point_2d, c.force, c.prob] for c in pred.contacts]
    if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in values):
        raise ValueError("the model's output holds NaN or inf (check the checkpoint's weights)")


def _intrinsics_for(args: argparse.Namespace, width: int, height: int) -> Intrinsics:
    if args.K:
        return parse_K(args.K)
    if args.calib:
        return load_calibration(args.calib)
    return default_intrinsics(width, height, args.hfov)


def _warn_if_for_another_size(
    intrinsics: Intrinsics, width: int, height: int, source: str, warned: set[tuple[str, int, int]]
) -> None:
    """Warn (once per intrinsics and image size) when the principal point lies outside the image:
    intrinsics of another resolution (a 1920x1080 calibration on 640x480 frames) put every 3D
    output at the wrong place without any other sign."""
    inside = 0 <= intrinsics.cx <= width and 0 <= intrinsics.cy <= height
    key = (intrinsics.source, width, height)
    if inside or key in warned:
        return
    warned.add(key)
    log.warning(
        "%s: the principal point (%.1f, %.1f) of the intrinsics (%s) lies outside the %dx%d image: are they "
        "for another resolution? Scale fx, fy, cx, cy by the size ratio",
        source, intrinsics.cx, intrinsics.cy, intrinsics.source, width, height,
    )  # fmt: skip


def predict_main(argv: list[str]) -> int:
    """Entry point of `amt predict`. Exit code 0 when at least one frame was predicted."""
    args = _predict_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    crop = CropConfig(margin=args.margin) if args.margin is not None else None  # None: the model's
    try:  # every input is checked before the (slower) model load
        check_device(device)
        choose_box = _CropChooser(args, crop or CropConfig())
        if args.K or args.calib:
            _intrinsics_for(args, 0, 0)
        frames = iter_frames(args.input, args.max_pixels)
        fps = args.fps or (video_fps(args.input) if is_video(args.input) else 30.0)
        bounds = _model_bounds(args.models) if args.models else None
        if args.video_out:
            require_video_backend(args.video_out)
            # a video inside --out of an earlier `amt predict` is that run's own output, as the rest
            own = (args.out / SUMMARY).is_file() and args.video_out.resolve().parent == args.out.resolve()
            claim_output_file(args.video_out, args.force or own, "--video-out")
        claim_output_folder(args.out, SUMMARY, args.force, "amt predict")
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=device, score_threshold=args.score_threshold, crop=crop,
            fastpath=FastPathConfig(autocast=args.autocast, compile=args.compile), dtype=args.dtype,
        )  # fmt: skip
        choose_box.crop = predictor.crop  # the boxes are framed with the model's margin unless --margin
    except (
        CheckpointError,
        BoxFileError,
        IntrinsicsError,
        FrameSourceError,
        MissingExtraError,
        FileNotFoundError,
        CompileUnavailable,
        OutputExistsError,
        ConfigError,
    ) as exc:
        print(f"amt predict: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    smoother = PredictionSmoother(args.smooth, fps) if args.smooth != "none" else None
    done, skipped, video_frames, intrinsics_used, centred_crops = [], [], [], set(), []
    warned_sizes: set[tuple[str, int, int]] = set()  # (intrinsics, width, height) warned about
    for frame in frames:
        if frame.image is None:
            log.error("skipping %s: %s", frame.name, frame.error)
            skipped.append({"frame": frame.name, "source": frame.source, "error": frame.error})
            continue
        h, w = frame.image.shape[:2]
        intrinsics = _intrinsics_for(args, w, h)
        _warn_if_for_another_size(intrinsics, w, h, frame.source, warned_sizes)
        box, source = choose_box(frame)
        try:
            pred = predictor.predict(frame.image, intrinsics, box, crop_source=source, hand=choose_box.side)
            _check_finite(pred)
        except ValueError as exc:  # this frame only (e.g. a box far larger than the image: check_box): skip it
            log.error("skipping %s: %s", frame.name, exc)
            skipped.append({"frame": frame.name, "source": frame.source, "error": str(exc)})
            continue
        intrinsics_used.add(intrinsics.source)
        if box is None:
            centred_crops.append(frame.name)
        if smoother is not None:
            pred = smoother(pred)
        record = {"frame": frame.name, "source": frame.source, "index": frame.index, **pred.to_json()}
        (args.out / f"{frame.name}.json").write_text(json.dumps(record, indent=1))
        overlay = draw_overlay(frame.image, pred, bounds)
        if args.side_by_side:
            overlay = side_by_side(overlay, draw_3d_view(pred))
        overlay.save(args.out / f"{frame.name}_overlay.png")
        if args.video_out:
            video_frames.append(np.asarray(overlay))
        done.append(frame.name)
    if args.video_out and video_frames:
        write_video(video_frames, args.video_out, fps)
    summary = {
        "checkpoint": str(args.checkpoint),
        "input": str(args.input),
        "device": device,
        "predicted": len(done),
        "skipped": skipped,
        "intrinsics": sorted(intrinsics_used),
        "smoothing": args.smooth,
        "score_threshold": args.score_threshold,
        "centred_crops": centred_crops,
    }
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=1))
    centred = f"; centred crops (no hand box): {len(centred_crops)}" if centred_crops else ""
    print(
        f"predicted {len(done)} frame(s), skipped {len(skipped)}; "
        f"intrinsics: {', '.join(sorted(intrinsics_used)) or '-'}{centred}"
    )
    for s in skipped:
        print(f"  skipped {s['source']}: {s['error']}")
    print(f"wrote {args.out}")
    return 0 if done else 1


def export_main(argv: list[str]) -> int:
    """Entry point of `amt export`: export, then print the parity check. Exit 1 when parity fails."""
    p = argparse.ArgumentParser(prog="amt export", description="Export a checkpoint to ONNX or TorchScript.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--dynamic-batch", action="store_true", help="batch dimension left free (checked at batch 1 and 3)")
    p.add_argument("--out", type=Path, help="output file (default CKPT/model.onnx or CKPT/model.torchscript.pt)")
    p.add_argument("--tolerance", type=float_in(0), default=1e-4, help="max abs difference allowed in the parity check")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    out = args.out or args.checkpoint / ("model.onnx" if args.format == "onnx" else "model.torchscript.pt")
    try:
        claim_output_file(out, args.force)
        model = load_model(args.checkpoint)
    except (CheckpointError, OutputExistsError) as exc:
        print(f"amt export: {exc}", file=sys.stderr)
        return 2
    try:
        result = export(model, out, args.format, args.dynamic_batch, args.tolerance)
    except ExportParityError as exc:
        print(f"amt export: PARITY FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.path} ({result.format}, parity checked at batch {', '.join(map(str, result.parity_batches))})"
    )
    print(f"{'output':<18} max abs diff")
    for name, diff in result.max_abs_diff.items():
        print(f"{name:<18} {diff:.3e}")
    print(f"{'worst':<18} {result.worst:.3e} (tolerance {args.tolerance:g})")
    return 0
