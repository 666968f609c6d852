"""RunStore: the one place that knows a run's layout in the store.

```
RUN/config.yaml                      the resolved config, credentials redacted
RUN/principles/ + MANIFEST.json      written once, reused by every iteration
RUN/iter-0000/eval/                  the base model's evaluation (the baseline)
RUN/iter-000k/samples|model|eval/    one iteration's stages, each with its MANIFEST.json
RUN/iter-000k/train/                 Ray Train checkpoints (bulky; the last few are kept)
RUN/iter-000k/train_metrics.json     the training stage's metrics
RUN/summary.json                     written when a walk over the stages ends
RUN/evals/<timestamp>/report.json    later `sami-ray eval` reports
```
Nobody else spells `iter-` or `config.yaml`. Stages are fetched once into a local cache folder, verified against
their manifest; a stage found corrupt there is discarded (its producer runs again).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..errors import CorruptStageError, UserError
from .keys import natural_key
from .store import CheckpointStore

log = logging.getLogger(__name__)

CONFIG_KEY = "config.yaml"
SUMMARY_KEY = "summary.json"
PRINCIPLES = "principles"
STAGES = ("samples", "model", "eval")  # one iteration's committed stages, in the order they are made
TRAIN_CHECKPOINTS = "iter-*/train"
REDACTED = "***"
_ITER = re.compile(r"iter-(\d+)/(\w+)")


def stage_key(k: int, stage: str) -> str:
    """The key of iteration k's stage, e.g. stage_key(1, "model") == "iter-0001/model"."""
    return f"{_iter(k)}/{stage}"


def _iter(k: int) -> str:
    return f"iter-{k:04d}"


def parse_stage(key: str) -> tuple[int, str] | None:
    """(iteration, stage name) of an iteration stage key, None for any other key."""
    m = _ITER.fullmatch(key)
    return (int(m.group(1)), m.group(2)) if m else None


class StageDiscarded(UserError):
    """A committed stage was found corrupt where it was about to be used, and discarded. The stage loop walks the
    stages again and computes it; anywhere else the message tells the user how."""

    def __init__(self, stage: str, run_uri: str):
        super().__init__(f"{run_uri}/{stage} was corrupt and has been discarded; `sami-ray resume {run_uri}` "
                         "computes it again")
        self.stage = stage


