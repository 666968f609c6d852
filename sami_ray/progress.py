"""Progress of long work: a tqdm bar in a terminal, a few plain lines in job logs (no carriage returns there)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sami_ray.progress")


class Progress:
    def __init__(self, desc: str, total: int, unit: str = "it"):
        self.desc, self.total, self.done = desc, total, 0
        self._next_line = 0.25
        self.bar = None
        if sys.stderr.isatty() and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total > 1 and self.done / self.total >= self._next_line:
            log.info("%s: %d/%d", self.desc, self.done, self.total)
            self._next_line += 0.25

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def timer(timings: dict[str, float], say: Callable[[str], None],
          on_done: Callable[[str, float], None] | None = None) -> Callable[..., Any]:
    """`timed(name, fn, *args, **kw)`: run fn, add its wall time to timings[name], say how long it took and hand
    (name, seconds) to `on_done` (the dashboard's stage timing)."""

    def timed(name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            timings[name] = round(timings.get(name, 0.0) + dt, 2)
            say(f"[{name}] {dt:.1f} s")
            if on_done is not None:
                on_done(name, dt)

    return timed
