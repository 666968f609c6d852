"""Which examples each worker trains on at each step: a deterministic stream, so a restart resumes mid-epoch.

The stream is the concatenation of per-epoch permutations (seeded by run seed and epoch). Optimizer step s,
accumulation micro-step a and rank r read a fixed slice of it, so the data position is just the step number.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def examples_per_step(micro_batch: int, grad_accum: int, world_size: int) -> int:
    return micro_batch * grad_accum * world_size


def total_steps(num_examples: int, *, epochs: float, max_steps: int | None, micro_batch: int, grad_accum: int,
                world_size: int) -> int:
    """Optimizer steps for `epochs` passes (at least one step), capped by `max_steps`."""
    per_step = examples_per_step(micro_batch, grad_accum, world_size)
    steps = max(1, math.floor(epochs * num_examples / per_step))
    return min(steps, max_steps) if max_steps else steps


@lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, epoch])
    return tuple(int(i) for i in rng.permutation(num_examples))


def micro_batch_indices(step: int, accum: int, rank: int, *, num_examples: int, micro_batch: int, grad_accum: int,
                        world_size: int, seed: int) -> list[int]:
    """Example indices of one rank's micro-batch at (optimizer step, accumulation micro-step)."""
    start = ((step * grad_accum + accum) * world_size + rank) * micro_batch
    out = []
    for k in range(start, start + micro_batch):
        epoch, offset = divmod(k, num_examples)
        out.append(_permutation(num_examples, seed, epoch)[offset])
    return out


def epoch_at(step: int, *, num_examples: int, micro_batch: int, grad_accum: int, world_size: int) -> float:
    """Epochs completed after `step` optimizer steps."""
    return step * examples_per_step(micro_batch, grad_accum, world_size) / num_examples
