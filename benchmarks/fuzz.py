"""Fuzz the readers and the verbs with mutated real files (issue 14, "Fuzzed inputs").

    python benchmarks/fuzz.py --n 100000 [--seed 0] [--workdir DIR]

One small DexYCB-layout tree (`amt.data.testing.write_fake_dexycb`), one cache built from it and
one tiny random checkpoint (`build_model("tiny")` + `save_pretrained`) are written once; then each
case copies one real file's bytes, mutates them (truncation, bit flips, random byte runs,
inserted/deleted bytes, or a format-aware change: a wrong dtype / shape, NaN / inf, huge values or
dimensions, deleted keys, YAML alias bombs, non-UTF-8 text) and feeds the file to its reader or verb:

    labels_*.npz         amt.data.dexycb.read_labels        (and `amt cache` on the tree)
    meta.yml, mano.yml   amt.data.dexycb.DexYCB            (and `amt cache`)
    intrinsics .yml      DexYCB, amt.inference.intrinsics.load_calibration
    color_*.jpg          amt.data.dexycb.read_color
    image files          amt.inference.frames.iter_frames   (and `amt predict`)
    cache files          amt.data.cache.open_cache + a sample (and `amt eval`)
    config.yaml, model.safetensors   AMT.from_pretrained   (and `amt predict` / `amt eval`)
    --boxes JSON         amt.inference.cli.load_box_file    (and `amt predict`)

Every outcome must be a success or one of the project's named errors whose message names the
mutated file (or its folder); a verb must return an exit code with such a one-line message, and
a batch verb must count what it skipped. Anything else is a failure: an uncaught exception, or a
case running past its time limit (a hang; SIGALRM interrupts it). The file is restored after
each case, so one tree serves every case. `tests/test_fuzz.py` runs a seeded short pass.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amt.checkpoint import CheckpointError
from amt.data.cache import CacheError, build_cache, open_cache
from amt.data.dataset import READER_ERRORS, DatasetError
from amt.data.dexycb import DexYCB, DexYCBError, read_color, read_labels
from amt.data.loaders import CachedDataset
from amt.data.testing import write_fake_dexycb
from amt.evaluation import cli as eval_cli
from amt.inference import cli as infer_cli
from amt.inference.frames import FrameSourceError, ImageTooLargeError, iter_frames
from amt.inference.intrinsics import IntrinsicsError, load_calibration
from amt.models import AMT, build_model
from amt.models.amt import ModelFileError

NAMED_ERRORS = (*READER_ERRORS, DexYCBError, CacheError, CheckpointError, ModelFileError, DatasetError,
                infer_cli.BoxFileError, IntrinsicsError, FrameSourceError, ImageTooLargeError)  # fmt: skip
SPLIT = "s0_val"  # 2 subjects x 1 sequence x 8 serials x 1 frame = 16 samples
CACHE_SIZE = 32


class Hang(Exception):
    """A case ran past its time limit."""


@dataclass
class Report:
    """Counts per file kind and outcome, and the failures (kind, mutation, file, traceback)."""

    cases: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)
    hangs: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.cases.items()))
        return (
            f"{self.total} mutated files in {self.seconds:.1f} s ({kinds}); outcomes: {dict(self.outcomes)}; "
            f"{len(self.failures)} uncaught exception(s), {self.hangs} hang(s)"
        )


# --- mutators: bytes -> bytes ----------------------------------------------------------------


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, max(len(data), 1)))]


def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(out)))
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def random_run(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    start = int(rng.integers(0, max(len(out), 1)))
    n = int(rng.integers(1, 64))
    out[start : start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


def splice(data: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(0, max(len(data), 1)))
    if rng.random() < 0.5:
        return data[:i] + rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes() + data[i:]
    return data[:i] + data[i + int(rng.integers(1, 32)) :]


BYTE_MUTATORS = (truncate, flip_bits, random_run, splice)

WILD_VALUES = ("nan", ".nan", ".inf", "-.inf", "-1", "0", "1e308", "1000000000000", "''", "[]", "{}", "null",
               "true", "[1, [2, [3]]]", "'x' ", "!!binary AAAA", "0x7fffffff")  # fmt: skip


def yaml_value(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace one scalar after a `key:` or `- ` with a wild value, or delete a line."""
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines:
        return b"{"
    i = int(rng.integers(0, len(lines)))
    if rng.random() < 0.2:
        del lines[i]
    else:
        m = re.match(r"^(\s*(?:-\s+|[^:]+:\s*))", lines[i])
        prefix = m.group(1) if m else ""
        lines[i] = prefix + str(rng.choice(WILD_VALUES))
    return ("\n".join(lines) + "\n").encode()


