"""The driver's line to one training stage's worker group, as a Ray actor class.

Its own module, importing nothing of the package: the actor's process loads the class's module, and the trainer's
module brings in torch and pydantic (about 1.7 s of CPU on 2 cores), paid by every stage while Ray Train's
controller starts beside it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class StageChannel:
    """The samples handed over once committed (the group may start before they exist), rank 0's per-step
    statistics and reports coming back. A restarted group re-sends some steps; the latest one wins. All methods are
    coroutines: the actor runs them on one event loop."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, Any]] = {}
        self.last_step: dict[str, Any] | None = None
        self.examples: dict[str, Any] | None = None  # {"path", "num_examples"}, or {"cancelled": True}
        self._given = asyncio.Event()

    async def give(self, examples: dict[str, Any]) -> None:
        self.examples = examples
        self._given.set()

    async def wait_examples(self) -> dict[str, Any]:
        await self._given.wait()
        return self.examples  # type: ignore[return-value]

    async def add(self, metrics: dict[str, Any]) -> None:
        self.by_step[int(metrics["step"])] = metrics

    async def add_step(self, stats: dict[str, Any]) -> None:
        self.last_step = stats

    async def latest_step(self) -> dict[str, Any] | None:
        return self.last_step

    async def all(self) -> list[dict[str, Any]]:
        return [self.by_step[k] for k in sorted(self.by_step)]
