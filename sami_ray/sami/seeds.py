"""Seeds derived from the run's seed and named keys: one helper, so no two uses ever share a stream by accident.

`derive_seed(seed, "sample", k, query_id, j)` depends only on its arguments (sha256, stable across processes and
Python versions, unlike `hash()`), and adding a key never collides with another use's keys.
"""

from __future__ import annotations

import hashlib
import random

SEED_MODULUS = 2**31  # engines (vLLM, torch) accept seeds below this


def derive_seed(seed: int, *keys: object) -> int:
    """A non-negative int below 2**31 that depends only on the seed and the keys."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_MODULUS


def derive_rng(seed: int, *keys: object) -> random.Random:
    """A generator that depends only on the seed and the keys."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
