"""Estimate GPU memory per rank and time per epoch of the real DexYCB run, from the CPU alone.

    python benchmarks/estimate_real_run.py [--preset vitl14] [--size 224] [--batch-per-gpu 64 8]
                                           [--gpus 1 8] [--json runs/estimate_vitl14.json]

No GPU is needed, and none is measured: every figure is arithmetic on quantities counted here.

* Model states (bytes, per rank): fp32 weights (all parameters), fp32 gradients, AdamW's two fp32
  moments (trainable parameters), the fp32 EMA copy (all parameters), and under DDP one more
  fp32 copy of the trainable gradients (the reducer's buckets).
* Activations: the bytes of the tensors autograd saves for the backward pass during one training
  forward + loss under bf16 autocast (torch.autograd.graph.saved_tensors_hooks, storages counted
  once, parameters not counted), at batch 1 and 2 on the CPU: per sample = the difference, the
  rest (bf16 weight copies) once per step. CPU autocast casts the same matmul/conv inputs to bf16
  as CUDA autocast; CUDA workspaces, allocator fragmentation and the CUDA context (~1 GB) are not
  included, so read the figure as a lower bound with ~20% to add.
* The GPU-resident training cache: N x size^2 x 3 uint8 + the label arrays, split over the ranks.
* Time per epoch: training FLOPs per sample (forward + backward, FlopCounterMode, the counter of
  `amt bench`) x s0_train's 465,504 samples / (GPUs x the H200's published dense bf16 peak,
  989 TFLOP/s, x an assumed model FLOP utilisation of 25-40%). The host-side Hungarian matching
  and data order add latency that this does not count.

The CPU matmul ceiling of the same run is printed with the figures (the machine's own scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from amt.data.cache_format import LABEL_SPECS
from amt.inference.bench import matmul_ceiling
from amt.models import build_model
from amt.models.info import count_flops
from amt.testing import random_batch
from amt.training.losses import AMTLoss

S0_TRAIN = 465_504  # samples (toolkit README, docs: ../shared/docs/dexycb_spec.md "Counts")
H200_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H200 SXM datasheet (1,979 TFLOP/s is with sparsity)
MFU = (0.25, 0.40)  # assumed utilisation range of a well-fed training step


def saved_bytes(model: torch.nn.Module, loss_fn: AMTLoss, batch_size: int, size: int) -> int:
    """Bytes autograd keeps for backward in one bf16-autocast training forward + loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    batch = random_batch(batch_size, image_size=size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(batch)
        loss_fn(outputs, batch)
    return sum(seen.values())


def cache_bytes(samples: int, size: int) -> int:
    """Bytes of a training cache of `samples` crops at `size` px (images + every label array)."""
    labels = sum(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in LABEL_SPECS.values()
    )
    return samples * (size * size * 3 + labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vitl14")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    p.add_argument("--global-batch", type=int, default=64, help="training.batch_size (the paper's: 64)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    model = build_model(args.preset, image_size=args.size)  # random weights: only shapes matter
    model.train()
    loss_fn = AMTLoss()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    one, two = (saved_bytes(model, loss_fn, b, args.size) for b in (1, 2))
    per_sample, per_step = two - one, 2 * one - two
    batch = random_batch(1, image_size=args.size)

    def train_step() -> None:
        loss_fn(model(batch), batch)[0].backward()

    flops = count_flops(train_step)
    ceiling = matmul_ceiling(torch.device("cpu"), torch.float32, 2048)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, no GPU",
        "command": " ".join(["python benchmarks/estimate_real_run.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpu_matmul_ceiling_gflops_fp32": ceiling["flops_per_s"] / 1e9,
        "preset": args.preset, "image_size": args.size,
        "params_total": total, "params_trainable": trainable,
        "activation_bytes_per_sample": per_sample, "activation_bytes_per_step": per_step,
        "train_flops_per_sample": flops,
        "configs": [],
    }  # fmt: skip
    for gpus in args.gpus:
        micro = args.global_batch // gpus
        states = 4 * (total + trainable + 2 * trainable + total) + (4 * trainable if gpus > 1 else 0)
        activations = per_sample * micro + per_step
        shard = cache_bytes(S0_TRAIN, args.size) / gpus
        epoch_s = [S0_TRAIN * flops / (gpus * H200_BF16_DENSE * u) for u in MFU]
        result["configs"].append({
            "gpus": gpus, "batch_per_gpu": micro, "states_gb": states / 1e9, "activations_gb": activations / 1e9,
            "cache_shard_gb": shard / 1e9, "total_gb": (states + activations + shard) / 1e9,
            "epoch_minutes": [s / 60 for s in epoch_s],
        })  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
