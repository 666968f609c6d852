"""MT-Bench evaluation: the judge's rating parsed (bad replies counted as unparsed), the second turn's prompt built
from the model's own first answer, grades aggregated per category and turn, and a real tiny model answering both
turns of the fixture's questions through `evaluate_iteration`.

The judge is a deterministic object implementing the judge protocol from the prompt text (it is not under test);
the questions are the fixture file in MT-Bench's public layout; the answering model is a real tiny transformers
model behind the HF engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sami_ray.config import EvaluationConfig, JudgeConfig
from sami_ray.evaluate.mtbench import (
    NO_REFERENCE,
    MTItem,
    aggregate,
    conversation_prompt,
    grade,
    grading_prompts,
    grading_template,
    mtbench_eval,
    parse_rating,
)
from sami_ray.evaluate.runner import evaluate_iteration, prompt_renderer
from sami_ray.evaluate.verifiable import get_principle
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.datasets import load_dataset_queries
from sami_ray.sami.prompts import render_prompt
from sami_ray.sami.sampling import Generation, SamplingSpec
from tests.support.tiny_models import build_tokenizer, tiny_model

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "mtbench" / "question.jsonl"
CONS = Constitution("+concise", (), "Be concise.")
GRADED = re.compile(r"\[Reply to grade\]\n(.*?)\n\[End of reply\]", re.S)


def questions():
    return load_dataset_queries(FIX, "mtbench")


class RatingJudge:
    """Judge protocol: a grading prompt's rating is the number after 'score' in the graded reply; 'mumble' gets a
    reply without a rating, 'offline' a failed request; a pairwise prompt gets a tie."""

    def __init__(self):
        self.prompts: list[str] = []

    def complete(self, prompts: list[str]) -> list[str | None]:
        self.prompts += prompts
        out = []
        for p in prompts:
            m = GRADED.search(p)
            if m is None:
                out.append("Both are alike. [[C]]")
            elif "offline" in m.group(1):
                out.append(None)
            elif "mumble" in m.group(1):
                out.append("I would give it a seven out of ten.")
            else:
                n = re.search(r"score(\d+)", m.group(1))
                out.append(f"Fine. Rating: [[{n.group(1)}]]" if n else "Rating: [[1]]")
        return out


@pytest.mark.parametrize("reply, rating", [
    ("Good answer. Rating: [[7]]", 7.0),
    ("[[10]]", 10.0),
    ("[[ 8.5 ]]", 8.5),
    ("First I thought [[3]], but on reflection [[6]]", 6.0),  # the last rating counts
    ("[[0]]", None),
    ("[[11]]", None),
    ("Rating: 7/10", None),
    ("[[A]]", None),
    ("", None),
    (None, None),
])
def test_rating_parsing(reply, rating):
    assert parse_rating(reply) == rating


def test_second_turn_prompt_carries_the_first_question_and_answer():
    tok = build_tokenizer()
    q = questions()[0]
    first = "Dear Sam, the lake was calm and we swam every morning."
    for tokenizer in (tok, None):
        p1 = conversation_prompt("instruction", CONS.text, q.turns[:1], [], tokenizer)
        assert p1 == render_prompt("instruction", CONS.text, q.turns[0], tokenizer)  # turn 1 as training renders it
        p2 = conversation_prompt("instruction", CONS.text, q.turns, [first], tokenizer)
        i_q1, i_a1, i_q2 = p2.index(q.turns[0]), p2.index(first), p2.index(q.turns[1])
        assert i_q1 < i_a1 < i_q2 and CONS.text in p2
    assert p2.endswith("Assistant:")  # the plain frame
    chat = conversation_prompt("instruction", CONS.text, q.turns, [first], tok)
    assert f"<|assistant|>\n{first}</s>" in chat and chat.endswith("<|assistant|>\n")
    with pytest.raises(ValueError):
        conversation_prompt("instruction", CONS.text, q.turns, [], tok)


def test_grading_prompts_show_references_only_for_math_reasoning_coding():
    qs = questions()  # writing, math (references 100 / n^2), extraction (a reference, but not a graded category)
    items = [MTItem(q, CONS) for q in qs]
    answers = [["a1", "a2"] for _ in qs]
    prompts = {(items[k].category, t): p for k, t, p in grading_prompts(items, answers, grading_template())}
    assert "[Reference answer]\n100\n" in prompts[("math", 0)] and "[Reference answer]\nn^2\n" in prompts[("math", 1)]
    assert NO_REFERENCE in prompts[("extraction", 0)] and "Lyon, Oslo, Bergen" not in prompts[("extraction", 0)] \
        .split("[Reference answer]")[1]
    assert NO_REFERENCE in prompts[("writing", 1)]
    # turn 2's grading prompt holds the dialogue: the first question, the graded model's first answer, the second
    p = prompts[("writing", 1)]
    assert p.index(qs[0].turns[0]) < p.index("Assistant: a1") < p.index(qs[0].turns[1])
    assert "Be concise." in p and "{answer}" not in p and "{principles}" not in p


def test_grades_per_category_and_turn_with_unparsed_and_failed_replies():
    qs = questions()
    items = [MTItem(q, CONS) for q in qs]
    answers = [["score8 postcard", "score6 questions?"],  # writing
               ["score10 it is 100", "mumble"],  # math: turn 2 has no rating
               ["score4 Lyon", "offline"]]  # extraction: turn 2's request failed
    judge = RatingJudge()
    judgments = grade(judge, items, answers)
    assert len(judge.prompts) == 6 and [j["rating"] for j in judgments] == [8, 6, 10, None, 4, None]
    assert judgments[3]["reply"] == "I would give it a seven out of ten."  # raw reply kept
    g = aggregate(judgments)
    assert g["by_category"]["writing"]["turn_1"] == {"mean": 8, "count": 1, "unparsed": 0, "errors": 0}
    assert g["by_category"]["writing"]["both_turns"]["mean"] == 7
    assert g["by_category"]["math"]["turn_2"] == {"mean": None, "count": 0, "unparsed": 1, "errors": 0}
    assert g["by_category"]["math"]["both_turns"] == {"mean": 10, "count": 1, "unparsed": 1, "errors": 0}
    assert g["by_category"]["extraction"]["turn_2"] == {"mean": None, "count": 0, "unparsed": 0, "errors": 1}
    assert g["overall"]["turn_1"] == {"mean": pytest.approx(22 / 3), "count": 3, "unparsed": 0, "errors": 0}
    assert g["overall"]["turn_2"]["mean"] == 6 and g["overall"]["turn_2"]["unparsed"] == 1
    assert g["overall"]["both_turns"] == {"mean": pytest.approx(28 / 4), "count": 4, "unparsed": 1, "errors": 1}


class Recorder:
    """A policy passed through unchanged, recording every prompt and the temperature it was sampled at."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompts, spec, seeds=None):
        out = self.inner.generate(prompts, spec, seeds)
        self.calls += [(p, spec.temperature, g[0].text) for p, g in zip(prompts, out, strict=True)]
        return out

    def score(self, prompts, responses):
        return self.inner.score(prompts, responses)


