"""Inference fast path: inference mode, bf16 autocast, optional torch.compile, CUDA graphs.

`FastPath(model, device)` is a callable `(image (B,3,H,W), K (B,3,3)) -> dict` of the output
contract's tensors (float32, no `aux`). What it does depends on the device:
- always: eval mode, `torch.inference_mode`, the flat-output wrapper of `amt.inference.export`;
- sigma-reparameterised linears folded into plain ones (`amt.models.sigma_reparam.
  fold_sigma_reparam`, on a copy: the caller's model keeps training normally), which removes
  the per-layer normalisation kernels;
- autocast (default bf16 on CUDA; off on CPU, where it changes results at the 1e-2 level and
  only pays on CPUs with bf16 matrix units (AMX): ask for it with autocast='bf16');
- torch.compile when asked (off by default: compiling takes minutes for the large presets),
  with inductor's freezing: the weights as they are at the first call become constants, so
  inductor folds them, prepacks them for oneDNN on CPU and fuses bias and activation into the
  matmul (1.2-1.4x at batch 1 on CPU: benchmarks/README.md "Compiled inference on CPU"); a model
  trained further after that needs a new FastPath;
- on CUDA, a CUDA graph per input shape: the first call with a new shape warms up on a side
  stream and captures the forward into static input/output buffers; later calls copy the
  inputs into those buffers and replay, removing the per-kernel launch cost that dominates
  batch-1 latency. The backbone itself is built with SDPA attention by amt.models.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from amt.inference.export import OUTPUT_NAMES, FlatOutputs
from amt.models.sigma_reparam import SigmaReparamLinear, fold_sigma_reparam
from amt.training.step import check_compiler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathConfig:
    """autocast: 'auto' (bf16 on CUDA, none on CPU), 'bf16', 'fp16' or 'none';
    compile: wrap in torch.compile (mode `compile_mode`, backend `compile_backend`; with
        inductor, freezing on: see the module docstring);
    cuda_graph: capture CUDA graphs (CUDA only; ignored on CPU);
    fold_sigma_reparam: run a folded copy of the model (see the module docstring)."""

    autocast: str = "auto"
    fold_sigma_reparam: bool = True
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    cuda_graph: bool = True


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Resolve an autocast setting for a device ('auto': bf16 on CUDA, none elsewhere)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if setting not in _DTYPES:
        raise ValueError(f"autocast {setting!r}: expected one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[setting]


def _folded(model: nn.Module) -> nn.Module:
    """A copy of `model` with its sigma-reparameterised linears folded; `model` itself if it has none."""
    if not any(isinstance(m, SigmaReparamLinear) for m in model.modules()):
        return model
    folded = copy.deepcopy(model)
    n = fold_sigma_reparam(folded)
    log.info("folded %d sigma-reparameterised linear layers for inference", n)
    return folded


class _GraphedForward:
    """One captured CUDA graph for a fixed (image, K) shape, with static input/output buffers."""

    def __init__(self, fn, image: torch.Tensor, K: torch.Tensor, warmup: int = 3) -> None:
        # on the inputs' device (e.g. cuda:1): Stream() and current_stream() follow the current device
        with torch.cuda.device(image.device):
            self.image, self.K = image.clone(), K.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    fn(self.image, self.K)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # our stream: torch.cuda.graph's shared default capture stream lives on the device current at its first use
            with torch.cuda.graph(self.graph, stream=stream):
                self.outputs = fn(self.image, self.K)

    def __call__(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.image.copy_(image)
        self.K.copy_(K)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)


class FastPath:
    """Fast inference callable around an AMT model (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        config: FastPathConfig | None = None,
        flat: nn.Module | None = None,
    ) -> None:
        """flat: what to run instead of the whole model's `FlatOutputs` (any module mapping
        (image, K) to a tuple of tensors, e.g. the bare backbone for benchmarks)."""
        self.config = config or FastPathConfig()
        self.device = torch.device(device)
        self.model = _folded(model) if self.config.fold_sigma_reparam else model
        self.model = self.model.to(self.device).eval()
        self.dtype = autocast_dtype(self.config.autocast, self.device)
        flat = (flat if flat is not None else FlatOutputs(self.model)).to(self.device).eval()
        self._freezing = self.config.compile and self.config.compile_backend == "inductor"
        if self.config.compile:
            if self._freezing:
                check_compiler(self.device, "--compile", "run without --compile")
            # one static graph per input shape (like the CUDA graphs): after a second batch size
            # torch.compile's default turns the batch dimension symbolic, and the dynamic graph
            # ran batch 8 no faster than eager on CPU (benchmarks/README.md "Compiled inference on CPU")
            flat = torch.compile(
                flat, mode=self.config.compile_mode, backend=self.config.compile_backend, dynamic=False
            )
        self._flat = flat
        self.use_graphs = self.config.cuda_graph and self.device.type == "cuda"
        self._graphs: dict[tuple, _GraphedForward] = {}
        log.info(
            "fast path on %s: autocast=%s compile=%s cuda_graph=%s",
            self.device, self.dtype, self.config.compile, self.use_graphs,
        )  # fmt: skip

    def _compile_settings(self) -> contextlib.AbstractContextManager:
        """Inductor's freezing around each call (it compiles at the first call of a new shape,
        reading its config then; passed as torch.compile options it is not applied: torch 2.13)."""
        if not self._freezing:
            return contextlib.nullcontext()
        import torch._inductor.config  # here: a heavy import only compiled paths need

        return torch._inductor.config.patch(freezing=True)

    def _forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with ctx, self._compile_settings():
            outs = self._flat(image, K)
        return tuple(t.float() for t in outs)

    @torch.inference_mode()
    def run_flat(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image: (B,3,H,W) normalised; K: (B,3,3) crop intrinsics. Returns the flat outputs, float32."""
        image = image.to(self.device, non_blocking=True)
        K = K.to(self.device, dtype=torch.float32, non_blocking=True)
        if not self.use_graphs:
            return self._forward(image, K)
        key = (tuple(image.shape), image.dtype)
        if key not in self._graphs:
            log.info("capturing a CUDA graph for input shape %s", key[0])
            self._graphs[key] = _GraphedForward(self._forward, image, K)
        return self._graphs[key](image, K)

    def __call__(self, image: torch.Tensor, K: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output contract's tensors (float32, no `aux`) by name."""
        return dict(zip(OUTPUT_NAMES, self.run_flat(image, K)))
