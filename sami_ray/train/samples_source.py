"""The training examples as a Ray Data source that the worker group may be handed before the samples exist.

A stage that starts early (trainer.start_early) builds its worker group while the samples are still being drawn,
so Ray Train gets this dataset before there is a file to list. Its one read task asks the stage's channel for the
samples file, waiting until the driver has handed it over, then streams the file's lines (blank ones skipped, as
`read_jsonl` does, so line positions match the driver's count). The read runs on the driver's node, whose disk
holds the file. A stage that starts with its samples in hand gets them as blocks the driver has put into the
object store (`committed_samples_dataset`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

_LINES_PER_BLOCK = 4096  # a block of examples stays a few MiB however long the run


class SamplesSource(Datasource):
    def __init__(self, channel: Any):
        super().__init__()
        self.channel = channel  # the stage's channel actor (train/channel.py `StageChannel`)

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown until the samples are handed over

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        channel = self.channel

        def read() -> Iterator[pa.Table]:
            import ray

            given = ray.get(channel.wait_examples.remote())
            if given.get("cancelled"):
                return
            yield from _line_blocks(given["path"])

        return [ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))]


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\r\n")


def _line_blocks(path: str) -> Iterator[pa.Table]:
    lines: list[str] = []
    for line in _lines(path):
        lines.append(line)
        if len(lines) == _LINES_PER_BLOCK:
            yield pa.table({"text": lines})
            lines = []
    if lines:
        yield pa.table({"text": lines})


def committed_samples_dataset(path: str) -> Any:
    """The dataset of a samples file that is committed already: the driver reads it (once, whole: some hundred MB
    for 100,000 queries) and puts its blocks into the object store on its own node, so the workers' iteration
    starts no read task. Such a task's worker process (it carries the training workers' environment, so no idle
    one fits) took 3 to 6 s to start on 2 cores, on the stage's critical path beside the workers' imports."""
    import ray.data

    rows = [{"text": line} for line in _lines(path)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / _LINES_PER_BLOCK)))
    ds.context.enable_progress_bars = False
    return ds


def samples_dataset(channel: Any) -> Any:
    """The dataset of the samples file the driver will hand to `channel`, read on the driver's node."""
    import ray
    import ray.data

    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # a label every Ray node carries
    # No CPU for the read: the worker group holds the CPUs it asked for, and a read waiting for one of them would
    # wait for ever (reading a text file needs next to none).
    ds = ray.data.read_datasource(SamplesSource(channel), num_cpus=0, label_selector=here, override_num_blocks=1)
    ds.context.enable_progress_bars = False  # one file, read once per worker: a bar would only flood the log
    return ds
