"""Refreshing the samplers after training.

Today the weights travel as a safetensors folder (the exported checkpoint) that every replica reloads by path: it
works on CPU and GPU, and a replica that is replaced later loads the same folder. A GPU broadcast from the trainer
(vLLM's weight-transfer API over NCCL) fits behind the same call: the driver only ever calls `sync(pool, path)`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def sync(pool, path: str) -> list[int]:
    versions = pool.load_weights(str(path))
    log.info("sampler replicas now on %s (versions %s)", path, versions)
    return versions
