"""Retries with exponential backoff inside a bounded total time."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import StoreError

log = logging.getLogger("sami_ray.storage")
T = TypeVar("T")


def with_retries(fn: Callable[[], T], url: str, what: str, total_seconds: float,
                 is_transient: Callable[[BaseException], bool], describe: Callable[[BaseException], str],
                 first_delay: float = 0.2, max_delay: float = 5.0) -> T:
    """Call fn; on a transient fault sleep and retry until total_seconds have passed, then raise one StoreError."""
    start = time.monotonic()
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except StoreError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise
            elapsed = time.monotonic() - start
            if elapsed >= total_seconds:
                raise StoreError(f"{url}: {what} failed after {attempt} attempts in {elapsed:.1f} s "
                                 f"(storage.retry_total_seconds={total_seconds:g}): {describe(e)}") from e
            # Jitter keeps many workers from retrying in lockstep; the last try lands on the deadline.
            pause = min(min(delay, max_delay) * (0.5 + random.random() / 2), total_seconds - elapsed)
            log.warning("%s: %s failed (%s); retry %d in %.1f s", url, what, describe(e), attempt, pause)
            time.sleep(pause)
            delay *= 2
