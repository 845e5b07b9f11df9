"""Inference models stored in a lower precision (`amt predict --dtype`, `amt bench --dtype`).

`inference_model(model, "bfloat16")` returns a copy whose weights are cast once to bf16 (no
per-call weight casts as under autocast, which in inference mode re-casts every weight on every
call): the backbone, the feature pyramid, the CLS projection and the query decoder -- where the
FLOPs are -- run in bf16; the geometric heads (hand encoder, object head, refinement, contact)
keep float32 weights, as `AMT.forward` already runs them with autocast disabled and casts their
inputs to float32 (bf16's 8-bit mantissa would put a ~0.4 % floor on depths and projections).
The image is cast to the backbone's dtype by a forward pre-hook, so callers pass float32 images
and read float32 outputs. Sigma-reparameterised linears are folded first (W_hat computed in
float32, then cast).

Measured parity against float32 is stated by tests/inference/test_precision.py.
bf16 pays off on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX) and on GPUs; elsewhere
it runs, slowly, and a warning says so.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from amt.models.sigma_reparam import fold_sigma_reparam

log = logging.getLogger(__name__)

INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# modules of AMT that stay float32 in a bf16 inference model (run under autocast-disabled in AMT.forward)
# the geometric heads, and the two small inputs to them that read float32 tensors (the crop K's
# features, the stem's skip into the heatmap features); a model without the latter has them None
FLOAT32_MODULES = ("hand", "objects", "refiner", "contact", "camera_in", "stem_in")


class PrecisionError(ValueError):
    """An inference dtype that is not supported (the message names the accepted ones)."""


def parse_dtype(name: str) -> torch.dtype:
    """'float32' | 'bfloat16' -> the torch dtype; anything else is a PrecisionError."""
    if name not in INFERENCE_DTYPES:
        raise PrecisionError(f"--dtype {name!r}: expected one of {', '.join(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[name]


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _cast_input(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple) -> tuple:
        image, *rest = args
        return (image.to(dtype), *rest)

    return hook


def inference_model(
    model: nn.Module, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None
) -> nn.Module:
    """`model` itself for float32; for bfloat16 an eval-mode copy stored in bf16 as described in
    the module docstring (the caller's model is untouched). Call on an AMT-like model with
    `backbone` and the `FLOAT32_MODULES` heads; `device`: where it will run (default: where its
    parameters are), only for the warning about CPUs without bf16 instructions."""
    dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    if dtype == torch.float32:
        return model
    if dtype != torch.bfloat16:
        raise PrecisionError(f"inference dtype {dtype}: expected float32 or bfloat16")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cpu" and not cpu_has_bf16_matmul():
        log.warning("this CPU has no bf16 matrix instructions (AVX512-BF16/AMX): bf16 inference will be slow")
    low = copy.deepcopy(model).eval()
    fold_sigma_reparam(low)  # W_hat in float32 before the cast
    low.to(dtype)
    for name in FLOAT32_MODULES:
        if (module := getattr(low, name, None)) is not None:
            module.float()
    low.backbone.register_forward_pre_hook(_cast_input(dtype))
    low.inference_dtype = dtype
    kept = [name for name in FLOAT32_MODULES if getattr(low, name, None) is not None]
    log.info("inference model stored in %s (float32 heads: %s)", dtype, ", ".join(kept))
    return low
