"""The stage loop: a SAMI run as a walk over stages that are each read from, or committed to, the run store.

```
principles                      written once, reused by every iteration
iter-0000/eval                  the base model, the baseline of every comparison
iter-k/samples -> iter-k/model -> iter-k/eval   for k = 1..iterations
```
Iteration 1's samples are imported instead of sampled when `sampler.samples_file` names the SAMI reference's
generated data; every later iteration samples (from the model trained so far, or from models.sampler when set).
A walk skips every committed stage, so a killed run continues where it stopped and (with the same seed) ends with
the same results as an uninterrupted one. A committed stage found corrupt where it is used is discarded and the
walk starts again. The loop is handed the run store and the roles; it owns no resource itself, so it is
unit-tested with in-memory fakes.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics
from .config import RunConfig
from .errors import CorruptStageError, UserError
from .evaluate.policy import sampling_from
from .inputs import check_constitutions, run_queries, seed_principles
from .models import require_safetensors, resolve_model_path
from .progress import timer
from .roles import writes_principles
from .sami.constitutions import PrincipleSet, constitutions_per_query
from .sami.data import Query, ResponseFilter, SamiExample, save_examples
from .sami.seeds import derive_seed
from .storage.run import RunStore, StageDiscarded, stage_key

log = logging.getLogger("sami_ray.stages")


@dataclass
class RunSummary:
    run_uri: str
    principles: PrincipleSet
    reports: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stopped_early: str | None = None
    final_model: str | None = None


def stage_timer(timings: dict[str, float], say: Callable[[str], None], run_id: str) -> Callable[..., Any]:
    """Times stages into `timings`, says each time, and sets the dashboard's stage seconds."""
    return timer(timings, say, lambda name, dt: metrics.record("sami_stage_seconds", dt, run_id, stage=name))