def yaml_special(data: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(0, 4))
    if kind == 0:  # alias bomb ("billion laughs")
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
        ]
        return ("\n".join(lines) + "\n").encode() + data
    if kind == 1:
        return b"[" * 5000 + b"]" * 5000
    if kind == 2:
        return b"\xff\xfe\x00" + data
    return b"!!python/object/apply:os.system ['echo pwned']\n"


def json_value(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace one JSON number / string token with NaN, Infinity, a huge or odd value."""
    text = data.decode("utf-8", "replace")
    tokens = list(re.finditer(r'-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|"[^"]*"|true|false|null', text))
    if not tokens:
        return b"NaN"
    t = tokens[int(rng.integers(0, len(tokens)))]
    value = str(rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1", "1e18", "[]", "{}", '"x"', "null",
                            "true", "[[[[[[[[[[[[]]]]]]]]]]]]", "0.5", "99999999999999999999"]))  # fmt: skip
    return (text[: t.start()] + value + text[t.end() :]).encode()


def npz_semantic(data: bytes, rng: np.random.Generator) -> bytes:
    """Rewrite a label npz with one array changed: dtype, shape, NaN/inf, huge values, a key gone,
    or a .npy header declaring a huge shape."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = str(rng.choice(sorted(arrays)))
    a = arrays[key]
    kind = int(rng.integers(0, 7))
    if kind == 0:
        arrays[key] = a.astype(rng.choice([np.float16, np.int64, np.bool_, np.complex64, np.uint16, "U3"]))
    elif kind == 1:
        arrays[key] = np.zeros(tuple(int(rng.integers(0, 4)) for _ in range(int(rng.integers(0, 4)))), a.dtype)
    elif kind == 2 and a.dtype.kind == "f":
        b = a.copy().reshape(-1)
        b[int(rng.integers(0, b.size))] = rng.choice([np.nan, np.inf, -np.inf])
        arrays[key] = b.reshape(a.shape)
    elif kind == 3 and a.dtype.kind == "f":
        arrays[key] = (a * rng.choice([1e30, -1e30, 1e6])).astype(a.dtype)
    elif kind == 4:
        del arrays[key]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    out = buf.getvalue()
    if kind >= 5:  # a huge declared shape in the header text (stored uncompressed by np.savez)
        m = re.search(rb"'shape': \(([^)]*)\)", out)
        if m:
            out = out[: m.start(1)] + b"100000000000, 3" + out[m.end(1) :]
    return out


def npy_header(data: bytes, rng: np.random.Generator) -> bytes:
    """A .npy file with its header's shape or dtype changed."""
    m = re.search(rb"'shape': \(([^)]*)\)", data[:256])
    d = re.search(rb"'descr': '([^']*)'", data[:256])
    if not m or not d:
        return flip_bits(data, rng)
    if rng.random() < 0.5:
        return (
            data[: m.start(1)]
            + str(rng.choice(["10000000000000,", "0,", "3, 3, 3,", "-1,"])).encode()
            + data[m.end(1) :]
        )
    return data[: d.start(1)] + str(rng.choice(["<f8", "|O", "<c8", "|b1", "<U4"])).encode() + data[d.end(1) :]


def jpeg_dims(data: bytes, rng: np.random.Generator) -> bytes:
    """Patch the frame size in the SOF0/SOF2 marker: huge, zero or tiny dimensions."""
    i = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    if i < 0:
        return flip_bits(data, rng)
    h, w = (int(v) for v in rng.choice([0, 1, 65535, 30000, 480], 2))
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9 :]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-header grayscale PNG declaring width x height pixels (the data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * min(height, 4))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_dims(data: bytes, rng: np.random.Generator) -> bytes:
    return png_bomb(int(rng.choice([20000, 100000, 1])), int(rng.choice([20000, 100000, 1])))


