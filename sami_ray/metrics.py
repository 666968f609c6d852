"""Run metrics for the Ray dashboard (Prometheus through `ray.util.metrics`), plus progress lines for job logs.

Metrics are created lazily and only when Ray is initialised, so the core and unit tests never need Ray.
All carry a `run` tag so several runs on one cluster stay apart.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("sami_ray.metrics")

STAGES = {"principles": 0, "sample": 1, "train": 2, "export": 3, "eval": 5, "done": 6}  # 4 was a sync stage

# name -> (kind, description)
_DEFINITIONS = {
    "sami_stage": ("gauge", "current stage of the run (0 principles, 1 sample, 2 train, 3 export, 5 eval, 6 done)"),
    "sami_iteration": ("gauge", "current SAMI iteration"),
    "sami_samples_per_second": ("gauge", "responses sampled per second in the last sampling stage"),
    "sami_tokens_per_second": ("gauge", "tokens per second of the last sampling or training report"),
    "sami_train_loss": ("gauge", "training loss of the last optimizer step"),
    "sami_train_step": ("gauge", "optimizer steps done in the current training stage"),
    "sami_train_accuracy": ("gauge", "share of responses whose own constitution scores highest (last step)"),
    "sami_train_lr": ("gauge", "learning rate of the last optimizer step"),
    "sami_train_grad_norm": ("gauge", "gradient 2-norm of the last optimizer step, before clipping"),
    "sami_mi_bound": ("gauge", "MI lower bound (nats): log N - loss; training or held-out evaluation"),
    "sami_checkpoint_upload_bytes": ("counter", "bytes committed to the store"),
    "sami_checkpoint_upload_seconds": ("gauge", "seconds the last stage commit took"),
    "sami_stage_seconds": ("gauge", "seconds the last stage of each kind took"),
    "sami_corrupt_stages": ("counter", "committed stages found corrupt on fetch, discarded and recomputed"),
}

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
# Ray exports a gauge only for a short while after it was last set; a training stage lasts minutes. The last value
# of each gauge series is set again every few seconds so the dashboard keeps showing it.
_gauges: dict[tuple[str, tuple], float] = {}
_refresher: threading.Thread | None = None
REFRESH_S = 5.0


def _refresh_forever() -> None:
    import time

    import ray

    while ray.is_initialized():
        time.sleep(REFRESH_S)
        with _lock:
            items = list(_gauges.items())
        for (name, tags), value in items:
            try:
                _metrics[name].set(value, tags=dict(tags))
            except Exception as e:  # metrics must never break a run
                log.debug("refreshing %s failed: %s", name, e)


def _metric(name: str):
    import ray
    from ray.util import metrics as rm

    if not ray.is_initialized():
        return None
    with _lock:
        if name not in _metrics:
            kind, desc = _DEFINITIONS[name]
            tags = ("run", "stage", "source")
            _metrics[name] = (rm.Counter if kind == "counter" else rm.Gauge)(name, description=desc, tag_keys=tags)
        return _metrics[name]


def record(name: str, value: float, run: str, **tags: str) -> None:
    """Set a gauge or add to a counter; silently a no-op outside Ray (unit tests, plain scripts)."""
    try:
        m = _metric(name)
    except Exception as e:  # metrics must never break a run
        log.debug("metric %s unavailable: %s", name, e)
        return
    if m is None:
        return
    all_tags = {"run": run, "stage": tags.get("stage", ""), "source": tags.get("source", "")}
    if _DEFINITIONS[name][0] == "counter":
        m.inc(float(value), tags=all_tags)
        return
    m.set(float(value), tags=all_tags)
    global _refresher
    with _lock:
        _gauges[(name, tuple(sorted(all_tags.items())))] = float(value)
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(target=_refresh_forever, name="sami-metrics", daemon=True)
            _refresher.start()


def set_stage(run: str, stage: str, iteration: int) -> None:
    record("sami_stage", STAGES.get(stage, -1), run)  # one series per run: its value names the stage
    record("sami_iteration", iteration, run)
