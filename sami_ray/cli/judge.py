"""`sami-ray judge A B` and `sami-ray answers TARGET`: win rates of A over B with the configured judge, no run needed.

A target is a responses file (`.jsonl` in our layout or a SAMI reference response `.json`, read as it is), a run
(its final model's committed evaluation answers, never recomputed) or a model (a folder, builtin:NAME, a hub id, an
s3:// folder), which answers the config's held-out queries under the config's evaluation constitutions, as an
evaluation samples them (same plan, prompts, sampling settings and seeds). A model's answers are written as a
responses file beside the output, so it can serve as `evaluation.judge.baseline` or be judged again without
sampling. The config is `--job`, else the first run target's config with its committed principles, else the
embedded demo. Answers of A and B are paired by (query, constitution) text; the unmatched are counted and reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import UserError
from ..evaluate.judge import JudgeBackend, PairItem, judge_pairs
from ..evaluate.responses import Answer, is_responses_file, match_answers, read_responses, write_responses


def _target_kind(target: str) -> tuple[str, Any]:
    """('file', path) | ('run', RunStore) | ('model', ref)."""
    if is_responses_file(target) and Path(target).expanduser().is_file():
        return "file", target
    if is_responses_file(target):
        raise UserError(f"{target}: no such responses file")
    from .compare import open_run

    store = open_run(target)
    return ("run", store) if store is not None else ("model", target)


def run_answers(target: str, store: Any) -> list[Answer]:
    """The answers in a run's final evaluation report (the one `sami-ray compare` shows)."""
    from .compare import run_row

    row, _ = run_row(target, store, None)
    texts = row.query_texts or {}
    cons = row.report.get("constitutions") or {}
    out = []
    for r in row.report.get("responses") or []:
        q, c = texts.get(r.get("query_id")), cons.get(r.get("constitution_id"))
        if q is not None and c is not None:
            out.append(Answer(q, c, r.get("response") or ""))
    if not out:
        raise UserError(f"{target}: its evaluation report holds no answers with their query texts")
    return out


def model_answers(model: str, cfg: RunConfig, principles: Any, progress: Callable[[str], None],
                  start_run: Callable[[RunConfig], Any] | None = None) -> list[Answer]:
    """`model`'s answers to the config's held-out queries, planned and sampled as `evaluate_iteration` does."""
    from ..evaluate.policy import generate_one, sampling_from
    from ..evaluate.runner import eval_constitutions
    from .compare import model_session

    with model_session(model, cfg, principles, progress, "answers", start_run) as (run, held_out, principles):
        plan = eval_constitutions(held_out, principles.principles, cfg.evaluation.n or cfg.constitutions.n,
                                  cfg.run.seed, cfg.constitutions)
        prompts = [run.roles.render(c.text, q.text) for q, cons in plan for c in cons]
        keys = [("eval", q.id, c.id) for q, cons in plan for c in cons]
        flat = [(q, c) for q, cons in plan for c in cons]
        progress(f"{model}: answering {len(held_out)} held-out queries under {len(prompts)} constitutions")
        policy = run.loop.policy(None)
        out = []
        for seed in cfg.evaluation.seeds:
            texts = generate_one(policy, prompts, sampling_from(cfg.sampler), seed=seed, keys=keys)
            out += [Answer(q.text, c.text, t, q.category) for (q, c), t in zip(flat, texts, strict=True)]
        return out


def judge_config(job: str | None, first_run: Any | None) -> tuple[RunConfig, Any, str]:
    """(config, committed principles or None, its name): --job, else the first run's, else the demo."""
    from .compare import comparison_config

    return comparison_config(job, [], first_run)


def collect_answers(targets: list[str], job: str | None, progress: Callable[[str], None],
                    start_run: Callable[[RunConfig], Any] | None = None
                    ) -> tuple[list[list[Answer]], RunConfig, str]:
    """Each target's answers, the config they were planned under (and judged with), and its name."""
    kinds = [(t, *_target_kind(t)) for t in targets]
    first = next(((ref.load_config(), ref) for _, kind, ref in kinds if kind == "run"), None)
    cfg, principles, cfg_name = judge_config(job, first)
    out = []
    for t, kind, ref in kinds:
        if kind == "file":
            out.append(read_responses(ref))
        elif kind == "run":
            out.append(run_answers(t, ref))
        else:
            out.append(model_answers(t, cfg, principles, progress, start_run))
    return out, cfg, cfg_name