def safetensors_header(data: bytes, rng: np.random.Generator) -> bytes:
    """Change one tensor's dtype, shape or data offsets in the JSON header (length kept valid)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = str(rng.choice([k for k in header if k != "__metadata__"]))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        header[key]["dtype"] = str(rng.choice(["F64", "I8", "BOOL", "F16", "XX"]))
    elif kind == 1:
        header[key]["shape"] = [int(v) for v in rng.choice([0, 1, 7, 10**12], int(rng.integers(0, 4)))]
    elif kind == 2:
        header[key]["data_offsets"] = [0, int(rng.choice([1, 10**15, len(data)]))]
    else:  # NaN / inf written into one float tensor's bytes
        start, stop = (8 + n + o for o in header[key]["data_offsets"])
        out = bytearray(data)
        if stop - start >= 4 and header[key]["dtype"] == "F32":
            out[start : start + 4] = struct.pack("<f", float(rng.choice([np.nan, np.inf])))
        return bytes(out)
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data[8 + n :]


SEMANTIC: dict[str, tuple[Callable, ...]] = {
    "npz": (npz_semantic,),
    "yml": (yaml_value, yaml_value, yaml_special),
    "jpg": (jpeg_dims,),
    "png": (png_dims,),
    "json": (json_value, json_value),
    "npy": (npy_header,),
    "safetensors": (safetensors_header, safetensors_header),
}


def mutate(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of `data` (half byte-level, half format-aware); returns (bytes, its name)."""
    semantic = SEMANTIC.get(fmt, ())
    if semantic and rng.random() < 0.5:
        fn = semantic[int(rng.integers(0, len(semantic)))]
    else:
        fn = BYTE_MUTATORS[int(rng.integers(0, len(BYTE_MUTATORS)))]
    try:
        return fn(data, rng), fn.__name__
    except (ValueError, KeyError, OSError, IndexError, json.JSONDecodeError, struct.error):
        return flip_bits(data, rng), "flip_bits"  # the file was already unparseable for this mutator


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class World:
    root: Path  # the DexYCB-layout tree
    cache: Path  # a complete cache of SPLIT at CACHE_SIZE px
    eval_cache: Path  # a complete cache of SPLIT at the checkpoint's image size
    checkpoint: Path
    images: Path  # folder of small images in many modes
    boxes: Path  # a --boxes JSON file
    scratch: Path