class StageLoop:
    """Walks the stages of one run. `roles` has the shape of `roles.Roles`; `say` prints progress lines."""

    def __init__(self, cfg: RunConfig, store: RunStore, roles: Any, say: Callable[[str], None] | None = None,
                 timings: dict[str, float] | None = None, timed: Callable[..., Any] | None = None):
        self.cfg, self.store, self.roles = cfg, store, roles
        self.say = say or log.info
        self.timings = timings if timings is not None else {}
        self.timed = timed or stage_timer(self.timings, self.say, store.run_id)
        store.on_discard = self._count_discard

    def _count_discard(self, stage: str, err: Exception) -> None:
        self.say(f"warning: {err}; discarding {stage} and computing it again")
        metrics.record("sami_corrupt_stages", 1, self.store.run_id, stage=stage)

    # ------------------------------------------------------------ models and queries

    def model_ref(self, stage: str | None) -> str | None:
        """Where every role reads a model from: None for the base model (each role resolves its own spec on its
        node), else the committed stage, verified here first. A corrupt stage is discarded and the walk starts
        again. A stage in S3 is handed on as its URI (each node fetches and verifies it into its own cache; this
        node's copy is shared with the replicas here); a local store is one disk, so its verified copy's path."""
        if stage is None:
            return None
        if self.store.is_local:
            folder = self.store.fetch(stage)  # a corrupt stage is discarded by the fetch itself
            if folder is None:
                self._discarded(stage)
            return str(require_safetensors(folder))
        try:
            resolve_model_path(self.store.url(stage), storage=self.cfg.storage)
        except CorruptStageError as e:
            self._count_discard(stage, e)
            self.store.discard(stage)
            self._discarded(stage)
        return self.store.url(stage)

    def _discarded(self, stage: str) -> None:
        self.roles.forget_policy_weights()  # the stage will hold other weights once recomputed
        raise StageDiscarded(stage, self.store.uri) from None

    def policy(self, stage: str | None):
        return self.roles.policy(self.model_ref(stage))

    def queries(self) -> tuple[list[Query], list[Query]]:
        """(training, held-out): held-out from task.queries.eval_source when set, else split off the training file."""
        return run_queries(self.cfg.task.queries)

    def iteration_queries(self, k: int, train: list[Query]) -> list[Query]:
        """All training queries, or a window of `run.train_queries` that moves on each iteration."""
        n = self.cfg.run.train_queries
        if not n or n >= len(train):
            return train
        start = ((k - 1) * n) % len(train)
        return (train + train)[start:start + n]

    def _commit(self, stage: str, folder: Path, meta: dict | None = None) -> None:
        moved = self.store.commit(stage, folder, meta)
        metrics.record("sami_checkpoint_upload_bytes", moved["bytes"], self.store.run_id, stage=stage)
        metrics.record("sami_checkpoint_upload_seconds", moved["seconds"], self.store.run_id, stage=stage)

    # ------------------------------------------------------------ stages

    def principles(self) -> PrincipleSet:
        stored = self.store.principles()
        if stored is not None:
            return PrincipleSet.from_dict(stored)
        metrics.set_stage(self.store.run_id, "principles", 0)
        c = self.cfg.constitutions
        writes = writes_principles(self.cfg)
        # No principles given and a writer: it writes constitutions.num_principles of its own.
        seeds = [] if writes and not (c.principles or c.file or c.builtin) else seed_principles(c)
        if writes:
            pset = self.timed("principles", self.roles.write_principles, self.cfg.task.description, seeds,
                              self.cfg.run.seed)
        else:
            pset = PrincipleSet(seeds, source="config")
        self.store.commit_principles(pset.to_dict())
        return pset

    def sample_examples(self, k: int, model_stage: str | None, queries: list[Query],
                        principles: PrincipleSet) -> tuple[list[SamiExample], dict]:
        """Every query answered under each of its N constitutions; examples the filters refuse are dropped.

        With models.sampler that model answers (in every iteration), its prompts framed as it expects (its own
        chat template); the examples keep the policy's prompts, which the trainer tokenises anew from their text,
        so the two models' tokenizers need not agree."""
        c = self.cfg.constitutions
        plan = constitutions_per_query(queries, principles.principles, c, c.n, seed=self.cfg.run.seed, tag=k)
        prompts = [[self.roles.render(con.text, q.text) for con in cons] for q, cons in plan]
        seeds = [derive_seed(self.cfg.run.seed, "sample", self.cfg.sampler.seed, k, q.id, j)
                 for q, cons in plan for j in range(len(cons))]
        if self.cfg.models.sampler is not None:
            asked = [self.roles.render(con.text, q.text, role="sampler") for q, cons in plan for con in cons]
            generator = self.roles.sampler()
        else:
            asked, generator = [p for ps in prompts for p in ps], self.policy(model_stage)
        self._train_early(k, model_stage)  # now that the pool is up: the trainer takes only room left beside it
        flat = generator.generate(asked, sampling_from(self.cfg.sampler), seeds)
        filt = ResponseFilter.from_config(self.cfg.sampler.filters)
        kept, dropped, at = [], {}, 0
        for (q, cons), ps in zip(plan, prompts, strict=True):
            gens = [g[0] for g in flat[at:at + len(ps)]]
            at += len(ps)
            why = filt.example_reason([g.text for g in gens], [g.truncated for g in gens])
            if why:
                dropped[why] = dropped.get(why, 0) + 1
                continue
            kept.append(SamiExample(q, cons, [g.text for g in gens], ps))
        return kept, dropped

    def _train_early(self, k: int, model_stage: str | None) -> None:
        """Launch iteration k's training worker group while its samples are drawn (trainer.start_early; the roles
        check that the cluster has room), so that its start overlaps the sampling instead of following it. The
        arguments are those `model` will train with."""
        if self.store.is_committed(stage_key(k, "model")):
            return
        init = model_stage if self.cfg.trainer.init == "previous" else None
        self.roles.start_training(self.model_ref(init), self.store.train_target(k),
                                  derive_seed(self.cfg.run.seed, "train", k))

    def samples(self, k: int, model_stage: str | None, train: list[Query], principles: PrincipleSet) -> Path:
        key = stage_key(k, "samples")
        if self.store.is_committed(key) and (fetched := self.store.fetch(key)) is not None:
            return fetched / "examples.jsonl"
        if k == 1 and self.cfg.sampler.samples_file:
            return self._import_samples(key, self.cfg.sampler.samples_file)
        queries = self.iteration_queries(k, train)
        metrics.set_stage(self.store.run_id, "sample", k)
        t0 = time.perf_counter()
        kept, dropped = self.timed(f"iter{k}_sample", self.sample_examples, k, model_stage, queries, principles)
        metrics.record("sami_samples_per_second", len(queries) * self.cfg.constitutions.n /
                       max(time.perf_counter() - t0, 1e-6), self.store.run_id, stage="sample")
        if not kept:
            raise UserError(f"iteration {k}: every sampled example was dropped by the response filters "
                            f"({dropped}); loosen sampler.filters or raise sampler.max_tokens")
        self.say(f"iteration {k}: {len(kept)} of {len(queries)} queries kept" +
                 (f" (dropped: {dropped})" if dropped else ""))
        with tempfile.TemporaryDirectory(dir=self.store.cache, prefix="samples-") as tmp:
            save_examples(Path(tmp) / "examples.jsonl", kept)
            (Path(tmp) / "stats.json").write_text(json.dumps({"kept": len(kept), "queries": len(queries),
                                                              "dropped": dropped}))
            sampled_with = self.cfg.models.sampler.path if self.cfg.models.sampler else model_stage or "base"
            self._commit(key, Path(tmp), meta={"kept": len(kept), "dropped": dropped, "sampled_with": sampled_with})
        return self._fetched_examples(key)

    def _fetched_examples(self, key: str) -> Path:
        fetched = self.store.fetch(key)
        if fetched is None:
            raise UserError(f"{self.store.url(key)} was corrupt right after its upload; check the store")
        return fetched / "examples.jsonl"

    def _import_samples(self, key: str, source: str) -> Path:
        """Iteration 1's samples from the SAMI reference's generated data (sampler.samples_file, a path or an s3://
        URI): every example, prompts and responses as the file has them; committed as a sampled stage is."""
        from .sami.datasets.reference_samples import read_reference_samples

        metrics.set_stage(self.store.run_id, "sample", 1)
        with tempfile.TemporaryDirectory(dir=self.store.cache, prefix="import-") as download:
            local = self._local_copy(source, Path(download) / "samples.json")
            examples = self.timed("iter1_import", read_reference_samples, local, source)
        self.say(f"iteration 1: {len(examples)} examples (N = {examples[0].n}) imported from {source}; "
                 "sampling skipped (sampler.samples_file)")
        with tempfile.TemporaryDirectory(dir=self.store.cache, prefix="samples-") as tmp:
            save_examples(Path(tmp) / "examples.jsonl", examples)
            (Path(tmp) / "stats.json").write_text(json.dumps({"kept": len(examples), "imported_from": source}))
            self._commit(key, Path(tmp), meta={"kept": len(examples), "dropped": {}, "sampled_with": source})
        return self._fetched_examples(key)

    def _local_copy(self, source: str, dest: Path) -> Path:
        """`source` as a file on this node: a local path as it is, an s3:// object downloaded to `dest`."""
        if not source.startswith("s3://"):
            return Path(source)
        from .model_sources import store_settings
        from .storage import CheckpointStore, Location

        loc = Location.parse(source)
        parent, _, leaf = loc.path.rpartition("/")
        if not leaf:
            raise UserError(f"sampler.samples_file {source}: name a file in the bucket (s3://bucket/key.json)")
        try:
            data = CheckpointStore.open(f"s3://{loc.bucket}/{parent}", **store_settings(self.cfg.storage)) \
                .get_bytes(leaf)
        except FileNotFoundError:
            raise UserError(f"sampler.samples_file {source}: no such object") from None
        dest.write_bytes(data)
        return dest

    def model(self, k: int, init_stage: str | None, examples_path: Path) -> str:
        key = stage_key(k, "model")
        if self.store.is_committed(key):
            return key  # verified where it is used (`model_ref`): resume downloads no model it does not need
        metrics.set_stage(self.store.run_id, "train", k)
        with tempfile.TemporaryDirectory(dir=self.store.cache, prefix="export-") as tmp:
            result = self.timed(f"iter{k}_train", self.roles.train, examples_path, self.model_ref(init_stage),
                                Path(tmp) / "model", self.store.train_target(k),
                                derive_seed(self.cfg.run.seed, "train", k))
            self.store.put_train_metrics(k, {"metrics": result.metrics, "summary": result.summary})
            metrics.set_stage(self.store.run_id, "export", k)
            self._commit(key, Path(result.model_dir), meta={"init": init_stage or "base", "summary": result.summary})
        for name, metric in (("loss", "sami_train_loss"), ("mi_bound", "sami_mi_bound"),
                             ("tokens_per_s", "sami_tokens_per_second")):
            if isinstance(result.summary.get(name), int | float):
                metrics.record(metric, result.summary[name], self.store.run_id, source="train")
        self.store.prune_train_checkpoints(self.cfg.storage.keep_last_checkpoints)
        return key

    def evaluation(self, k: int, model_stage: str | None, held_out: list[Query], principles: PrincipleSet,
                   base_report: dict | None) -> dict | None:
        if not self.cfg.evaluation.enabled or not held_out:
            return None
        key = stage_key(k, "eval")
        if self.store.is_committed(key):
            return self.store.eval_report(k)
        from .evaluate.report import plot_history, write_report

        metrics.set_stage(self.store.run_id, "eval", k)
        report = self.timed(f"iter{k}_eval", self.evaluate_model, k, model_stage, held_out, principles, base_report)
        with tempfile.TemporaryDirectory(dir=self.store.cache, prefix="eval-") as tmp:
            write_report(report, Path(tmp))
            if self.cfg.evaluation.plots:
                plot_history(self.store.eval_history(k) + [report], Path(tmp))
            self._commit(key, Path(tmp), meta={"degeneration": report.get("degeneration", {}).get("action")})
        mi = report.get("mi_bound")
        mi = mi.get("mi_bound") if isinstance(mi, dict) else mi
        if isinstance(mi, int | float):
            metrics.record("sami_mi_bound", mi, self.store.run_id, source="eval")
        return report

    def evaluate_model(self, k: int, model_stage: str | None, held_out: list[Query], principles: PrincipleSet,
                       base_report: dict | None) -> dict:
        """Evaluate a model (None: the base) as iteration k, with the judge and the baselines the config names."""
        from .evaluate.runner import evaluate_iteration

        previous = self.store.eval_report(k - 1) if k > 1 and self.cfg.evaluation.judge.baseline == "previous" \
            else None
        report = evaluate_iteration(self.policy(model_stage), held_out, principles.principles, self.cfg.evaluation,
                                    self.cfg.task.kind, self.roles.render, k, base_report, self.cfg.run.seed,
                                    self.cfg.sampler, self.cfg.constitutions, judge_policy=self.roles.judge(),
                                    baseline_report=previous, chat_tokenizer=self.roles.chat_tokenizer(),
                                    task_description=self.cfg.task.description)
        report["model"] = model_stage or "base"
        return report

    # ------------------------------------------------------------ the walk

    def execute(self, max_walks: int = 3) -> RunSummary:
        """Walk the stages; a committed stage found corrupt where it is used is discarded and the walk starts
        again, computing it anew (every stage before it is still committed and skipped)."""
        t0 = time.perf_counter()
        try:
            for _ in range(max_walks):
                try:
                    return self.walk(t0)
                except StageDiscarded as e:
                    self.say(f"{e.stage} was discarded; walking the stages again to compute it")
            raise UserError(f"{self.store.uri}: stages kept turning out corrupt after {max_walks} walks; "
                            "check the store")
        finally:
            self.roles.shutdown()

    def walk(self, t0: float | None = None) -> RunSummary:
        t0 = time.perf_counter() if t0 is None else t0
        train, held_out = self.queries()  # a bad dataset fails before the writer runs
        principles = self.principles()
        c = self.cfg.constitutions  # every category must have enough principles for N, before anything is sampled
        check_constitutions(principles.principles, train, c)
        check_constitutions(principles.principles, held_out, c, n=self.cfg.evaluation.n or c.n, field="evaluation.n")
        summary = RunSummary(self.store.uri, principles)
        base = self.evaluation(0, None, held_out, principles, None)
        if base:
            summary.reports.append(base)
        current: str | None = None  # the model the next iteration samples from and trains
        for k in range(1, self.cfg.run.iterations + 1):
            self.say(f"=== iteration {k}/{self.cfg.run.iterations}")
            examples = self.samples(k, current, train, principles)
            init = current if self.cfg.trainer.init == "previous" else None
            produced = self.model(k, init, examples)
            report = self.evaluation(k, produced, held_out, principles, base)
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
            self.model_ref(current)  # the run's product must be intact, even when every stage was done
        summary.final_model = current
        metrics.set_stage(self.store.run_id, "done", self.cfg.run.iterations)
        summary.timings = dict(self.timings, total=round(time.perf_counter() - t0, 1))
        self.store.put_summary({"final_model": current, "timings": summary.timings,
                                "stopped_early": summary.stopped_early})
        return summary

