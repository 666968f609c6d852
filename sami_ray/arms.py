"""A comparison job: several runs ("arms") that differ only in a few settings, run one after another, then
compared. A job file:

```yaml
name: compare-demo
config: demo                 # the embedded demo's config, or a run config file
overrides: [run.seed=0]      # for every arm
arms:                        # arm name -> its own overrides
  sami: []
  dpo: [trainer.objective=dpo]
share: [principles, iter-0000/eval, iter-0001/samples]
```

Arms whose settings agree on what a stage depends on produce the same stage; `share` names such stages, which the
first arm computes and the others receive as committed stages (verified copies), so a comparison of training
objectives does not write principles, evaluate the base model and sample iteration 1 once per arm. Each arm is a
normal run in the store (`<storage>/<name>-<arm>`): a killed job resumes every arm where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .config import RunConfig, demo_config_path, load_config
from .errors import ConfigError, UserError

log = logging.getLogger("sami_ray.arms")


class ArmsJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    config: str = "demo"
    overrides: list[str] = Field(default_factory=list)
    arms: dict[str, list[str]] = Field(min_length=2)
    share: list[str] = Field(default_factory=list)


def load_job(path: str | Path) -> ArmsJob:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return ArmsJob.model_validate(data)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the comparison job ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not a comparison job: {e}") from None


def arm_config(job: ArmsJob, arm: str, extra: list[str]) -> RunConfig:
    base = str(demo_config_path()) if job.config == "demo" else job.config
    return load_config(base, [*job.overrides, *job.arms[arm], *extra])


def _share(src: Any, dst: Any, stages: list[str]) -> None:
    """Commit `src`'s committed `stages` into `dst` (verified on fetch, committed with their manifests' meta)."""
    for stage in stages:
        if dst.is_committed(stage) or not src.is_committed(stage):
            continue
        folder = src.fetch(stage)
        if folder is not None:
            dst.commit(stage, folder, src.manifest_meta(stage))
            log.info("%s: %s shared from %s", dst.uri, stage, src.uri)


def run_arms(job: ArmsJob, extra: list[str], say: Callable[[str], None]) -> list[str]:
    """Run (or resume) every arm; returns the arms' run URIs, in the job's order."""
    from .driver import Run

    uris: list[str] = []
    first: Any = None
    for arm in job.arms:
        cfg = arm_config(job, arm, extra)
        run_id = f"{job.name}-{arm}"
        uri = f"{cfg.storage.uri.rstrip('/')}/{run_id}"
        try:  # a killed job goes on where each arm stopped
            run = Run.resume(uri, cfg.storage.model_dump(exclude={"uri"}), progress=say)
        except UserError:
            run = Run.start(cfg, run_id=run_id, progress=say)
        if first is not None:
            _share(first, run.store, job.share)
        say(f"=== arm {arm}: {run.store.uri}")
        try:
            run.execute()
        finally:
            run.shutdown()
        first = first or run.store
        uris.append(run.store.uri)
    return uris
