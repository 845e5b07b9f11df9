"""Randomness as a function of the step: derived seeds, the epoch's data order, the global RNG states.

Determinism (exact resume): the data order of epoch e is a permutation drawn from a generator
seeded with (seed, e); the augmentation of optimizer step s, micro-batch m, rank r uses a
generator seeded with (seed, s, m, r); everything else random (dropout) uses the global RNGs,
whose states are saved in every checkpoint (`rng_state` / `set_rng_state`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """(n,) int64 permutation for `epoch`: a pure function of (n, seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0xDA7A)))


def seed_global_rngs(seed: int) -> None:
    """Seed torch, numpy and python's global RNGs from one 63-bit seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states of this process (torch, numpy, python, CUDA when present)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