class JudgePolicy:
    """A local judge model's stand-in with the Policy shape, answering from the prompt text like RatingJudge."""

    def __init__(self):
        self.judge = RatingJudge()

    def generate(self, prompts, spec, seeds=None):
        return [[Generation(r or "")] for r in self.judge.complete(prompts)]

    def score(self, prompts, responses):  # pragma: no cover - a judge is never scored
        raise AssertionError("the judge is not scored")


@pytest.fixture(scope="module")
def engine():
    from sami_ray.engines.hf_engine import HFEngine

    return HFEngine(str(tiny_model()))


def test_tiny_model_answers_both_turns_and_is_graded_and_compared(engine):
    policy = Recorder(engine)
    judge = JudgePolicy()
    principles = [get_principle("concise").to_principle(), get_principle("bullets").to_principle()]
    cfg = EvaluationConfig(mi_bound=False, verifiable=False, degeneration_guard=False,
                           judge=JudgeConfig(kind="local"))

    class Sampler:
        temperature, top_p, max_tokens, stop = 1.0, 0.95, 10, []

    render = prompt_renderer("instruction", engine.tokenizer)
    reports = []
    for it in (0, 1):
        policy.calls.clear()
        reports.append(evaluate_iteration(policy, questions(), principles, cfg, "instruction", render, it,
                                          reports[0] if reports else None, 3, Sampler(), judge_policy=judge))
    mt = reports[1]["mtbench"]
    assert mt["questions"] == 3 and len(mt["answers"]) == 3
    by_q = {q.id: q for q in questions()}
    for a in mt["answers"]:
        q = by_q[a["query_id"]]
        assert len(a["turns"]) == 2 and a["turns"][0]  # the real model wrote a non-empty first answer
        second = [(p, t) for p, t, _ in policy.calls if q.turns[1] in p]
        assert len(second) == 1, "one second-turn prompt per question"
        prompt, temperature = second[0]
        assert a["turns"][0] in prompt and prompt.index(q.turns[0]) < prompt.index(a["turns"][0])
        assert prompt.endswith("<|assistant|>\n")  # the model's chat template, as the first turn
        assert temperature == {"writing": 0.7, "math": 0.0, "extraction": 0.0}[q.category]
    g = mt["grading"]
    assert set(g["by_category"]) == {"writing", "math", "extraction"}
    # the tiny model's answers carry no 'score': the judge double rates every turn 1
    assert g["overall"]["both_turns"] == {"mean": 1.0, "count": 6, "unparsed": 0, "errors": 0}
    assert len(mt["judgments"]) == 6
    assert "pairwise" not in reports[0]["mtbench"]  # the base model has no baseline
    wins = mt["pairwise"]
    assert wins["pairs"] == 3 and wins["ties"] == 6 and wins["win_rate"] == 0.5
    assert set(wins["by_category"]) == {"writing", "math", "extraction"}
    assert wins["baseline"] == "iteration 0"


