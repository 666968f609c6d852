"""One evaluation of one model: the driver calls `evaluate_iteration` after every iteration (and once for the base
model, iteration 0, whose report is the baseline of the degeneration guard and the judge)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from ..config import ConstitutionsConfig, EvaluationConfig
from ..errors import ConfigError
from ..sami.constitutions import Constitution, Principle, constitutions_per_query
from ..sami.data import Query
from ..sami.datasets.mtbench import MultiTurnQuery
from ..sami.prompts import render_prompt
from .degeneration import degeneration_report, topic_texts
from .gsm8k import gsm8k_eval, neutral_prompt
from .judge import PairItem, judge_from_config, judge_pairs
from .judge_templates import template_for
from .mi_bound import mi_bound
from .mtbench import MTItem, mtbench_eval
from .policy import Policy, generate_one, sampling_from
from .responses import Answer, is_responses_file, match_answers, read_responses
from .verifiable import principle_rates

log = logging.getLogger(__name__)

Renderer = Callable[[str, str], str]  # (constitution text, query text) -> prompt


class PromptRenderer:
    """A renderer from a task kind and (for chat models) a tokenizer with a chat template; MT-Bench's second turns
    and GSM8K's neutral prompt are rendered with the same tokenizer."""

    def __init__(self, task_kind: str, tokenizer: object | None = None):
        self.task_kind, self.tokenizer = task_kind, tokenizer

    def __call__(self, constitution: str, query: str) -> str:
        return render_prompt(self.task_kind, constitution, query, self.tokenizer)


def prompt_renderer(task_kind: str, tokenizer: object | None = None) -> Renderer:
    return PromptRenderer(task_kind, tokenizer)


def eval_constitutions(queries: Sequence[Query], principles: Sequence[Principle], n: int, seed: int,
                       cons_cfg: ConstitutionsConfig) -> list[tuple[Query, list[Constitution]]]:
    """The same N constitutions per held-out query at every iteration (they depend only on the seed and query id)."""
    try:
        return constitutions_per_query(queries, principles, cons_cfg, n, seed=seed, tag="eval")
    except ValueError as e:
        raise ConfigError(f"evaluation.n = {n}: {e}") from None


