"""Test hooks that kill one process once, to prove that runs survive it (training restarts from checkpoints,
sampler batches move to a fresh replica).

`SAMI_RAY_TEST_FAULTS='{"train_exit": {"rank": 1, "step": 3, "marker": "/tmp/x", "delay_s": 3}}'` makes rank 1
exit hard after optimizer step 3 (and `delay_s` seconds), unless the marker file exists; the marker is written
first, so it happens once per marker. `{"sampler_exit": {"call": 2, "marker": "/tmp/y"}}` makes a sampler replica
exit hard in the middle of its second `generate` call (without "call": of any call made while the marker is
absent); `{"sampler_start_exit": {"marker": "/tmp/z"}}` makes a replica exit as it reports ready (as one placed
on a node that is dying does). The delay lets Ray Train's controller register the checkpoints already reported:
it polls workers periodically, and a checkpoint reported just before a crash may otherwise be dropped.
`{"trace_examples": {"dir": "/tmp/t"}}` makes every training rank append "step<TAB>query id" lines of what it
trains on to dir/rank-<r>.tsv, so a test can see which examples each worker saw, before and after a restart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "SAMI_RAY_TEST_FAULTS"


def _spec(kind: str) -> dict | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        return json.loads(raw).get(kind)
    except (json.JSONDecodeError, AttributeError):
        return None


def _exit_once(spec: dict, what: str) -> None:
    marker = Path(spec["marker"])
    if marker.exists():
        return
    marker.write_text(what + "\n")
    time.sleep(float(spec.get("delay_s", 0)))
    os._exit(17)


def maybe_exit(rank: int, step: int) -> None:
    spec = _spec("train_exit")
    if spec and int(spec.get("rank", -1)) == rank and int(spec.get("step", -1)) == step:
        _exit_once(spec, f"rank {rank} exited after step {step}")


def maybe_exit_sampler(call: int) -> None:
    spec = _spec("sampler_exit")
    if spec and (spec.get("call") is None or int(spec["call"]) == call):
        _exit_once(spec, f"sampler replica exited in generate call {call}")


def maybe_exit_sampler_start() -> None:
    spec = _spec("sampler_start_exit")
    if spec:
        _exit_once(spec, "sampler replica exited while starting")


def trace_examples(rank: int, step: int, ids: list[str]) -> None:
    spec = _spec("trace_examples")
    if spec:
        with open(Path(spec["dir"]) / f"rank-{rank}.tsv", "a", encoding="utf-8") as f:
            f.writelines(f"{step}\t{i}\n" for i in ids)
