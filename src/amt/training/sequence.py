"""Sequence batches: micro-batches made of clips of K consecutive frames of one sequence and camera.

`data.sequence_length=K` (K >= 2) switches the trainer from shuffled single frames to clips:
each micro-batch holds `micro // K` clips, clip-major (frames of a clip adjacent, in time
order), and carries `sequence_length = K`, which activates the temporal loss term (second
difference of the joints across the clip, `amt.training.losses`).

A clip is K samples of one (subject, sequence, serial) whose frame numbers step by the group's
smallest frame step, so clips stay valid when a split subsamples frames or when a distributed
run shards samples `rank::world_size` (each rank then sees clips at a lower frame rate).
Clips tile each run of consecutive frames without overlap; their order is a permutation drawn
from (seed, epoch), so the data order is a pure function of the step, as for single frames.

`ClipAugment` draws one augmentation per clip (the same rotation, scale, shift and colour for
all K frames), so augmentation does not add fake motion between the frames of a clip.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from amt.errors import ConfigError
from amt.training.rng import epoch_order

_KEYS = ("subject", "sequence", "serial")


def clip_positions(meta: Sequence[dict[str, Any]], length: int) -> np.ndarray:
    """(n, length) int64 positions into `meta` (per-sample dicts with subject, sequence, serial,
    frame): each row one camera's `length` consecutive frames in time order. Consecutive means
    stepping by the group's smallest frame step. Clips tile each run without overlap; rows are
    sorted by their first position."""
    if length < 1:
        raise ConfigError(f"config data.sequence_length={length}: expected >= 1")
    groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for pos, m in enumerate(meta):
        groups[tuple(m[k] for k in _KEYS)].append((int(m["frame"]), pos))
    clips: list[list[int]] = []
    for members in groups.values():
        members.sort()
        frames = np.array([f for f, _ in members])
        steps = np.diff(frames)
        if len(members) < length or (steps <= 0).any():  # too short, or duplicated frames
            continue
        step = steps.min()
        run_start = 0
        for j in range(1, len(members) + 1):
            if j == len(members) or steps[j - 1] != step:
                clips += [[p for _, p in members[s : s + length]] for s in range(run_start, j - length + 1, length)]
                run_start = j
    clips.sort()
    return np.array(clips, dtype=np.int64).reshape(-1, length)


class SequenceSampler:
    """Index chunks of clips for the trainer (rank-local positions into the dataset).

    meta: per-sample meta of this rank's dataset, in dataset order; length: K.
    """

    def __init__(self, meta: Sequence[dict[str, Any]], length: int, seed: int) -> None:
        self.length, self.seed = length, seed
        self.clips = clip_positions(meta, length)
        if len(self.clips) == 0:
            raise ConfigError(
                f"config data.sequence_length={length}: no {length} consecutive frames of one sequence and "
                f"camera among {len(meta)} samples"
            )

    def clips_per_batch(self, micro: int) -> int:
        if micro % self.length:
            raise ConfigError(
                f"config data.sequence_length={self.length} must divide the per-device micro-batch {micro} "
                "(training.batch_size / (world_size x grad_accum_steps))"
            )
        return micro // self.length

    def steps_per_epoch(self, per_rank_batch: int) -> int:
        """Optimizer steps per epoch for `per_rank_batch` = micro x accumulation samples per rank."""
        return len(self.clips) // self.clips_per_batch(per_rank_batch)

    def order(self, epoch: int) -> torch.Tensor:
        """(n, K) clips permuted by `epoch_order(n, seed, epoch)`."""
        return torch.from_numpy(self.clips)[epoch_order(len(self.clips), self.seed, epoch)]

    def chunks(self, epoch: int, first_step: int, stop_step: int, micro: int, accum: int) -> list[torch.Tensor]:
        """Index tensors (micro,) of the micro-batches of steps [first_step, stop_step), clip-major."""
        per_micro = self.clips_per_batch(micro)
        clips = self.order(epoch)
        out = []
        for s in range(first_step, stop_step):
            for m in range(accum):
                k = (s * accum + m) * per_micro
                out.append(clips[k : k + per_micro].flatten())
        return out


class ClipAugment:
    """Wraps a `BatchAugment` so that the K frames of each clip share one set of parameters."""

    def __init__(self, augment: Any, length: int) -> None:
        self.augment, self.length = augment, length

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        image = batch["image"]
        b, _, h, w = image.shape
        clips = b // self.length
        params = self.augment.sample_params(clips, max(h, w), image.device, generator)
        params = type(params)(**{k: v.repeat_interleave(self.length, 0) for k, v in vars(params).items()})
        noise = torch.randn(
            image.shape, generator=generator, device=generator.device if generator is not None else image.device
        )
        return self.augment.apply(batch, params, noise.to(image.device))