def evaluate_iteration(policy: Policy, held_out_queries: Sequence[Query], principles: Sequence[Principle],
                       cfg: EvaluationConfig, task_kind: str, render: Renderer | None, iteration: int,
                       base_report: dict | None, seed: int, sampler_cfg: object | None = None,
                       constitutions_cfg: ConstitutionsConfig | None = None, *,
                       judge_policy: Policy | None = None, baseline_report: dict | None = None,
                       chat_tokenizer: object | None = None, task_description: str | None = None) -> dict:
    """Evaluate `policy` on the held-out queries; a JSON-serialisable report (see `report.py` for its keys).

    `base_report` is iteration 0's report (None while evaluating the base model itself). The judge compares with
    `baseline_report` when given (e.g. the previous iteration's), else with `base_report`. `chat_tokenizer` (None:
    a `PromptRenderer`'s own, else the plain frame) and `task_description` render MT-Bench's later turns and GSM8K's
    neutral prompt.
    """
    cons_cfg = constitutions_cfg or ConstitutionsConfig()
    n = cfg.n or cons_cfg.n
    render = render or prompt_renderer(task_kind)
    sampling = sampling_from(sampler_cfg)
    timings: dict[str, float] = {}
    notes: list[str] = []
    plan = eval_constitutions(held_out_queries, principles, n, seed, cons_cfg)
    if len(plan) < len(held_out_queries):
        notes.append(f"{len(held_out_queries) - len(plan)} held-out queries have no relevant principle; skipped")
    prompts = [[render(c.text, q.text) for c in cons] for q, cons in plan]
    flat_prompts = [p for ps in prompts for p in ps]

    records: list[dict] = []
    per_seed: list[dict] = []
    for s in cfg.seeds:
        t0 = time.perf_counter()
        flat = generate_one(policy, flat_prompts, sampling, seed=s,
                            keys=[("eval", q.id, c.id) for q, cons in plan for c in cons])
        timings["sample"] = timings.get("sample", 0.0) + time.perf_counter() - t0
        responses = [flat[k * n:(k + 1) * n] for k in range(len(plan))]
        for (q, cons), rs in zip(plan, responses, strict=True):
            records += [{"query_id": q.id, "seed": s, "constitution_id": c.id, "response": r}
                        for c, r in zip(cons, rs, strict=True)]
        if cfg.mi_bound and plan:
            t0 = time.perf_counter()
            per_seed.append({"seed": s, **mi_bound(policy, prompts, responses)})
            timings["score"] = timings.get("score", 0.0) + time.perf_counter() - t0

    by_id = {q.id: (q, {c.id: c for c in cons}) for q, cons in plan}
    # (constitution, query, seed, response) for every sampled answer
    answers = [(by_id[r["query_id"]][1][r["constitution_id"]], by_id[r["query_id"]][0], r["seed"], r["response"])
               for r in records]
    report: dict = {"iteration": iteration, "n": n, "seeds": list(cfg.seeds), "queries": len(plan),
                    "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                 "max_tokens": sampling.max_tokens}}
    if cfg.mi_bound:
        report["mi_bound"] = _mean_bound(per_seed, n)
    if cfg.verifiable:
        report["verifiable"] = principle_rates([(c.signs, q.text, r) for c, q, _, r in answers], principles)
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for c, q, _, r in answers:
        groups[c.id].append((q.text, r))
    if cfg.degeneration_guard:
        base_deg = (base_report or {}).get("degeneration")
        topics = topic_texts(answers, (base_report or {}).get("responses") or records)
        topical = {cid: [(topics[(q, cid)], r) for q, r in pairs] for cid, pairs in groups.items()}
        report["degeneration"] = degeneration_report(topical, base_deg, cfg.on_topic_drop_points, cfg.on_degeneration)
        if report["degeneration"]["flagged"]:
            log.warning("iteration %d: degeneration guard flagged: %s", iteration,
                        "; ".join(report["degeneration"]["reasons"]))
    report["samples"] = {cid: [{"query": q, "response": r[:600]} for q, r in pairs[:cfg.sample_answers]]
                         for cid, pairs in groups.items()}
    report["constitutions"] = {c.id: c.text for _, cons in plan for c in cons}
    report["query_texts"] = {q.id: q.text for q, _ in plan}  # compare pairs answers of runs by query text
    report["responses"] = records

    if cfg.judge.kind != "none":
        t0 = time.perf_counter()
        report["judge"] = _judge(cfg, answers, baseline_report or base_report, judge_policy, notes, task_kind)
        timings["judge"] = time.perf_counter() - t0
    tokenizer = chat_tokenizer if chat_tokenizer is not None else getattr(render, "tokenizer", None)
    if cfg.gsm8k_k > 0:
        t0 = time.perf_counter()
        report["gsm8k"] = _gsm8k(policy, held_out_queries, plan, cfg, task_kind, render, tokenizer, task_description,
                                 sampling, seed, notes)
        timings["gsm8k"] = time.perf_counter() - t0
    mt_items = [MTItem(q, _answering_constitution(cons)) for q, cons in plan if isinstance(q, MultiTurnQuery)]
    if cfg.mtbench is not False and (mt_items or cfg.mtbench):
        t0 = time.perf_counter()
        report["mtbench"] = _mtbench(policy, mt_items, cfg, task_kind, render, tokenizer, sampling, seed,
                                     judge_policy, baseline_report or base_report, notes)
        timings["mtbench"] = time.perf_counter() - t0
    report["notes"] = notes
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return report


def _gsm8k(policy: Policy, held_out: Sequence[Query], plan: list, cfg: EvaluationConfig, task_kind: str,
           render: Renderer, tokenizer: object | None, description: str | None, sampling, seed: int,
           notes: list[str]) -> dict | None:
    """GSM8K's protocol on the held-out problems with a reference (MT-Bench's references are not '####' answers)."""
    if cfg.gsm8k_prompt == "neutral":
        problems = [q for q in held_out if q.reference and not isinstance(q, MultiTurnQuery)]
        prompts = [neutral_prompt(task_kind, description, q.text, tokenizer) for q in problems]
        how = "neutral: the task description alone (no principles, no answer format)"
    else:
        pairs = [(q, cons) for q, cons in plan if q.reference and not isinstance(q, MultiTurnQuery)]
        problems, prompts = [q for q, _ in pairs], [render(cons[0].text, q.text) for q, cons in pairs]
        how = "constitution: each problem's first evaluation constitution (all-positive by default)"
    if not problems:
        notes.append("gsm8k_k > 0 but no held-out query has a reference answer")
        return None
    result = gsm8k_eval(policy, prompts, [q.reference for q in problems], cfg.gsm8k_k, sampling, seed,
                        ids=[q.id for q in problems])
    result["prompt"] = how
    return result


def _answering_constitution(cons: list[Constitution]) -> Constitution:
    """The constitution an MT-Bench question is answered and graded under: its all-positive one where drawn."""
    return next((c for c in cons if c.all_positive), cons[0])


def _mtbench(policy: Policy, items: list[MTItem], cfg: EvaluationConfig, task_kind: str, render: Renderer,
             tokenizer: object | None, sampling, seed: int, judge_policy: Policy | None, baseline: dict | None,
             notes: list[str]) -> dict | None:
    if not items:
        notes.append("evaluation.mtbench is on but no held-out query is an MT-Bench question")
        return None
    backend = judge_from_config(cfg.judge, judge_policy)
    if backend is None:
        notes.append("MT-Bench needs a judge (evaluation.judge.kind openai, or local with a judge model); its "
                     "questions were not graded")
        return None
    first = items[0]
    if render(first.constitution.text, first.query.text) != render_prompt(task_kind, first.constitution.text,
                                                                         first.query.text, tokenizer):
        notes.append("MT-Bench: the later turns are rendered without the chat template the first turn used "
                     "(no chat tokenizer passed to evaluate_iteration)")
    result = mtbench_eval(policy, items, task_kind, tokenizer, sampling, seed, backend, baseline,
                          template=template_for(cfg.judge, task_kind))
    result["constitution"] = "each question's all-positive evaluation constitution (else its first)"
    return result


def _mean_bound(per_seed: list[dict], n: int) -> dict:
    def mean(key: str) -> float | None:
        vals = [d[key] for d in per_seed if d.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {"mi_bound": mean("mi_bound"), "loss": mean("loss"), "row_accuracy": mean("row_accuracy"),
            "col_accuracy": mean("col_accuracy"), "n": n, "per_seed": per_seed}


def _judge(cfg: EvaluationConfig, answers: list, baseline: dict | None, judge_policy: Policy | None,
           notes: list[str], task_kind: str = "instruction") -> dict | None:
    """The judge's verdicts against `baseline` (a report), or against the responses file that
    evaluation.judge.baseline names (matched by query and constitution text, the unmatched counted)."""
    template = template_for(cfg.judge, task_kind)
    backend = judge_from_config(cfg.judge, judge_policy)
    if backend is None:
        notes.append("judge kind 'local' but no judge policy was passed; no win rates")
        return None
    if is_responses_file(cfg.judge.baseline):
        mine = [Answer(q.text, c.text, resp, q.category) for c, q, _, resp in answers]
        matched = match_answers(mine, read_responses(cfg.judge.baseline))
        if not matched.pairs:
            notes.append(f"no answer in {cfg.judge.baseline} matches a held-out (query, constitution); not judged")
        items = [PairItem(a.query, a.constitution, a.response, b.response, a.category) for a, b in matched.pairs]
        result = judge_pairs(backend, items, template=template)
        result["baseline"] = cfg.judge.baseline
        result["matching"] = matched.summary()
        return result
    if not baseline or not baseline.get("responses"):
        notes.append("no baseline responses to judge against (the base model's own evaluation)")
        return None
    base = {(r["query_id"], r["constitution_id"], r["seed"]): r["response"] for r in baseline["responses"]}
    items = []
    for c, q, s, resp in answers:
        other = base.get((q.id, c.id, s))
        if other is not None:
            items.append(PairItem(q.text, c.text, resp, other, q.category))
    result = judge_pairs(backend, items, template=template)
    result["baseline"] = f"iteration {baseline.get('iteration')}"
    result["matching"] = {"matched": len(items), "candidate_unmatched": len(answers) - len(items),
                          "baseline_unmatched": len(base) - len(items)}
    return result
