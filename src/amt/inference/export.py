"""ONNX and TorchScript export of an AMT model, with an automatic parity check.

The exported graph takes `image` (B, 3, S, S) float32 normalised crops, S the checkpoint's
`image_size` (`InputSpec.of(model)`: 224 for the pretrained presets, 96 for the demo's
`tiny_conv`), and `K` (B, 3, 3) float32 crop intrinsics, and returns the output contract's tensors as a flat tuple in
`OUTPUT_NAMES` order (the `aux` dict is not exported). After export the file is loaded back
(onnxruntime / torch.jit.load) and compared with the PyTorch model on random inputs; the
largest absolute difference per output is returned and an `ExportParityError` is raised above
the tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CropConfig, normalize_images
from amt.extras import require

log = logging.getLogger(__name__)

OUTPUT_NAMES: tuple[str, ...] = (
    "joints_3d",
    "joints_3d_coarse",
    "joint_conf",
    "mano_shape",
    "obj_t",
    "obj_quat",
    "obj_logits",
    "contact_points",
    "contact_prob",
    "contact_force",
)
INPUT_NAMES: tuple[str, ...] = ("image", "K")
ONNX_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input: square crops of `size` pixels, normalised with per-channel
    `mean` and `std` (RGB, fractions of 255)."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def of(cls, model: Any, default_size: int = CropConfig().size) -> InputSpec:
        """From `model.config` (`image_size`, optional `image_mean` / `image_std`); a model
        without a config gets `default_size` and ImageNet's normalisation."""
        config = getattr(model, "config", None)
        size = int(getattr(config, "image_size", default_size))
        mean = tuple(getattr(config, "image_mean", IMAGENET_MEAN))
        std = tuple(getattr(config, "image_std", IMAGENET_STD))
        return cls(size, mean, std)  # type: ignore[arg-type]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> float32 normalised with this spec."""
        if self.mean == IMAGENET_MEAN and self.std == IMAGENET_STD:
            return normalize_images(images)  # the exact arithmetic of the training cache
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std


class ExportParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


class FlatOutputs(nn.Module):
    """forward(image (B,3,H,W), K (B,3,3)) -> tuple of the contract tensors in `OUTPUT_NAMES` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model({"image": image, "K": K})
        return tuple(out[name] for name in OUTPUT_NAMES)


def example_inputs(batch: int, size: int = 224, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images (B,3,size,size) and plausible crop intrinsics (B,3,3): fx ~ 2-3 x size."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=g)
    f = size * (2.0 + torch.rand(batch, generator=g))
    c = size / 2.0 + 10.0 * (torch.rand(batch, 2, generator=g) - 0.5)
    K = torch.zeros(batch, 3, 3)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, c[:, 0], c[:, 1], 1.0
    return image, K


@dataclass
class ExportResult:
    """What `export` wrote and how close it is to PyTorch: max abs diff per output and overall."""

    path: Path
    format: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    parity_batches: tuple[int, ...] = ()

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def _export_onnx(wrapper: FlatOutputs, path: Path, inputs: tuple[torch.Tensor, ...], dynamic_batch: bool) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    torch.onnx.export(
        wrapper,
        inputs,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=dynamic_axes,
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


def _run_onnx(path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[np.ndarray]]:
    ort = require("onnxruntime", "export", "the ONNX parity check")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [session.run(list(OUTPUT_NAMES), {"image": img.numpy(), "K": K.numpy()}) for img, K in batches]


def _run_torchscript(path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[np.ndarray]]:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return [[t.numpy() for t in module(img, K)] for img, K in batches]


def parity(
    model: nn.Module, path: Path, fmt: str, batch_sizes: tuple[int, ...], size: int | None = None
) -> dict[str, float]:
    """Max abs difference per output between PyTorch and the exported file on random inputs of
    `size` pixels (None: the model's `image_size`)."""
    size = size if size is not None else InputSpec.of(model).size
    wrapper = FlatOutputs(model).eval()
    batches = [example_inputs(b, size, seed=100 + i) for i, b in enumerate(batch_sizes)]
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    exported = run(path, batches)
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    with torch.inference_mode():
        for (img, K), theirs in zip(batches, exported):
            ours = wrapper(img, K)
            for name, a, b in zip(OUTPUT_NAMES, ours, theirs):
                if tuple(a.shape) != tuple(b.shape):
                    raise ExportParityError(
                        f"{path}: output {name} has shape {tuple(b.shape)}, PyTorch gives {tuple(a.shape)}"
                    )
                diffs[name] = max(diffs[name], float(np.abs(a.numpy() - b).max(initial=0.0)))
    return diffs


def export(
    model: nn.Module,
    path: str | Path,
    fmt: str = "onnx",
    dynamic_batch: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    size: int | None = None,
) -> ExportResult:
    """Export `model` (on CPU, eval mode) to `path` as 'onnx' or 'torchscript', then check parity.

    size: the input crop side (None: the model's `image_size`, `InputSpec.of(model)`).
    The graph is traced at batch 2 when `dynamic_batch` (checked at batches 1 and 3, sizes it was
    not traced with), else at batch 1 (checked at batch 1). Raises ExportParityError when any
    output differs by more than `tolerance` (absolute).
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"unknown export format {fmt!r}; expected 'onnx' or 'torchscript'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    size = size if size is not None else InputSpec.of(model).size
    wrapper = FlatOutputs(model).eval()
    inputs = example_inputs(2 if dynamic_batch else 1, size)
    if fmt == "onnx":  # fail before the slow trace when the extra is missing (torch.onnx needs onnx)
        require("onnx", "export", "amt export --format onnx")
        require("onnxruntime", "export", "amt export --format onnx")
    with torch.no_grad():
        if fmt == "onnx":
            _export_onnx(wrapper, path, inputs, dynamic_batch)
        else:
            traced = torch.jit.trace(wrapper, inputs, check_trace=False)
            torch.jit.save(traced, str(path))
    log.info("exported %s to %s", fmt, path)
    checks = (1, 3) if dynamic_batch else (1,)
    result = ExportResult(path, fmt, parity(model, path, fmt, checks, size), checks)
    if result.worst > tolerance:
        worst = max(result.max_abs_diff, key=result.max_abs_diff.get)
        raise ExportParityError(
            f"{path}: {fmt} output {worst} differs from PyTorch by {result.worst:.3g} > tolerance {tolerance:g} "
            f"(batches {checks})"
        )
    return result
