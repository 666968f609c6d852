"""Progress of long work. In a terminal: one live line per running stage (its name, the time so far, what it is
doing now) and a bar for work counted in parts; the stage's time when it ends. Without a terminal (job logs, a
pipe): plain lines only, no carriage returns: a line at each quarter of counted work and the stage's time."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import logs

log = logging.getLogger("sami_ray.progress")


def _stream():
    """Where bars go: the session's terminal (the run's own lines share it), else stderr as tqdm's default."""
    out = logs.terminal()
    return out if out is not None else sys.stderr


class _StageLines:
    """The live lines of the stages running now (nested: a role's start inside the stage that needed it), refreshed
    every second so the elapsed time moves while a stage waits on Ray."""

    def __init__(self) -> None:
        self.open: list[Any] = []
        self.lock = threading.Lock()
        self.ticker: threading.Thread | None = None

    def start(self, name: str) -> Any:
        out = logs.terminal()
        if out is None or not out.isatty():
            return None
        from tqdm import tqdm

        bar = tqdm(desc=name, bar_format="{desc} {elapsed}{postfix}", file=out, leave=False)
        with self.lock:
            self.open.append(bar)
            if self.ticker is None:
                self.ticker = threading.Thread(target=self._tick, name="sami-stage-lines", daemon=True)
                self.ticker.start()
        return bar

    def end(self, bar: Any) -> None:
        if bar is None:
            return
        with self.lock:
            if bar in self.open:
                self.open.remove(bar)
        bar.close()

    def note(self, what: str) -> None:
        """What the innermost running stage is doing now (e.g. `scoring 48 answers`)."""
        with self.lock:
            bar = self.open[-1] if self.open else None
        if bar is not None:
            bar.set_postfix_str(what)

    def _tick(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                bars = list(self.open)
            for bar in bars:
                bar.refresh()


_stages = _StageLines()


class Progress:
    """Counted work (batches, steps). `update(n, **figures)` shows figures such as a loss beside the count."""

    def __init__(self, desc: str, total: int, unit: str = "it"):
        self.desc, self.total, self.done = desc, total, 0
        self._next_line = 0.25
        self.bar = None
        _stages.note(desc)
        stream = _stream()
        if stream.isatty() and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream)

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(figures, refresh=False)
            self.bar.update(n)
        elif self.total > 1 and self.done / self.total >= self._next_line:
            shown = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in figures.items())
            line = f"{self.desc}: {self.done}/{self.total}{shown}"
            if logs.terminal() is not None:
                logs.say(line)
            else:
                log.info(line)
            while self._next_line <= self.done / self.total:
                self._next_line += 0.25

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        _stages.note("")


def timer(timings: dict[str, float], say: Callable[[str], None],
          on_done: Callable[[str, float], None] | None = None) -> Callable[..., Any]:
    """`timed(name, fn, *args, **kw)`: run fn, add its wall time to timings[name], say how long it took and hand
    (name, seconds) to `on_done` (the dashboard's stage timing). In a terminal the stage shows a live line while
    it runs."""

    def timed(name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        line = _stages.start(name)
        failed = True
        try:
            out = fn(*args, **kwargs)
            failed = False
            return out
        finally:
            _stages.end(line)
            dt = time.perf_counter() - t0
            timings[name] = round(timings.get(name, 0.0) + dt, 2)
            say(f"{name:<16} {dt:7.1f} s" + ("  (failed)" if failed else ""))
            if on_done is not None:
                on_done(name, dt)

    return timed