def test_mtbench_off_or_without_judge(engine):
    principles = [get_principle("concise").to_principle(), get_principle("bullets").to_principle()]

    class Sampler:
        temperature, top_p, max_tokens, stop = 1.0, 0.95, 4, []

    render = prompt_renderer("instruction", engine.tokenizer)
    off = EvaluationConfig(mi_bound=False, verifiable=False, degeneration_guard=False, mtbench=False,
                           judge=JudgeConfig(kind="local"))
    rep = evaluate_iteration(engine, questions()[:1], principles, off, "instruction", render, 0, None, 3, Sampler(),
                             judge_policy=JudgePolicy())
    assert "mtbench" not in rep
    no_judge = EvaluationConfig(mi_bound=False, verifiable=False, degeneration_guard=False)
    rep = evaluate_iteration(engine, questions()[:1], principles, no_judge, "instruction", render, 0, None, 3,
                             Sampler())
    assert rep["mtbench"] is None and any("MT-Bench needs a judge" in n for n in rep["notes"])


def test_mtbench_eval_direct_with_plain_frame(engine):
    """Without a chat tokenizer both turns use the plain frame; the baseline's answers pair by (question,
    constitution)."""
    items = [MTItem(q, CONS) for q in questions()[:2]]
    spec = SamplingSpec(temperature=1.0, max_tokens=6)
    judge = RatingJudge()
    base = mtbench_eval(engine, items, "instruction", None, spec, 0, judge, None)
    other = mtbench_eval(engine, items, "instruction", None, spec, 1, judge,
                         {"iteration": 0, "mtbench": base})
    assert other["pairwise"]["pairs"] == 2
    pairwise_prompts = [p for p in judge.prompts if "[Reply to grade]" not in p]
    assert len(pairwise_prompts) == 4  # two questions, both orders
    for a in base["answers"]:  # each baseline exchange (both turns) is shown in both orders of its pair
        exchange = f"[Turn 1] {a['turns'][0]}\n\n[Turn 2] {a['turns'][1]}"
        assert sum(exchange in p for p in pairwise_prompts) >= 2


def test_report_keeps_mtbench_raw_replies_beside_it_and_shows_the_scores(tmp_path):
    import json

    from sami_ray.evaluate.judge import RAW_KEY
    from sami_ray.evaluate.report import JUDGMENTS_FILE, summary_rows, write_report

    grading = [{"query_id": "81", "turn": 0, "category": "writing", "rating": 7.0, "error": False, "reply": "[[7]]"}]
    report = {"iteration": 1, "gsm8k": {"greedy_pass_at_1": 0.5, "pass_at": {"1": 0.25, "4": 0.75}},
              "mtbench": {"grading": {"overall": {"both_turns": {"mean": 7.0, "count": 1, "unparsed": 0,
                                                                 "errors": 0}}},
                          "judgments": grading,
                          "pairwise": {"win_rate": 0.5, RAW_KEY: [{"pair": 0, "order": "candidate_first"}]}}}
    path = write_report(report, tmp_path)
    stored = json.loads(path.read_text())
    assert "judgments" not in stored["mtbench"] and RAW_KEY not in stored["mtbench"]["pairwise"]
    raw = [json.loads(line) for line in (tmp_path / JUDGMENTS_FILE).read_text().splitlines()]
    assert {r["section"] for r in raw} == {"mtbench_grading", "mtbench_pairwise"}
    row = summary_rows(report)
    assert row["gsm8k pass@1 greedy"] == "0.50" and row["gsm8k pass@4 sampled"] == "0.75"
    assert row["MT-Bench score (1-10)"] == "7.00" and row["MT-Bench win rate"] == "0.50"
