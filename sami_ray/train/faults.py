"""A test hook that kills one training worker once, to prove restarts from checkpoints work.

`SAMI_RAY_TEST_FAULTS='{"train_exit": {"rank": 1, "step": 3, "marker": "/tmp/x", "delay_s": 3}}'` makes rank 1
exit hard after optimizer step 3 (and `delay_s` seconds), unless the marker file exists; the marker is written
first, so it happens once per marker. The delay lets Ray Train's controller register the checkpoints already
reported: it polls workers periodically, and a checkpoint reported just before a crash may otherwise be dropped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "SAMI_RAY_TEST_FAULTS"


def maybe_exit(rank: int, step: int) -> None:
    raw = os.environ.get(ENV)
    if not raw:
        return
    try:
        spec = json.loads(raw).get("train_exit")
    except (json.JSONDecodeError, AttributeError):
        return
    if not spec or int(spec.get("rank", -1)) != rank or int(spec.get("step", -1)) != step:
        return
    marker = Path(spec["marker"])
    if marker.exists():
        return
    marker.write_text(f"rank {rank} exited after step {step}\n")
    time.sleep(float(spec.get("delay_s", 0)))
    os._exit(17)
