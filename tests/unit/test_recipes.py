"""Every recipe in jobs/ runs its data path and its evaluation path on CPU, so a recipe cannot rot silently.

Each run config is loaded as it is, with only its data and model paths replaced: the dataset fixtures in the
public layouts (tests/fixtures/datasets) and a tiny local model for every role. Then what a run does with it:
queries loaded (training and held-out), principles read (files relative to the repository root, as a job runs),
constitutions drawn per query, prompts rendered as the policy (and models.sampler, where set) sees them; and the
base model's and iteration 1's evaluation with the recipe's own evaluation config (MI bound, verifiable checks,
judge with its template, GSM8K pass@k, MT-Bench), the judge a tiny local model wherever the recipe names one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sami_ray.config import EngineOptions, load_config
from sami_ray.engines import make_engine
from sami_ray.evaluate.runner import evaluate_iteration
from sami_ray.inputs import check_constitutions, run_queries, seed_principles
from sami_ray.roles import Roles
from sami_ray.sami.constitutions import constitutions_per_query
from tests.support.tiny_models import tiny_model

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "fixtures" / "datasets"
RECIPES = sorted(p for p in (REPO / "jobs").glob("*.yaml") if p.name not in ("runtime_env.yaml", "compare_demo.yaml"))

# Each dataset format's fixture (and its own test file where the recipe evaluates on one).
FIXTURES = {
    "tldr": [f"task.queries.source={DATA / 'tldr' / 'summarize_from_feedback_comparisons.jsonl'}",
             "task.queries.held_out=2"],
    "hh_rlhf": [f"task.queries.source={DATA / 'hh_rlhf' / 'train.jsonl.gz'}", "task.queries.held_out=1"],
    "gsm8k": [f"task.queries.source={DATA / 'gsm8k' / 'train.jsonl'}",
              f"task.queries.eval_source={DATA / 'gsm8k' / 'test.jsonl'}", "task.queries.eval_limit=2"],
    "mtbench": [f"task.queries.source={DATA / 'mtbench' / 'question.jsonl'}", "task.queries.held_out=2"],
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(kind="llama")


@pytest.fixture(scope="module")
def engine(tiny):
    """The policy and the judge: a transformers engine on the tiny model (what a sampler pool offers)."""
    return make_engine(str(tiny), "hf", EngineOptions(dtype="float32"))


def recipe_config(path: Path, model: Path):
    raw = load_config(path)
    fmt = raw.task.queries.format
    overrides = list(FIXTURES.get(fmt, ["task.queries.held_out=2", "task.queries.limit=8"]))
    for role in ("policy", "writer", "sampler", "judge"):  # every role's model: the tiny one, no size to guess
        if getattr(raw.models, role) is not None:
            overrides += [f"models.{role}.path={model}", f"models.{role}.params_b=null",
                          f"models.{role}.max_model_len=null"]
    overrides += ["sampler.max_tokens=8", "sampler.engine.max_model_len=null", "sampler.backend=hf",
                  "evaluation.seeds=[0]", "evaluation.plots=false", "storage.uri=./runs"]
    if raw.evaluation.judge.kind != "none":
        overrides.append("evaluation.judge.kind=local")  # the tiny judge in the recipe's judge's place
    return raw, load_config(path, overrides)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_data_and_evaluation_paths_run(path, tiny, engine, monkeypatch):
    monkeypatch.chdir(REPO)  # a job runs from the repository root: constitutions.file is relative to it
    raw, cfg = recipe_config(path, tiny)
    # ---- data: queries, principles, constitutions, prompts
    train, held_out = run_queries(cfg.task.queries)
    assert train and held_out and not {q.text for q in held_out} & {q.text for q in train}
    principles = seed_principles(cfg.constitutions)
    c = cfg.constitutions
    check_constitutions(principles, train, c)
    plan = constitutions_per_query(train[:4], principles, c, c.n, seed=cfg.run.seed, tag=1)
    assert plan and all(len(cons) == c.n and len({x.id for x in cons}) == c.n for _, cons in plan)
    roles = Roles(cfg)
    prompts = [roles.render(con.text, q.text) for q, cons in plan for con in cons]
    firsts = [(q, cons[0]) for q, cons in plan]
    assert all(q.text[:40] in p and con.text in p for (q, con), p in zip(firsts, prompts[::c.n], strict=True))
    if cfg.models.sampler is not None:  # the sampler model's prompts: the same content, its own framing
        asked = [roles.render(con.text, q.text, role="sampler") for q, cons in plan for con in cons]
        assert len(asked) == len(prompts) and all(q.text[:40] in a for (q, _), a in zip(plan, asked[::c.n],
                                                                                          strict=True))
    # ---- evaluation: as the run calls it for the base model and for iteration 1
    held = held_out[:2]
    judge = engine if cfg.evaluation.judge.kind != "none" else None
    as_run = dict(judge_policy=judge, chat_tokenizer=roles.chat_tokenizer(), task_description=cfg.task.description)
    base = evaluate_iteration(engine, held, principles, cfg.evaluation, cfg.task.kind, roles.render, 0, None,
                              cfg.run.seed, cfg.sampler, cfg.constitutions, **as_run)
    report = evaluate_iteration(engine, held, principles, cfg.evaluation, cfg.task.kind, roles.render, 1, base,
                                cfg.run.seed, cfg.sampler, cfg.constitutions, **as_run)
    assert report["queries"] == len(held) and report["responses"]
    if cfg.evaluation.mi_bound:
        assert "mi_bound" in report
    if raw.evaluation.judge.kind != "none":
        assert "judge" in report or "mtbench" in report, sorted(report)
    if cfg.evaluation.gsm8k_k:
        assert report.get("gsm8k"), report.get("notes")
    if cfg.task.queries.format == "mtbench" and raw.evaluation.judge.kind != "none":
        assert report.get("mtbench"), report.get("notes")