def judge_answers(a: list[Answer], b: list[Answer], backend: JudgeBackend, cfg: RunConfig) -> dict:
    """A's win rate over B (A is the candidate), both orders, with the config's judge template."""
    from ..evaluate.judge_templates import template_for

    matched = match_answers(a, b)
    items = [PairItem(x.query, x.constitution, x.response, y.response, x.category or y.category)
             for x, y in matched.pairs]
    result = judge_pairs(backend, items, template=template_for(cfg.evaluation.judge, cfg.task.kind))
    result["matching"] = matched.summary()
    return result


def judge_targets(a: str, b: str, *, job: str | None = None, out: str | Path | None = None,
                  progress: Callable[[str], None] = print, judge: JudgeBackend | None = None,
                  start_run: Callable[[RunConfig], Any] | None = None) -> tuple[dict, dict[str, Path]]:
    """Judge A against B; returns (the JSON document, {kind: path}). `judge` and `start_run` replace the configured
    judge and the scratch run (tests)."""
    from ..evaluate.report import split_judgments, write_judgments

    (ans_a, ans_b), cfg, cfg_name = collect_answers([a, b], job, progress, start_run)
    out_path = Path(out or f"sami-judge-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for label, target, answers in (("a", a, ans_a), ("b", b, ans_b)):
        if _target_kind(target)[0] == "model":  # sampled here: keep them for reuse as a responses file
            paths[f"answers_{label}"] = write_responses(answers, out_path.with_suffix(f".answers-{label}.jsonl"))
    description, close = type(judge).__name__ if judge is not None else None, (lambda: None)
    if judge is None:
        from .compare import judge_backend

        judge, description, close = judge_backend(cfg)
        if judge is None:
            raise UserError(f"judge: no judge is configured (evaluation.judge.kind is 'none' in {cfg_name}); set "
                            "evaluation.judge in the --job config")
    try:
        progress(f"judging {a} against {b} with {description}")
        result = judge_answers(ans_a, ans_b, judge, cfg)
    finally:
        close()
    doc = {"a": a, "b": b, "judge": description, "config": cfg_name,
           "created": datetime.now(UTC).isoformat(timespec="seconds"), "result": result}
    judgments = out_path.with_suffix(".judgments.jsonl")
    stored, raw = split_judgments({"judge": result}, judgments.name)
    doc["result"] = stored["judge"]
    paths["judgments"] = write_judgments(raw, judgments)
    out_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["json"] = out_path
    return doc, paths


def write_answers(target: str, *, job: str | None = None, out: str | Path | None = None,
                  progress: Callable[[str], None] = print,
                  start_run: Callable[[RunConfig], Any] | None = None) -> Path:
    """`sami-ray answers`: a target's answers as a responses file (usable as evaluation.judge.baseline)."""
    (answers,), _, _ = collect_answers([target], job, progress, start_run)
    return write_responses(answers, Path(out or "answers.jsonl"))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_result(doc: dict) -> str:
    """The win-rate table: both orders and overall, ties, unparsed, failed, lengths, length-controlled rates."""
    r = doc["result"]
    lengths = r.get("lengths") or {}
    lc = r.get("length_controlled_win_rate") or {}
    tol = r.get("length_controlled") or {}
    m = r.get("matching") or {}
    head = ["", "verdicts", "wins", "losses", "ties", "unparsed", "failed", "win rate"]
    rows = [["A first", *_counts(r["by_order"]["candidate_first"])],
            ["B first", *_counts(r["by_order"]["baseline_first"])],
            ["both orders", *_counts(r)]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [f"A: {doc['a']}", f"B: {doc['b']}", f"judge: {doc['judge']} (template {r.get('template')}; "
             f"config {doc['config']})", ""]
    for row in (head, *rows):
        lines.append("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))
    lines += ["",
              f"length-controlled win rate of A: {_pct(lc.get('win_rate'))} (logistic fit on the length difference,"
              f" read at equal lengths); among pairs within {tol.get('tolerance', 0):.0%} in length "
              f"({tol.get('pairs', 0)} pairs): {_pct(tol.get('win_rate'))}",
              f"mean words: A {_num(lengths.get('candidate_mean_words'))}, B {_num(lengths.get('baseline_mean_words'))}",
              f"pairs judged: {m.get('matched', r.get('pairs'))}; unmatched answers: A {m.get('candidate_unmatched', 0)}"
              f", B {m.get('baseline_unmatched', 0)}",
              "A tie counts half a win; an unparsed verdict or a failed request is never a win."]
    return "\n".join(lines)


def _counts(t: dict) -> list[str]:
    return [str(t.get(k, 0)) for k in ("verdicts", "wins", "losses", "ties", "unparseable", "errors")] + \
        [_pct(t.get("win_rate"))]


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
