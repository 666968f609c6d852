"""`sami-ray compare RUN_OR_MODEL ...`: one table and one plot over runs and models on the same held-out queries.

A run contributes its final model's committed evaluation (or iteration `--iteration K`'s), read through the run
store and never recomputed; the base model's evaluation (iteration 0) is added once when every run starts from the
same base model. A model (a folder, builtin:NAME, a hub id, an s3:// model folder) is evaluated here as
`sami-ray eval` evaluates one. The comparison's config is `--config`, else the first run's config (with its
committed principles, so models answer the runs' own held-out questions under the same constitutions), else the
embedded demo; `--set KEY=VALUE` overrides it. Its `evaluation.judge` judges the answers pairwise.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, config_from_dict, demo_config_path, load_config, secret_value
from ..errors import UserError
from ..evaluate.compare import Row, comparison, markdown_table, plot_comparison, win_rates
from ..evaluate.judge import JudgeBackend
from ..storage.run import RunStore, parse_stage, stage_key

FILES = {"json": "comparison.json", "markdown": "comparison.md", "plot": "comparison.png"}
JUDGMENTS_FILE = "judgments.jsonl"  # the judge's raw replies, beside comparison.json


# ---------------------------------------------------------------- what a target is

def open_run(target: str) -> RunStore | None:
    """The run at `target`, or None when `target` names a model; anything else is an error naming it."""
    if target.startswith("builtin:"):
        return None
    try:
        return RunStore.open(target)
    except UserError:
        pass
    if target.startswith("s3://"):
        return None  # a model folder in S3; the model resolver says what is wrong with it, naming it
    local = Path(target).expanduser()
    if local.is_dir():
        if (local / "config.json").exists():
            return None
        raise UserError(f"{target}: neither a run folder (no run config) nor a model folder (no config.json)")
    from ..model_sources import parse_hub_id

    if local.exists() or target.startswith(("/", ".", "~")) or parse_hub_id(target) is None:
        raise UserError(f"{target}: no such run or model folder (give a run folder or URI, a model folder, "
                        "builtin:NAME or a hub id org/name)")
    return None  # a hub id


def run_row(target: str, store: RunStore, iteration: int | None) -> tuple[Row, RunConfig]:
    """The run's final model's committed evaluation (or iteration `iteration`'s), as stored."""
    cfg = store.load_config()
    notes = []
    if iteration is None:
        summary = store.summary()
        if summary is not None:
            final = summary.get("final_model")
            parsed = parse_stage(final) if final else (0, "model")  # none kept: the base model is the product
            if parsed is None:
                raise UserError(f"{target}: summary final_model {final!r} is not a model stage; pass --iteration")
            iteration = parsed[0]
        else:
            iteration = next((k for k in range(cfg.run.iterations, -1, -1)
                              if store.is_committed(stage_key(k, "eval"))), None)
            if iteration is None:
                raise UserError(f"{target}: the run has no committed evaluation yet")
            notes.append(f"{store.run_id}: the run has not finished; its latest evaluated iteration ({iteration}) "
                         "is shown")
    report = store.eval_report(iteration)
    if report is None:
        raise UserError(f"{target}: iteration {iteration} has no committed evaluation "
                        f"({stage_key(iteration, 'eval')})")
    return Row(store.run_id, store.uri, iteration, report, report.get("query_texts"), notes), cfg


def _same_base(cfgs: Sequence[RunConfig]) -> bool:
    return len({(c.models.policy.path, c.models.policy.gguf_file) for c in cfgs}) == 1


def held_out_texts(cfg: RunConfig) -> dict[str, str]:
    from ..inputs import run_queries

    _, held_out = run_queries(cfg.task.queries)
    return {q.id: q.text for q in held_out}


# ---------------------------------------------------------------- models

def with_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A copy of `cfg` with dotted overrides, validated again; store credentials kept (the dump redacts them)."""
    data = cfg.redacted_dict()
    data["storage"]["access_key_id"] = cfg.storage.access_key_id
    data["storage"]["secret_access_key"] = secret_value(cfg.storage.secret_access_key)
    return config_from_dict(apply_overrides(data, list(overrides)), "the comparison's config")


@contextmanager
def model_session(model: str, cfg: RunConfig, principles: Any, progress: Callable[[str], None], run_id: str,
                  start_run: Callable[[RunConfig], Any] | None = None) -> Iterator[tuple[Any, list, Any]]:
    """A scratch run of `model` under `cfg` with its judge off (the caller's judge is its own): (run, held-out
    queries, principles: `principles` or the config's own); shut down on exit."""
    from ..inputs import seed_principles
    from ..sami.constitutions import PrincipleSet

    scratch = tempfile.mkdtemp(prefix=f"sami-ray-{run_id}-")
    cfg = with_overrides(cfg, [f"models.policy.path={model}", f"storage.uri={scratch}",
                               "evaluation.judge.kind=none"])
    if start_run is None:
        from ..driver import Run

        def start_run(c: RunConfig) -> Any:
            return Run.start(c, run_id=run_id, progress=progress)
    run = start_run(cfg)
    try:
        _, held_out = run.loop.queries()
        if not held_out:
            raise UserError(f"{model}: task.queries.held_out is 0 in the config: no held-out queries")
        yield run, held_out, principles or PrincipleSet(seed_principles(cfg.constitutions))
    finally:
        run.shutdown()


def evaluate_model(model: str, cfg: RunConfig, principles: Any, progress: Callable[[str], None],
                   start_run: Callable[[RunConfig], Any] | None = None) -> Row:
    """Evaluate `model` as `sami-ray eval MODEL` does (a scratch run under `cfg`, the base-model evaluation of
    iteration 0), with `principles` (a PrincipleSet; None: the config's own)."""
    with model_session(model, cfg, principles, progress, "compare", start_run) as (run, held_out, principles):
        progress(f"evaluating {model} on {len(held_out)} held-out queries")
        report = run.loop.evaluate_model(0, None, held_out, principles, None)
    report["model"] = model
    return Row(model.rstrip("/"), model, None, report, {q.id: q.text for q in held_out})


# ---------------------------------------------------------------- the judge

def judge_backend(cfg: RunConfig) -> tuple[JudgeBackend | None, str | None, Callable[[], None]]:
    """(backend, description, close) for the config's evaluation.judge; (None, None, ...) when there is none."""
    from ..evaluate.judge import LocalJudge, judge_from_config

    j = cfg.evaluation.judge
    if j.kind == "none":
        return None, None, lambda: None
    if j.kind == "openai":
        return judge_from_config(j), f"{j.model} at {j.url}", lambda: None
    from ..roles import Roles

    roles = Roles(cfg)
    return LocalJudge(roles.judge()), f"local {cfg.models.judge.path}", roles.shutdown


# ---------------------------------------------------------------- the comparison

def _unique_labels(rows: list[Row]) -> None:
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label}#{seen[r.label]}"


def _baseline_label(baseline: str, rows: list[Row]) -> str:
    labels = [r.label for r in rows]
    if baseline in labels:
        return baseline
    for r in rows:
        if baseline in (r.source, r.source.rstrip("/")) and r.label != "base":
            return r.label
    raise UserError(f"--baseline {baseline}: not one of the rows ({', '.join(labels)})")


def comparison_config(config: str | None, overrides: Sequence[str], first_run: tuple[RunConfig, RunStore] | None
                      ) -> tuple[RunConfig, Any, str]:
    """(config, principles or None for the config's own, its name) for models and the judge: `config`, else the
    first run's config, else the embedded demo. With a run, the principles are its committed ones, whichever config
    (models then answer under the runs' own constitutions, so their answers can be judged against the runs')."""
    from ..sami.constitutions import PrincipleSet

    stored = first_run[1].principles() if first_run is not None else None
    principles = PrincipleSet.from_dict(stored) if stored else None
    if config is not None:
        return load_config(config, list(overrides)), principles, config
    if first_run is None:
        return load_config(demo_config_path(), list(overrides)), None, "the embedded demo"
    return with_overrides(first_run[0], overrides), principles, f"{first_run[1].uri}'s config"


def compare(targets: Sequence[str], *, baseline: str | None = None, iteration: int | None = None,
            config: str | None = None, overrides: Sequence[str] = (), out: str | Path | None = None,
            progress: Callable[[str], None] = print, judge: JudgeBackend | None = None,
            start_run: Callable[[RunConfig], Any] | None = None) -> tuple[dict, dict[str, Path]]:
    """Rows for `targets`, win rates when a judge is configured, and the folder's files; returns (the JSON
    document, {kind: path}). `judge` and `start_run` replace the configured judge and the scratch run (tests)."""
    if not targets:
        raise UserError("compare needs at least one run or model")
    kinds = [(t, open_run(t)) for t in targets]
    runs = [(t, store) for t, store in kinds if store is not None]
    run_rows: dict[str, tuple[Row, RunConfig, RunStore]] = {}
    for t, store in runs:
        row, cfg = run_row(t, store, iteration)
        run_rows[t] = (row, cfg, store)

    first = run_rows[runs[0][0]] if runs else None
    cmp_cfg, principles, cfg_name = comparison_config(config, overrides, first and (first[1], first[2]))
    notes: list[str] = []
    rows: list[Row] = []
    cfgs = [cfg for _, cfg, _ in run_rows.values()]
    if runs and _same_base(cfgs):
        first_store = run_rows[runs[0][0]][2]
        base = first_store.eval_report(0)
        if base is not None:
            rows.append(Row("base", first_store.uri, 0, base, base.get("query_texts")))
        else:
            notes.append(f"no base row: {first_store.uri} has no committed iteration-0 evaluation")
    elif len(runs) > 1:
        notes.append("no base row: the runs start from different models ("
                     + ", ".join(sorted({c.models.policy.path for c in cfgs})) + ")")
    for t, store in kinds:
        if store is not None:
            rows.append(run_rows[t][0])
        else:
            if config is None and runs and cmp_cfg.models.policy.gguf_file:
                cmp_cfg = with_overrides(cmp_cfg, ["models.policy.gguf_file=null"])  # the run's base model's
            rows.append(evaluate_model(t, cmp_cfg, principles, progress, start_run))
    _unique_labels(rows)
    base_label = _baseline_label(baseline, rows) if baseline else None

    close = lambda: None  # noqa: E731
    description = type(judge).__name__ if judge is not None else None
    if judge is None:
        judge, description, close = judge_backend(cmp_cfg)
    wins = None
    try:
        if judge is None:
            notes.append(f"no win rates: no judge is configured (evaluation.judge.kind is 'none' in {cfg_name}); "
                         "e.g. --set evaluation.judge.kind=openai --set evaluation.judge.url=URL "
                         "--set evaluation.judge.model=NAME")
        else:
            _fill_query_texts(rows, run_rows, notes)
            progress(f"judging {len(rows)} rows with {description}")
            from ..evaluate.judge_templates import template_for

            wins = win_rates(rows, judge, base_label, template_for(cmp_cfg.evaluation.judge, cmp_cfg.task.kind))
    finally:
        close()
    doc = comparison(rows, wins, base_label, description, notes)
    doc["config"] = cfg_name
    doc["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    return doc, write_comparison(doc, out)


def _fill_query_texts(rows: list[Row], run_rows: dict, notes: list[str]) -> None:
    """Rows from runs whose reports do not hold the query texts: read them from the run's own held-out queries."""
    cfg_of = {row.source: cfg for row, cfg, _ in run_rows.values()}
    for r in rows:
        if r.query_texts or r.source not in cfg_of:
            continue
        try:
            r.query_texts = held_out_texts(cfg_of[r.source])
        except (UserError, OSError) as e:
            notes.append(f"{r.label}: its held-out queries cannot be read ({e})")


def write_comparison(doc: dict, out: str | Path | None) -> dict[str, Path]:
    folder = Path(out or f"sami-compare-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    folder.mkdir(parents=True, exist_ok=True)
    from ..evaluate.report import split_judgments, write_judgments

    paths = {k: folder / name for k, name in FILES.items()}
    doc, raw = split_judgments(doc, JUDGMENTS_FILE)
    if raw:
        paths["judgments"] = write_judgments(raw, folder / JUDGMENTS_FILE)
    paths["json"].write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["markdown"].write_text(markdown_table(doc) + "\n", encoding="utf-8")
    plot_comparison(doc, paths["plot"])
    return paths