def make_world(workdir: Path) -> World:
    """Write the tree, caches, checkpoint, images and box file the cases mutate."""
    root = write_fake_dexycb(workdir / "data", subjects=2, serials=8, frames=[0, 0, 0, 0, 1] * 2, seed=7)
    torch.manual_seed(0)
    model = build_model("tiny", load_backbone_weights=False, image_size=56)
    checkpoint = model.save_pretrained(workdir / "ckpt")
    cache = build_cache(root, SPLIT, workdir / "cache", size=CACHE_SIZE, workers=1, chunk_size=8, progress=False)
    eval_cache = build_cache(root, SPLIT, workdir / "eval_cache", size=56, workers=1, chunk_size=8, progress=False)
    images = workdir / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "rgb.jpg", quality=85)
    Image.fromarray(rgb).save(images / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(images / "gray.png")
    Image.fromarray(rgb).convert("P").save(images / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(images / "sixteen.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(images / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(images / "cmyk.jpg")
    Image.fromarray(rgb).save(images / "rgb.bmp")
    Image.fromarray(rgb).save(images / "rgb.tif")
    boxes = workdir / "boxes.json"
    boxes.write_text(json.dumps({"rgb.jpg": [2, 3, 20, 22], "rgb.png": [0.5, 0.5, 10.5, 12.5]}))
    scratch = workdir / "scratch"
    scratch.mkdir()
    return World(root, cache, eval_cache, checkpoint, images, boxes, scratch)


# --- targets: each takes the mutated path and returns an outcome name -------------------------


def _named(exc: BaseException, path: Path) -> bool:
    text = str(exc)
    return isinstance(exc, NAMED_ERRORS) and (path.name in text or str(path.parent) in text)


def _verb(main: Callable[[list[str]], int], argv: list[str], path: Path) -> str:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    if rc == 0:
        return "verb ok"
    message = err.getvalue() + out.getvalue()  # predict reports skipped frames on stdout
    if path.name not in message and str(path.parent) not in message and "skipped" not in message:
        raise AssertionError(f"exit code {rc} without a message naming {path}: {message!r}")
    return "verb refused"


def target_labels(w: World, path: Path, heavy: bool) -> str:
    read_labels(path, 3)
    if heavy:
        return target_cache_verb(w, path)
    return "ok"


def target_tree(w: World, path: Path, heavy: bool) -> str:
    """meta.yml / calibration / mano.yml / colour JPEG: open the split and read every sample."""
    dataset = DexYCB(w.root, SPLIT, on_error="skip")
    for _ in dataset.iter_samples():
        pass
    if path.suffix == ".yml" and "intrinsics" in str(path):
        load_calibration(path)
    if path.suffix == ".jpg":
        read_color(path)
    if heavy:
        return target_cache_verb(w, path)
    return f"ok, {dataset.skipped} skipped" if dataset.skipped else "ok"


def target_cache_verb(w: World, path: Path) -> str:
    out = w.scratch / "built"
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(w.root), "--split", SPLIT, "--out", str(out), "--size", "16", "--workers", "1", "--chunk-size", "8"]
    from amt.data import cache_cli  # why: the verb module, imported like amt.cli does

    return _verb(cache_cli.main, argv, path)


def target_cache(w: World, path: Path, heavy: bool) -> str:
    """A file of a complete cache: open it, read samples; heavy: `amt eval` on the eval cache."""
    if heavy:
        argv = [str(w.checkpoint), "--data", str(w.root), "--split", SPLIT, "--cache", str(path.parent.parent if
                path.parent.name == "labels" else path.parent), "--out", str(w.scratch / "eval"), "--device", "cpu",
                "--workers", "1", "--batch-size", "16"]  # fmt: skip
        return _verb(eval_cli.main, argv, path)
    open_cache(path.parent.parent if path.parent.name == "labels" else path.parent, verify=False)
    dataset = CachedDataset(path.parent.parent if path.parent.name == "labels" else path.parent, mode="disk")
    for i in range(len(dataset)):
        dataset[i]
    return "ok"


def target_image(w: World, path: Path, heavy: bool) -> str:
    frames = list(iter_frames(path))
    for f in frames:
        if f.error is not None and path.name not in f.error:
            raise AssertionError(f"error frame without the file name: {f.error}")
    if heavy:
        argv = [str(w.checkpoint), str(path), "--out", str(w.scratch / "pred"), "--device", "cpu"]
        return _verb(infer_cli.predict_main, argv, path)
    return "ok" if all(f.error is None for f in frames) else "frame skipped"


def target_checkpoint(w: World, path: Path, heavy: bool) -> str:
    AMT.from_pretrained(path.parent)
    if heavy:
        argv = [str(path.parent), str(w.images / "rgb.jpg"), "--out", str(w.scratch / "pred"), "--device", "cpu"]
        return _verb(infer_cli.predict_main, argv, path)
    return "ok"


def target_boxes(w: World, path: Path, heavy: bool) -> str:
    infer_cli.load_box_file(path)
    if heavy:
        argv = [str(w.checkpoint), str(w.images), "--boxes", str(path), "--out", str(w.scratch / "pred"), "--device",
                "cpu"]  # fmt: skip
        return _verb(infer_cli.predict_main, argv, path)
    return "ok"


def cases(w: World) -> list[tuple[str, Path, str, Callable, float]]:
    """(kind, file, format, target, weight of the `heavy` verb run) for every file fuzzed."""
    labels = sorted(w.root.glob("2020*/*/*/labels_*.npz"))[0]
    view = labels.parent
    colour = sorted(view.glob("color_*.jpg"))[0]
    meta = view.parent / "meta.yml"
    intr = sorted((w.root / "calibration" / "intrinsics").glob("*.yml"))[0]
    mano = sorted((w.root / "calibration").glob("mano_*/mano.yml"))[0]
    out = [
        ("labels npz", labels, "npz", target_labels, 0.01),
        ("meta.yml", meta, "yml", target_tree, 0.02),
        ("calibration yml", intr, "yml", target_tree, 0.0),
        ("mano.yml", mano, "yml", target_tree, 0.0),
        ("colour jpg", colour, "jpg", target_tree, 0.0),
        ("config.yaml", w.checkpoint / "config.yaml", "yml", target_checkpoint, 0.01),
        ("model.safetensors", w.checkpoint / "model.safetensors", "safetensors", target_checkpoint, 0.01),
        ("boxes json", w.boxes, "json", target_boxes, 0.01),
    ]
    for image in sorted(w.images.iterdir()):
        fmt = {".jpg": "jpg", ".png": "png"}.get(image.suffix, "bin")
        out.append((f"image {image.suffix}", image, fmt, target_image, 0.01))
    for cache, heavy in ((w.cache, 0.0), (w.eval_cache, 0.03)):
        out.append(("cache meta.json", cache / "meta.json", "json", target_cache, heavy))
        out.append(("cache images.u8", cache / "images.u8", "bin", target_cache, heavy))
        for key in ("K", "obj_valid"):
            out.append(("cache labels npy", cache / "labels" / f"{key}.npy", "npy", target_cache, heavy))
    return out


def _alarm(signum, frame):
    raise Hang()


def run(n: int, seed: int, workdir: Path, case_timeout: float = 20.0) -> Report:
    """Run n mutated-file cases (round-robin over the files, seeded); returns the Report."""
    logging.disable(logging.CRITICAL)
    report = Report()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    world = make_world(workdir)
    files = cases(world)
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(n):
            kind, path, fmt, target, heavy_p = files[i % len(files)]
            original = path.read_bytes()
            data, how = mutate(original, fmt, rng)
            heavy = bool(rng.random() < heavy_p) or (i < len(files) and heavy_p > 0)  # every verb at least once
            path.write_bytes(data)
            signal.setitimer(signal.ITIMER_REAL, case_timeout * (4 if heavy else 1))
            try:
                outcome = target(world, path, heavy)
            except Hang:
                report.hangs += 1
                report.failures.append((kind, how, str(path), "hang"))
                outcome = "hang"
            except NAMED_ERRORS as exc:
                if not _named(exc, path):
                    report.failures.append((kind, how, str(path), f"{type(exc).__name__} not naming the file: {exc}"))
                outcome = "named error"
            except Exception:  # noqa: BLE001 -- the harness records every uncaught exception
                report.failures.append((kind, how, str(path), traceback.format_exc(limit=6)))
                outcome = "UNCAUGHT"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                path.write_bytes(original)
            report.cases[kind] += 1
            report.outcomes[outcome.split(",")[0]] += 1
            if heavy and fmt in ("npy", "json", "bin") and "cache" in kind:
                # `amt eval` may have rebuilt the cache: rebuild the reference state for later cases
                _restore_cache(world, path)
    finally:
        signal.signal(signal.SIGALRM, previous)
        logging.disable(logging.NOTSET)
    report.seconds = time.perf_counter() - start
    return report


def _restore_cache(world: World, path: Path) -> None:
    folder = path.parent.parent if path.parent.name == "labels" else path.parent
    try:
        open_cache(folder, verify=True)
    except CacheError:
        build_cache(world.root, SPLIT, folder, size=56, workers=1, chunk_size=8, progress=False, force=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="mutated files (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where the tree is written (default: a temp folder)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.n, args.seed, args.workdir or Path(tmp), args.timeout)
    print(report.summary())
    for kind, how, path, error in report.failures[:50]:
        print(f"--- {kind} ({how}) {path}\n{error}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