class RunStore:
    """One run under one store prefix, with a local cache of verified stages."""

    def __init__(self, store: CheckpointStore, cache_dir: str | Path | None = None):
        self.store = store
        self.cache = Path(cache_dir or tempfile.mkdtemp(prefix="sami-ray-"))
        self.cache.mkdir(parents=True, exist_ok=True)
        self.on_discard = lambda stage, err: None  # the stage loop counts discarded stages

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, cfg: Any, run_id: str | None = None, **kw) -> RunStore:
        """A new run under `cfg.storage.uri`, named `run_id` or NAME-TIMESTAMP; its config is saved first."""
        root = CheckpointStore.from_config(cfg.storage)
        run_id = run_id or f"{cfg.run.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        run = cls(root.child(run_id), **kw)
        if run.store.exists(CONFIG_KEY):
            raise UserError(f"a run already exists at {run.uri}; continue it with `sami-ray resume {run.uri}` "
                            "or choose another run.name")
        run.store.put_bytes(CONFIG_KEY, cfg.to_yaml().encode())
        return run

    @classmethod
    def open(cls, run_uri: str, storage_overrides: dict | None = None, **kw) -> RunStore:
        """An existing run; the error names the URI when there is none."""
        run = cls(CheckpointStore.open(run_uri, **(storage_overrides or {})), **kw)
        if not run.store.exists(CONFIG_KEY):
            raise UserError(f"no run at {run_uri}: {CONFIG_KEY} is missing")
        return run

    def load_config(self, storage_overrides: dict | None = None):
        """The stored config. Redacted secrets are not restored: the standard credential chain (or the
        overrides) applies."""
        from ..config import config_from_dict

        data = yaml.safe_load(self.store.get_bytes(CONFIG_KEY).decode()) or {}
        storage = data.setdefault("storage", {})
        for key in ("access_key_id", "secret_access_key"):
            if storage.get(key) == REDACTED:
                storage[key] = None
        storage.update(storage_overrides or {})
        return config_from_dict(data, self.url(CONFIG_KEY))

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def is_local(self) -> bool:
        return self.store.is_local

    @property
    def run_id(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def url(self, key: str) -> str:
        return self.store.url(key)

    # ------------------------------------------------------------ stages

    def is_committed(self, stage: str) -> bool:
        return self.store.is_committed(stage)

    def commit(self, stage: str, folder: Path, meta: dict | None = None) -> dict:
        """Commit a local folder as `stage`; returns its size and upload time (for the dashboard)."""
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        t0 = time.perf_counter()
        self.store.commit_stage(stage, Path(folder), meta=meta or {})
        return {"bytes": size, "seconds": time.perf_counter() - t0}

    def commit_json(self, stage: str, files: dict[str, Any], meta: dict | None = None) -> dict:
        """Commit a stage made of JSON documents ({file name: object})."""
        with tempfile.TemporaryDirectory(dir=self.cache, prefix="stage-") as tmp:
            for name, obj in files.items():
                (Path(tmp) / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
            return self.commit(stage, Path(tmp), meta)

    def fetch(self, stage: str) -> Path | None:
        """The committed stage as a local folder, verified against its manifest (downloaded once per cache).

        A stage whose stored objects no longer match their manifest is discarded (None): its producer runs
        again, so a corrupt object is never used and nothing downstream of it is lost.
        """
        dest = self.cache / stage.replace("/", "-")
        if (dest / ".verified").exists():
            return dest
        try:
            self.store.fetch_stage(stage, dest)
        except CorruptStageError as e:
            log.warning("%s; discarding %s and computing it again", e, stage)
            self.on_discard(stage, e)
            self.discard(stage)
            return None
        (dest / ".verified").touch()
        return dest

    def require(self, stage: str) -> Path:
        """Like `fetch`, for a stage that must be there: a corrupt one raises StageDiscarded."""
        folder = self.fetch(stage)
        if folder is None:
            raise StageDiscarded(stage, self.uri)
        return folder

    def discard(self, stage: str) -> None:
        """Forget a stage: manifest first, then its files; the cached copy goes too."""
        self.store.delete_prefix(stage)
        cached = self.cache / stage.replace("/", "-")
        (cached / ".verified").unlink(missing_ok=True)

    def manifest_meta(self, stage: str) -> dict:
        m = self.store.read_manifest(stage)
        return dict(getattr(m, "meta", None) or {}) if m else {}

    # ------------------------------------------------------------ documents inside stages

    def principles(self) -> dict | None:
        if not self.is_committed(PRINCIPLES):
            return None
        return self.store.get_json(f"{PRINCIPLES}/principles.json")

    def commit_principles(self, data: dict) -> None:
        self.commit_json(PRINCIPLES, {"principles.json": data})

    def eval_report(self, k: int) -> dict | None:
        """Iteration k's committed evaluation report (k = 0: the base model's), or None."""
        stage = stage_key(k, "eval")
        return self.store.get_json(f"{stage}/report.json") if self.is_committed(stage) else None

    def eval_history(self, upto: int) -> list[dict]:
        """The committed evaluation reports of iterations 0..upto-1, in order."""
        return [r for r in (self.eval_report(i) for i in range(upto)) if r is not None]

    def put_train_metrics(self, k: int, data: dict) -> None:
        self.store.put_json(f"{_iter(k)}/train_metrics.json", data)

    def put_summary(self, data: dict) -> None:
        self.store.put_json(SUMMARY_KEY, data)

    def summary(self) -> dict | None:
        return self.store.get_json(SUMMARY_KEY) if self.store.exists(SUMMARY_KEY) else None

    def put_eval(self, report: dict) -> str:
        """Store a later `sami-ray eval` report under evals/<timestamp>/ (the judge's raw replies beside it, as
        `evaluate.report.write_report` does); returns its key."""
        from ..evaluate.report import JUDGMENTS_FILE, REPORT_FILE, split_judgments

        folder = f"evals/{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        report, raw = split_judgments(report)
        if raw:
            self.store.put_bytes(f"{folder}/{JUDGMENTS_FILE}", "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in raw).encode("utf-8"))
        self.store.put_json(f"{folder}/{REPORT_FILE}", report)
        return f"{folder}/{REPORT_FILE}"

    # ------------------------------------------------------------ models and training checkpoints

    def latest_model(self) -> tuple[int, str] | None:
        """(iteration, stage key) of the committed model with the highest iteration, or None."""
        best = None
        for stage in self.store.committed_stages():
            parsed = parse_stage(stage)
            if parsed and parsed[1] == "model" and (best is None or parsed[0] > best[0]):
                best = (parsed[0], stage)
        return best

    def train_target(self, k: int) -> tuple[Any, str]:
        """(pyarrow filesystem, base path) under which Ray Train keeps iteration k's checkpoints."""
        fs, base = self.store.pyarrow_filesystem()
        return fs, f"{base}/{_iter(k)}"

    def prune_train_checkpoints(self, keep_last: int) -> list[str]:
        return self.store.prune(".", keep_last=keep_last, pattern=TRAIN_CHECKPOINTS)

    # ------------------------------------------------------------ status

    def status(self, iterations: int) -> dict:
        """Committed stages per iteration and each iteration's headline figures, read from the store only."""
        committed = set(self.store.committed_stages())
        rows = []
        for k in range(0, iterations + 1):
            stages = {s: stage_key(k, s) in committed for s in STAGES}
            entry: dict = {"iteration": k, "stages": stages}
            if stages["eval"]:
                entry["figures"] = headline_figures(self.eval_report(k) or {})
            if stages["model"]:
                entry["train"] = self.manifest_meta(stage_key(k, "model")).get("summary", {})
            rows.append(entry)
        return {"run": self.uri, "principles_committed": PRINCIPLES in committed, "iterations": rows,
                "finished": self.store.exists(SUMMARY_KEY), "summary": self.summary()}


def list_runs(root: CheckpointStore) -> list[str]:
    """Folders directly under a store root that hold a run (its config or any committed stage)."""
    runs = [name for name in root.list_dirs() if not name.startswith(".")
            and (root.exists(f"{name}/{CONFIG_KEY}") or root.committed_stages(name))]
    return sorted(runs, key=natural_key)


def headline_figures(report: dict) -> dict:
    out = {}
    mi = report.get("mi_bound") or {}
    if isinstance(mi, dict) and "mi_bound" in mi:
        out["mi_bound"] = mi["mi_bound"]
    elif isinstance(mi, int | float):
        out["mi_bound"] = mi
    deg = report.get("degeneration") or {}
    if "flagged" in deg:
        out["degenerate"] = deg["flagged"]
    return out
