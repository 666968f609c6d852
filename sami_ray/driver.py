"""A run: its store, its roles and the stage loop, put together. `Run.start` (new) or `Run.resume` (existing).

The stages themselves are walked by `stages.StageLoop`; the run's layout is known only to `storage.run.RunStore`;
the Ray-side parts are started by `roles.Roles`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import RunConfig
from .roles import Roles
from .stages import RunSummary, StageLoop, stage_timer
from .storage.run import RunStore

log = logging.getLogger("sami_ray.driver")


class Run:
    def __init__(self, cfg: RunConfig, store: RunStore, progress: Callable[[str], None] | None = None):
        self.cfg, self.store = cfg, store
        self.say = progress or log.info
        self.timings: dict[str, float] = {}
        timed = stage_timer(self.timings, self.say, store.run_id)  # roles' start-ups are timed as stages are
        self.roles = Roles(cfg, timed=timed, run_id=store.run_id)
        self.loop = StageLoop(cfg, store, self.roles, self.say, self.timings, timed)

    @classmethod
    def start(cls, cfg: RunConfig, run_id: str | None = None, progress: Callable[[str], None] | None = None) -> Run:
        """A new run under cfg.storage.uri (its config is stored first)."""
        return cls(cfg, RunStore.create(cfg, run_id), progress)

    @classmethod
    def resume(cls, run_uri: str, storage_overrides: dict | None = None,
               progress: Callable[[str], None] | None = None) -> Run:
        """Reopen a run from its stored config; credentials come from the environment or the overrides."""
        store = RunStore.open(run_uri, storage_overrides)
        return cls(store.load_config(storage_overrides), store, progress)

    def execute(self) -> RunSummary:
        return self.loop.execute()

    def shutdown(self) -> None:
        self.roles.shutdown()
