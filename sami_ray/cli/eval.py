"""`sami-ray eval TARGET`: evaluate the latest model of a run, or any model folder, on the held-out queries."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..config import demo_config_path, load_config
from ..driver import Run
from ..errors import UserError
from ..inputs import seed_principles
from ..sami.constitutions import PrincipleSet


def _is_model(target: str) -> bool:
    return target.startswith("builtin:") or (Path(target).expanduser() / "config.json").exists()


def evaluate_target(target: str, config: str | None, overrides: list[str],
                    progress: Callable[[str], None] = print) -> dict:
    """A run URI: its latest committed model, evaluated as the run evaluates an iteration (same judge, same
    baselines), the report stored under `evals/` in the run. A model folder: evaluated under `config` (default:
    the demo's task and principles)."""
    if _is_model(target):
        cfg = load_config(config or str(demo_config_path()),
                          list(overrides) + [f"models.policy.path={target}",
                                             f"storage.uri={tempfile.mkdtemp(prefix='sami-ray-eval-')}"])
        run = Run.start(cfg, run_id="eval", progress=progress)
        iteration, stage, principles = 0, None, PrincipleSet(seed_principles(cfg.constitutions))
    else:
        if config or overrides:
            raise UserError("eval of a run uses the run's own config; --config and overrides apply to model folders")
        run = Run.resume(target, progress=progress)
        if run.store.principles() is None:
            raise UserError(f"{target}: the run has no committed principles yet")
        iteration, stage = run.store.latest_model() or (0, None)
        principles = run.loop.principles()
    try:
        _, held_out = run.loop.queries()
        if not held_out:
            raise UserError("task.queries.held_out is 0: there are no held-out queries to evaluate on")
        progress(f"evaluating {stage or run.cfg.models.policy.path} on {len(held_out)} held-out queries")
        base = None if _is_model(target) else run.store.eval_report(0)
        report = run.loop.evaluate_model(iteration, stage, held_out, principles, base)
    finally:
        run.shutdown()
    if not _is_model(target):
        run.store.put_eval(report)
    else:
        report["model"] = run.cfg.models.policy.path
    return report

