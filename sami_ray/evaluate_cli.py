"""`sami-ray eval TARGET`: evaluate the latest model of a run, or any model folder, on the held-out queries."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from .config import load_config
from .errors import UserError
from .inputs import seed_principles
from .sami.constitutions import PrincipleSet


def _is_model(target: str) -> bool:
    return target.startswith("builtin:") or (Path(target).expanduser() / "config.json").exists()


def evaluate_target(target: str, config: str | None, overrides: list[str],
                    progress: Callable[[str], None] = print) -> dict:
    """A run URI: its latest committed model, compared with the run's own baseline, and the report stored under
    `evals/` in the run. A model folder: evaluated under `config` (default: the demo's task and principles)."""
    from .cli import default_demo_config
    from .driver import Run
    from .evaluate.runner import evaluate_iteration
    from .storage import CheckpointStore

    if _is_model(target):
        cfg = load_config(config or str(default_demo_config()),
                          list(overrides) + [f"models.policy.path={target}",
                                             f"storage.uri={tempfile.mkdtemp(prefix='sami-ray-eval-')}"])
        run = Run(cfg, CheckpointStore.from_config(cfg.storage), progress=progress)
        principles, stage, base, iteration = PrincipleSet(seed_principles(cfg.constitutions)), None, None, 0
    else:
        if config or overrides:
            raise UserError("eval of a run uses the run's own config; --config and overrides apply to model folders")
        run = Run.resume(target, progress=progress)
        cfg = run.cfg
        if not run.store.is_committed("principles"):
            raise UserError(f"{target}: the run has no committed principles yet")
        principles = run.stage_principles()
        stage = run.store.latest_committed(".", "model")
        base = run.store.get_json("iter-0000/eval/report.json") if run.store.is_committed("iter-0000/eval") else None
        iteration = int(re.match(r"iter-(\d+)", stage).group(1)) if stage else 0
    _, held_out = run.queries()
    if not held_out:
        raise UserError("task.queries.held_out is 0: there are no held-out queries to evaluate on")
    progress(f"evaluating {stage or cfg.models.policy.path} on {len(held_out)} held-out queries")
    try:
        report = evaluate_iteration(run.pool(stage), held_out, principles.principles, cfg.evaluation, cfg.task.kind,
                                    run.render, iteration, base, cfg.run.seed, cfg.sampler, cfg.constitutions)
    finally:
        run.shutdown()
    report["model"] = stage or cfg.models.policy.path
    if not _is_model(target):
        run.store.put_json(f"evals/{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}/report.json", report)
    return report
