"""Which examples each worker trains on at each step: a fixed shard per rank and a deterministic stream over it.

Rank r owns the examples at positions r, r + W, r + 2W, ... of the samples file (W workers): shards are disjoint,
cover every example, and are the same after a restart, so a resumed group knows what it already trained on. Each
rank walks its shard as a concatenation of per-epoch permutations (seeded by run seed, rank and epoch); optimizer
step s and accumulation micro-step a read a fixed slice of that walk, so the data position is just the step number.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def owns(position: int, rank: int, world_size: int) -> bool:
    """Whether the example at `position` (0-based line of the samples file) belongs to `rank`'s shard."""
    return position % world_size == rank


def examples_per_step(micro_batch: int, grad_accum: int, world_size: int) -> int:
    return micro_batch * grad_accum * world_size


def total_steps(num_examples: int, *, epochs: float, max_steps: int | None, micro_batch: int, grad_accum: int,
                world_size: int) -> int:
    """Optimizer steps for `epochs` passes over all shards (at least one step), capped by `max_steps`."""
    per_step = examples_per_step(micro_batch, grad_accum, world_size)
    steps = max(1, math.floor(epochs * num_examples / per_step))
    return min(steps, max_steps) if max_steps else steps


@lru_cache(maxsize=4)
def _permutation(shard_size: int, seed: int, rank: int, epoch: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, rank, epoch])
    return tuple(int(i) for i in rng.permutation(shard_size))


def micro_batch_indices(step: int, accum: int, rank: int, *, shard_size: int, micro_batch: int, grad_accum: int,
                        seed: int) -> list[int]:
    """Indices into `rank`'s own shard of its micro-batch at (optimizer step, accumulation micro-step)."""
    start = (step * grad_accum + accum) * micro_batch
    out = []
    for k in range(start, start + micro_batch):
        epoch, offset = divmod(k, shard_size)
        out.append(_permutation(shard_size, seed, rank, epoch)[offset])
    return out


def epoch_at(step: int, *, num_examples: int, micro_batch: int, grad_accum: int, world_size: int) -> float:
    """Epochs completed after `step` optimizer steps."""
    return step * examples_per_step(micro_batch, grad_accum, world_size) / num_examples
