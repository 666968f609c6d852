"""A SAMI run as a resumable state machine over iterations.

Stages, each read from and committed to the store (a stage exists only once its MANIFEST.json is written):
  principles                      written once, reused by every iteration
  iter-0000/eval                  the base model, the baseline of every comparison
  iter-k/samples -> iter-k/model -> iter-k/eval   for k = 1..iterations
`resume` walks the same list and skips every committed stage, so a killed run continues where it stopped and
(with the same seed) ends with the same results as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from . import metrics
from .config import RunConfig, config_from_dict
from .errors import CorruptStageError, UserError
from .inputs import load_run_queries, seed_principles, split_queries
from .models import require_safetensors, resolve_model_path
from .runtime import ensure_ray, runtime_env
from .sami.constitutions import PrincipleSet, relevant_principles, sample_constitutions
from .sami.data import Query, ResponseFilter, SamiExample, save_examples
from .sami.prompts import has_chat_template, render_prompt
from .storage import CheckpointStore

log = logging.getLogger("sami_ray.driver")

CONFIG_KEY = "config.yaml"
PRINCIPLES_STAGE = "principles"


def iter_prefix(k: int) -> str:
    return f"iter-{k:04d}"


def stage_key(k: int, stage: str) -> str:
    return f"{iter_prefix(k)}/{stage}"


@dataclass
class IterationOutcome:
    iteration: int
    model_stage: str | None  # the model this iteration produced (None for the baseline)
    eval_report: dict | None
    rolled_back: bool = False


@dataclass
class RunSummary:
    run_uri: str
    principles: PrincipleSet
    reports: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stopped_early: str | None = None
    final_model: str | None = None


class StageDiscarded(UserError):
    """A committed stage was found corrupt where it was about to be used, and discarded. `Run.execute` walks the
    stages again and computes it; anywhere else the message tells the user how."""

    def __init__(self, stage: str, run_uri: str):
        super().__init__(f"{run_uri}/{stage} was corrupt and has been discarded; `sami-ray resume {run_uri}` "
                         "computes it again")
        self.stage = stage


class Run:
    """One run under one store prefix. Construct with `Run.start` (new) or `Run.resume` (existing)."""

    def __init__(self, cfg: RunConfig, store: CheckpointStore, workdir: Path | None = None,
                 progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.store = store
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sami-ray-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.say = progress or (lambda msg: log.info(msg))
        self.timings: dict[str, float] = {}
        self._pool = None
        self._pool_model: str | None = None
        self._judge = None
        self._tokenizer = None

    # ------------------------------------------------------------ construction

    @classmethod
    def start(cls, cfg: RunConfig, run_id: str | None = None, **kw) -> Run:
        root = CheckpointStore.from_config(cfg.storage)
        run_id = run_id or f"{cfg.run.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        store = root.child(run_id)
        if store.exists(CONFIG_KEY):
            raise UserError(f"a run already exists at {store.uri}; continue it with `sami-ray resume {store.uri}` "
                            "or choose another run.name")
        store.put_bytes(CONFIG_KEY, cfg.to_yaml().encode())
        return cls(cfg, store, **kw)

    @classmethod
    def resume(cls, run_uri: str, storage_overrides: dict | None = None, **kw) -> Run:
        """Reopen a run from its stored config; credentials come from the environment or the overrides."""
        probe = CheckpointStore.open(run_uri, **(storage_overrides or {}))
        if not probe.exists(CONFIG_KEY):
            raise UserError(f"no run at {run_uri}: {CONFIG_KEY} is missing")
        data = yaml.safe_load(probe.get_bytes(CONFIG_KEY).decode())
        # Redacted secrets are not restored from the store: the standard credential chain applies on resume.
        for key in ("access_key_id", "secret_access_key"):
            if data.get("storage", {}).get(key) == "***":
                data["storage"][key] = None
        data.setdefault("storage", {}).update(storage_overrides or {})
        cfg = config_from_dict(data, f"{run_uri}/{CONFIG_KEY}")
        return cls(cfg, probe, **kw)

    # ------------------------------------------------------------ helpers

    def _timed(self, name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            self.timings[name] = round(self.timings.get(name, 0.0) + dt, 2)
            self.say(f"[{name}] {dt:.1f} s")

    def _fetch(self, stage: str) -> Path | None:
        """A committed stage in the work folder, verified against its manifest (downloaded once).

        A stage whose stored objects no longer match their manifest is discarded (None): its producer runs again,
        so a corrupt object is never used and nothing downstream of it is lost.
        """
        dest = self.workdir / stage.replace("/", "-")
        if (dest / ".verified").exists():
            return dest
        try:
            self.store.fetch_stage(stage, dest)
        except CorruptStageError as e:
            self.say(f"warning: {e}; discarding {stage} and computing it again")
            metrics.record("sami_corrupt_stages", 1, self.run_id, stage=stage)
            self.store.delete_prefix(stage)
            return None
        (dest / ".verified").touch()
        return dest

    def _local_model(self, stage: str | None) -> Path:
        """The folder of the base model (stage None) or of a committed model stage."""
        if stage is None:
            spec = self.cfg.models.policy
            return resolve_model_path(spec.path, spec.gguf_file)
        dest = self._fetch(stage)
        if dest is None:
            self._pool_model = None  # the stage's folder will hold other weights once it is recomputed
            raise StageDiscarded(stage, self.store.uri)
        return require_safetensors(dest)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._local_model(None))
        return self._tokenizer

    def _chat_tokenizer(self):
        mode = self.cfg.models.policy.chat_template
        if mode == "off":
            return None
        if mode == "on" or has_chat_template(self.tokenizer):
            return self.tokenizer
        return None

    def render(self, constitution_text: str, query_text: str) -> str:
        return render_prompt(self.cfg.task.kind, constitution_text, query_text, self._chat_tokenizer())

    def pool(self, model_stage: str | None):
        """The sampler pool, on the weights of `model_stage` (reloaded in place when it changes)."""
        from .actors.sampler import SamplerPool
        from .actors.weight_sync import sync

        path = str(self._local_model(model_stage))
        if self._pool is None:
            ensure_ray(self.cfg.resources)
            self._pool = self._timed("sampler_start", SamplerPool, path, self.cfg.sampler,
                                     self.cfg.resources.sampler, runtime_env=runtime_env())
        elif self._pool_model != path:
            self._timed("weight_sync", sync, self._pool, path)
        self._pool_model = path
        return self._pool

    def judge_policy(self):
        """A sampler pool on models.judge when the evaluation judge is local (None otherwise)."""
        if self.cfg.evaluation.judge.kind != "local":
            return None
        if self._judge is None:
            from .actors.sampler import SamplerPool

            spec = self.cfg.models.judge
            if spec is None:
                raise UserError("evaluation.judge.kind is 'local' but models.judge is not set")
            ensure_ray(self.cfg.resources)
            self._judge = self._timed("judge_start", SamplerPool, str(resolve_model_path(spec.path, spec.gguf_file)),
                                      self.cfg.sampler.model_copy(update={"replicas": 1}),
                                      self.cfg.resources.sampler, runtime_env=runtime_env())
        return self._judge

    def shutdown(self) -> None:
        for pool in (self._pool, self._judge):
            if pool is not None:
                pool.shutdown()
        self._pool = self._judge = None

    # ------------------------------------------------------------ queries

    def queries(self) -> tuple[list[Query], list[Query]]:
        qcfg = self.cfg.task.queries
        return split_queries(load_run_queries(qcfg), qcfg.held_out, qcfg.shuffle_seed)

    def iteration_queries(self, k: int, train: list[Query]) -> list[Query]:
        """All training queries, or a window of `run.train_queries` that moves on each iteration."""
        n = self.cfg.run.train_queries
        if not n or n >= len(train):
            return train
        start = ((k - 1) * n) % len(train)
        return (train + train)[start:start + n]

    # ------------------------------------------------------------ stages

    def stage_principles(self) -> PrincipleSet:
        if self.store.is_committed(PRINCIPLES_STAGE):
            return PrincipleSet.from_dict(self.store.get_json(f"{PRINCIPLES_STAGE}/principles.json"))
        metrics.set_stage(self.run_id, "principles", 0)
        c = self.cfg.constitutions
        seeds = seed_principles(c)
        if self.cfg.models.writer is not None and c.write_with_writer:
            pset = self._timed("principles", self._write_principles, seeds)
        else:
            pset = PrincipleSet(seeds, source="config")
        self._commit_json(PRINCIPLES_STAGE, {"principles.json": pset.to_dict()})
        return pset

    def _write_principles(self, seeds):
        from .actors.writer import PoolAsEngine, PrincipleWriterCore, start_writer

        ensure_ray(self.cfg.resources)
        spec = self.cfg.models.writer
        if resolve_model_path(spec.path, spec.gguf_file) == self._local_model(None):
            # The policy writes its own principles: its sampler pool is the writer, no second engine starts.
            core = PrincipleWriterCore(PoolAsEngine(self.pool(None)), self._chat_tokenizer())
            return core.write(self.cfg.task.description, seeds, len(seeds), fallback_to_seeds=True,
                              seed=self.cfg.run.seed)
        writer = start_writer(str(resolve_model_path(spec.path, spec.gguf_file)), self.cfg.sampler.engine,
                              self.cfg.resources.writer, runtime_env=runtime_env(),
                              backend=self.cfg.sampler.backend)
        try:
            import ray

            return ray.get(writer.write.remote(self.cfg.task.description, seeds, len(seeds),
                                               fallback_to_seeds=True, seed=self.cfg.run.seed))
        finally:
            if self.cfg.resources.release_writer:
                import ray

                ray.kill(writer)

    @property
    def run_id(self) -> str:
        return self.store.uri.rstrip("/").rsplit("/", 1)[-1]

    def _commit(self, stage: str, folder: Path, meta: dict | None = None) -> None:
        """Commit a stage and report its size and upload time to the dashboard."""
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        t0 = time.perf_counter()
        self.store.commit_stage(stage, Path(folder), meta=meta or {})
        metrics.record("sami_checkpoint_upload_bytes", size, self.run_id, stage=stage)
        metrics.record("sami_checkpoint_upload_seconds", time.perf_counter() - t0, self.run_id, stage=stage)

    def _commit_json(self, stage: str, files: dict[str, object], meta: dict | None = None) -> None:
        folder = Path(tempfile.mkdtemp(dir=self.workdir, prefix="stage-"))
        try:
            for name, obj in files.items():
                (folder / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
            self._commit(stage, folder, meta)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def build_requests(self, k: int, queries: list[Query], principles: PrincipleSet
                       ) -> list[tuple[Query, list, list[str]]]:
        """For each query: its N constitutions (seeded by run seed, iteration and query id) and prompts."""
        c = self.cfg.constitutions
        out = []
        for q in queries:
            ps = relevant_principles(principles.principles, q.category) if c.filter_by_category else \
                principles.principles
            if len(ps) < 1:
                continue
            cons = sample_constitutions(ps, c.n, seed=self.cfg.run.seed, key=(k, q.id), mode=c.mode,
                                        first_all_positive=c.first_all_positive, shuffle=c.shuffle,
                                        phrasing=c.phrasing)
            out.append((q, cons, [self.render(con.text, q.text) for con in cons]))
        return out

    def sample_examples(self, k: int, model_stage: str | None, queries: list[Query],
                        principles: PrincipleSet, seed_offset: int = 0) -> tuple[list[SamiExample], dict]:
        from .engines.base import SamplingSpec

        s = self.cfg.sampler
        reqs = self.build_requests(k, queries, principles)
        flat = [(f"{q.id}::{j}", prompts[j]) for q, _, prompts in reqs for j in range(len(prompts))]
        spec = SamplingSpec(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                            stop=list(s.stop), seed=self.cfg.run.seed * 1000 + k * 10 + seed_offset)
        results = self.pool(model_stage).sample(flat, spec)
        filt = ResponseFilter(**self.cfg.sampler.filters.model_dump(exclude={"forbidden_substrings"}),
                              forbidden_substrings=tuple(self.cfg.sampler.filters.forbidden_substrings))
        kept, dropped = [], {}
        for q, cons, prompts in reqs:
            gens = [results[f"{q.id}::{j}"][0] for j in range(len(prompts))]
            why = filt.example_reason([g.text for g in gens], [g.truncated for g in gens])
            if why:
                dropped[why] = dropped.get(why, 0) + 1
                continue
            kept.append(SamiExample(q, cons, [g.text for g in gens], prompts))
        return kept, dropped

    def stage_samples(self, k: int, model_stage: str | None, train: list[Query], principles: PrincipleSet) -> Path:
        key = stage_key(k, "samples")
        if self.store.is_committed(key) and (fetched := self._fetch(key)) is not None:
            return fetched / "examples.jsonl"
        queries = self.iteration_queries(k, train)
        metrics.set_stage(self.run_id, "sample", k)
        t0 = time.perf_counter()
        kept, dropped = self._timed(f"iter{k}_sample", self.sample_examples, k, model_stage, queries, principles)
        metrics.record("sami_samples_per_second", len(queries) * self.cfg.constitutions.n /
                       max(time.perf_counter() - t0, 1e-6), self.run_id, stage="sample")
        if not kept:
            raise UserError(f"iteration {k}: every sampled example was dropped by the response filters "
                            f"({dropped}); loosen sampler.filters or raise sampler.max_tokens")
        self.say(f"iteration {k}: {len(kept)} of {len(queries)} queries kept" +
                 (f" (dropped: {dropped})" if dropped else ""))
        folder = Path(tempfile.mkdtemp(dir=self.workdir, prefix="samples-"))
        save_examples(folder / "examples.jsonl", kept)
        (folder / "stats.json").write_text(json.dumps({"kept": len(kept), "queries": len(queries),
                                                       "dropped": dropped}))
        self._commit(key, folder, meta={"kept": len(kept), "dropped": dropped, "sampled_with": model_stage or "base"})
        shutil.rmtree(folder, ignore_errors=True)
        fetched = self._fetch(key)
        if fetched is None:
            raise UserError(f"{self.store.url(key)} was corrupt right after its upload; check the store")
        return fetched / "examples.jsonl"

    def stage_model(self, k: int, init_stage: str | None, examples_path: Path) -> str:
        from .train import train

        key = stage_key(k, "model")
        if self.store.is_committed(key):
            return key  # verified where it is used (`_local_model`): resume downloads no model it does not need
        ensure_ray(self.cfg.resources)
        metrics.set_stage(self.run_id, "train", k)
        out = Path(tempfile.mkdtemp(dir=self.workdir, prefix="export-")) / "model"
        fs, base = self.store.pyarrow_filesystem()
        result = self._timed(
            f"iter{k}_train", train,
            examples_path=str(examples_path), init_model_path=str(self._local_model(init_stage)),
            ref_model_path=str(self._local_model(None)) if self.cfg.trainer.beta > 0 else None,
            trainer_cfg=self.cfg.trainer, output_dir=str(out), storage_path=f"{base}/{iter_prefix(k)}",
            storage_filesystem=fs, run_name="train", resources=self.cfg.resources.trainer,
            seed=self.cfg.run.seed + k)
        self.store.put_json(f"{iter_prefix(k)}/train_metrics.json",
                            {"metrics": result.metrics, "summary": result.summary})
        metrics.set_stage(self.run_id, "export", k)
        self._commit(key, Path(result.model_dir), meta={"init": init_stage or "base", "summary": result.summary})
        for name, metric in (("loss", "sami_train_loss"), ("mi_bound", "sami_mi_bound"),
                             ("tokens_per_s", "sami_tokens_per_second")):
            if isinstance(result.summary.get(name), int | float):
                metrics.record(metric, result.summary[name], self.run_id, source="train")
        shutil.rmtree(out.parent, ignore_errors=True)
        self.store.prune(".", keep_last=self.cfg.storage.keep_last_checkpoints)
        return key

    def stage_eval(self, k: int, model_stage: str | None, held_out: list[Query], principles: PrincipleSet,
                   base_report: dict | None) -> dict | None:
        if not self.cfg.evaluation.enabled or not held_out:
            return None
        key = stage_key(k, "eval")
        if self.store.is_committed(key):
            return self.store.get_json(f"{key}/report.json")
        from .evaluate.report import plot_history, write_report
        from .evaluate.runner import evaluate_iteration

        metrics.set_stage(self.run_id, "eval", k)
        policy = self.pool(model_stage)
        previous = stage_key(k - 1, "eval")
        baseline = self.store.get_json(f"{previous}/report.json") if (
            k > 1 and self.cfg.evaluation.judge.baseline == "previous" and self.store.is_committed(previous)) else None
        report = self._timed(f"iter{k}_eval", evaluate_iteration, policy, held_out, principles.principles,
                             self.cfg.evaluation, self.cfg.task.kind, self.render, k, base_report,
                             self.cfg.run.seed, self.cfg.sampler, self.cfg.constitutions,
                             judge_policy=self.judge_policy(), baseline_report=baseline)
        report["model"] = model_stage or "base"
        folder = Path(tempfile.mkdtemp(dir=self.workdir, prefix="eval-"))
        write_report(report, folder)
        if self.cfg.evaluation.plots:
            history = [self.store.get_json(f"{stage_key(i, 'eval')}/report.json") for i in range(k)
                       if self.store.is_committed(stage_key(i, "eval"))]
            plot_history(history + [report], folder)
        self._commit(key, folder, meta={"degeneration": report.get("degeneration", {}).get("action")})
        mi = report.get("mi_bound")
        mi = mi.get("mi_bound") if isinstance(mi, dict) else mi
        if isinstance(mi, int | float):
            metrics.record("sami_mi_bound", mi, self.run_id, source="eval")
        shutil.rmtree(folder, ignore_errors=True)
        return report

    # ------------------------------------------------------------ the loop

    def execute(self, max_walks: int = 3) -> RunSummary:
        """Walk the stages; a committed stage found corrupt where it is used is discarded and the walk starts
        again, computing it anew (every stage before it is still committed and skipped)."""
        t0 = time.perf_counter()
        try:
            for _ in range(max_walks):
                try:
                    return self._walk(t0)
                except StageDiscarded as e:
                    self.say(f"{e.stage} was discarded; walking the stages again to compute it")
            raise UserError(f"{self.store.uri}: stages kept turning out corrupt after {max_walks} walks; "
                            "check the store")
        finally:
            self.shutdown()

    def _walk(self, t0: float) -> RunSummary:
        principles = self.stage_principles()
        summary = RunSummary(self.store.uri, principles)
        train, held_out = self.queries()
        base = self.stage_eval(0, None, held_out, principles, None)
        if base:
            summary.reports.append(base)
        current: str | None = None  # the model the next iteration samples from and trains
        for k in range(1, self.cfg.run.iterations + 1):
            self.say(f"=== iteration {k}/{self.cfg.run.iterations}")
            examples = self.stage_samples(k, current, train, principles)
            init = current if self.cfg.trainer.init == "previous" else None
            produced = self.stage_model(k, init, examples)
            report = self.stage_eval(k, produced, held_out, principles, base)
            action = (report or {}).get("degeneration", {}).get("action")
            if report:
                summary.reports.append(report)
            if action == "rollback":
                self.say(f"iteration {k}: degeneration guard tripped; rolling back to {current or 'base'}")
                continue
            current = produced
            if action == "stop":
                summary.stopped_early = f"degeneration guard tripped at iteration {k}"
                break
        if current is not None:
            self._local_model(current)  # the run's product must be intact, even when every stage was done
        summary.final_model = current
        metrics.set_stage(self.run_id, "done", self.cfg.run.iterations)
        summary.timings = dict(self.timings, total=round(time.perf_counter() - t0, 1))
        self.store.put_json("summary.json", {"final_model": current, "timings": summary.timings,
                                             "stopped_early": summary.stopped_early})
        return summary
