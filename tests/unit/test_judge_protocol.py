"""The judging protocol: template files, raw judgments beside the report, lengths and the length-controlled win
rate, responses files (ours and the SAMI reference's) as baselines, unmatched answers counted."""

import json
import random
import re
from pathlib import Path

import pytest

from sami_ray.config import EvaluationConfig, JudgeConfig
from sami_ray.errors import ConfigError, DataError
from sami_ray.evaluate.judge import RAW_KEY, PairItem, judge_pairs
from sami_ray.evaluate.judge_templates import BY_TASK, load_template, shipped_template, template_for
from sami_ray.evaluate.length import logistic_length_fit
from sami_ray.evaluate.report import JUDGMENTS_FILE, REPORT_FILE, write_report
from sami_ray.evaluate.responses import Answer, match_answers, read_responses, write_responses
from sami_ray.evaluate.runner import _judge
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.data import Query
from sami_ray.sami.sampling import Generation

REFERENCE = Path(__file__).parents[1] / "fixtures" / "datasets" / "reference"
_ANSWERS = re.compile(r"\[Answer A\]\n(.*?)\n\[End of Answer A\].*?\[Answer B\]\n(.*?)\n\[End of Answer B\]", re.S)


class RuleJudge:
    """Replies by a rule on the two answers it is shown."""

    def __init__(self, rule):
        self.rule, self.prompts = rule, []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.rule(*_ANSWERS.search(p).groups()) for p in prompts]


def longer_wins(a: str, b: str) -> str:
    la, lb = len(a.split()), len(b.split())
    return "[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]"


# ---------------------------------------------------------------- templates

@pytest.mark.parametrize("kind", sorted(BY_TASK))
def test_shipped_templates_render_every_field(kind):
    t = shipped_template(kind)
    text = t.render("1. Be brief.", "What is rain?", "ANSWER-ONE", "ANSWER-TWO")
    assert "1. Be brief." in text and "What is rain?" in text
    assert _ANSWERS.search(text).groups() == ("ANSWER-ONE", "ANSWER-TWO")
    assert "[[A]]" in text and "[[B]]" in text and "[[C]]" in text and "{" not in text


def test_task_kinds_get_their_own_template():
    names = {k: shipped_template(k).text for k in ("summarization", "dialogue", "instruction")}
    assert len(set(names.values())) == 3
    assert "summar" in names["summarization"] and "conversation" in names["dialogue"].lower()
    assert shipped_template("math").text == names["instruction"]


def test_braces_in_answers_are_not_placeholders():
    text = shipped_template("instruction").render("P", "Q", "use {query} and {x}", "B")
    assert "use {query} and {x}" in text


def test_user_template_is_checked(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("Rules: {principles}\nQ: {query}\n[Answer A]\n{answer_a}\n[End of Answer A]\n[Answer B]\n"
                    "{answer_b}\n[End of Answer B]\nSay [[A]], [[B]] or [[C]].")
    assert template_for(JudgeConfig(template=str(good)), "dialogue").name == str(good)
    missing = tmp_path / "missing.txt"
    missing.write_text("{principles} {query} {answer_a}")
    with pytest.raises(ConfigError, match=r"missing\.txt.*\{answer_b\} is missing"):
        load_template(missing)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("{principles} {query} {answer_a} {answer_b} {constitution}")
    with pytest.raises(ConfigError, match=r"unknown\.txt: unknown placeholder \{constitution\}"):
        load_template(unknown)
    with pytest.raises(ConfigError, match="nothere.txt"):
        load_template(tmp_path / "nothere.txt")


def test_a_configured_template_is_what_the_judge_sees(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("MY TEMPLATE {principles}|{query}\n[Answer A]\n{answer_a}\n[End of Answer A]\n[Answer B]\n"
                    "{answer_b}\n[End of Answer B]")
    judge = RuleJudge(longer_wins)
    judge_pairs(judge, [PairItem("q", "c", "a b", "a")], template=load_template(path))
    assert all(p.startswith("MY TEMPLATE c|q") for p in judge.prompts)


# ---------------------------------------------------------------- raw judgments, unparsed verdicts

def test_raw_judgments_are_written_beside_a_small_report(tmp_path):
    replies = iter(["[[A]]", "no idea", "[[C]]", "[[A]]"])

    class Scripted:
        def complete(self, prompts):
            return [next(replies) for _ in prompts]

    items = [PairItem("q1", "c", "cand one", "base one", "writing"), PairItem("q2", "c", "cand two", "base two")]
    result = judge_pairs(Scripted(), items)
    assert result["unparseable"] == 1 and result["wins"] == 1 and result["losses"] == 1 and result["ties"] == 1
    assert result["win_rate"] == pytest.approx(0.5)  # (1 + 0.5) / 3 decided; the unparsed one is no win
    assert result["by_order"]["candidate_first"]["wins"] == 1 and result["by_order"]["baseline_first"]["losses"] == 1
    write_report({"iteration": 1, "judge": result}, tmp_path)
    stored = json.loads((tmp_path / REPORT_FILE).read_text())
    assert RAW_KEY not in stored["judge"] and stored["judge"]["judgments_file"] == JUDGMENTS_FILE
    lines = [json.loads(x) for x in (tmp_path / JUDGMENTS_FILE).read_text().splitlines()]
    assert [(r["pair"], r["order"], r["outcome"]) for r in lines] == [
        (0, "candidate_first", "win"), (0, "baseline_first", "unparseable"),
        (1, "candidate_first", "tie"), (1, "baseline_first", "loss")]
    assert lines[1]["reply"] == "no idea" and lines[1]["verdict"] is None
    assert lines[0]["candidate"] == "cand one" and lines[0]["category"] == "writing"
    assert RAW_KEY in result  # the caller's report is left as it was


# ---------------------------------------------------------------- length

def test_lengths_and_length_controlled_rate_when_longer_always_wins():
    rng = random.Random(7)
    items = []
    for k in range(60):
        r = rng.random()
        extra = 0 if r < 0.1 else rng.randint(3, 40)  # the candidate is longer in about 90% of pairs
        base = " ".join(f"w{k}" for _ in range(rng.randint(5, 30)))
        items.append(PairItem(f"q{k}", "c", base + " more" * extra, base))
    out = judge_pairs(RuleJudge(longer_wins), items)
    assert out["win_rate"] > 0.9  # raw: length carries it
    lc = out["length_controlled_win_rate"]
    assert lc["win_rate"] == pytest.approx(0.5, abs=0.05) and lc["verdicts"] == 120
    lengths = out["lengths"]
    assert lengths["candidate_mean_words"] > lengths["baseline_mean_words"] + 10


def test_length_controlled_rate_keeps_a_real_preference():
    rng = random.Random(3)
    diffs = [rng.randint(-40, 40) for _ in range(200)]  # lengths unrelated to who wins
    scores = [1.0 if rng.random() < 0.8 else 0.0 for _ in diffs]
    fit = logistic_length_fit(diffs, scores)
    assert fit["win_rate"] == pytest.approx(sum(scores) / len(scores), abs=0.03)
    assert logistic_length_fit([], [])["win_rate"] is None
    assert logistic_length_fit([0, 0], [1.0, 0.0])["win_rate"] == pytest.approx(0.5)


# ---------------------------------------------------------------- responses files

def test_reference_response_files_are_read_as_they_are():
    mt = read_responses(REFERENCE / "sami_extension_mt_bench_responses.json")
    assert [a.category for a in mt] == ["writing", "math", "coding"]
    assert mt[1].query.startswith("A shop sells pens") and mt[1].constitution.startswith("1. Think step by step")
    assert mt[2].response.startswith("```python")
    tldr = read_responses(REFERENCE / "sami_tldr_responses.json")
    assert len(tldr) == 2 and tldr[0].query.startswith("POST: ") and tldr[0].category is None


def test_our_jsonl_round_trips_and_bad_rows_are_named(tmp_path):
    answers = [Answer("q", "c", "r", "math"), Answer("q2", "c", "r2")]
    path = write_responses(answers, tmp_path / "a.jsonl")
    assert read_responses(path) == answers
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "constitution": "c", "response": "r"}\n{"question": "q", "answer": "r"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2.*\['answer', 'question'\].*'query', 'constitution'"):
        read_responses(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"question": {"0": "q"}, "answer": {"0": "r"}}))
    with pytest.raises(DataError, match=r"wrong\.json.*'constitution', 'question', 'response'"):
        read_responses(wrong)
    with pytest.raises(DataError, match="no such responses file"):
        read_responses(tmp_path / "absent.jsonl")


def test_matching_counts_the_unmatched():
    cands = [Answer("q1", "c", "x"), Answer("q2", "c", "y"), Answer("q3", "c", "z")]
    bases = [Answer(" q1 ", "c\n", "X"), Answer("q2", "other", "Y"), Answer("q4", "c", "W")]
    m = match_answers(cands, bases)
    assert [(a.response, b.response) for a, b in m.pairs] == [("x", "X")]
    assert m.summary() == {"matched": 1, "candidate_unmatched": 2, "baseline_unmatched": 2}


class VerdictPolicy:
    """A local judge's policy: the verdict a rule gives on the answers in each prompt."""

    def generate(self, prompts, spec, seeds=None):
        return [[Generation(longer_wins(*_ANSWERS.search(p).groups()))] for p in prompts]

    def score(self, prompts, responses):
        raise AssertionError("a judge is never asked to score")


def test_a_responses_file_as_the_runs_baseline(tmp_path):
    ref = read_responses(REFERENCE / "sami_extension_mt_bench_responses.json")
    cons = [Constitution(f"c{k}", (), a.constitution) for k, a in enumerate(ref)]
    queries = [Query(f"q{k}", a.query, a.category) for k, a in enumerate(ref)]
    # answers to the first two reference questions (longer than the reference's), and one to a question it lacks
    answers = [(cons[0], queries[0], 0, ref[0].response + " And a fourth day by the lake."),
               (cons[1], queries[1], 0, ref[1].response + " Check: 12 / 3 * 2 = 8."),
               (cons[0], Query("qx", "A question the file does not have", None), 0, "whatever")]
    cfg = EvaluationConfig(judge=JudgeConfig(kind="local",
                                             baseline=str(REFERENCE / "sami_extension_mt_bench_responses.json")))
    notes: list[str] = []
    out = _judge(cfg, answers, None, VerdictPolicy(), notes, "instruction")
    assert out["matching"] == {"matched": 2, "candidate_unmatched": 1, "baseline_unmatched": 1}
    assert out["pairs"] == 2 and out["wins"] == 4 and out["win_rate"] == 1.0
    assert out["by_category"]["math"]["wins"] == 2 and out["baseline"].endswith("mt_bench_responses.json")
    assert out["template"] == "instruction (shipped)"


def test_baseline_must_be_base_previous_or_a_file():
    assert JudgeConfig(baseline="answers.jsonl").baseline == "answers.jsonl"
    with pytest.raises(ValueError, match="sami-ray answers"):
        JudgeConfig(baseline="mistralai/Mistral-7B-Instruct-v0.2")


def test_a_model_answers_the_held_out_queries_as_an_evaluation_samples_them():
    from sami_ray.cli.judge import model_answers
    from sami_ray.config import demo_config_path, load_config

    seen = {}

    class EchoPolicy:
        def generate(self, prompts, spec, seeds=None):
            seen.setdefault("seeds", []).extend(seeds)
            return [[Generation(f"answer to {p}")] for p in prompts]

    class FakeRun:  # the scratch run's shape: loop.queries, loop.policy, roles.render, shutdown
        def __init__(self, cfg):
            seen["model"] = cfg.models.policy.path
            self.loop = type("L", (), {"queries": lambda s: ([], [Query("h1", "How do I start running?")]),
                                       "policy": lambda s, stage: EchoPolicy()})()
            self.roles = type("R", (), {"render": lambda s, c, q: f"{c}||{q}"})()

        def shutdown(self):
            seen["shut"] = True

    cfg = load_config(str(demo_config_path()), ["evaluation.seeds=[0,1]"])
    answers = model_answers("org/some-model", cfg, None, lambda _m: None, start_run=FakeRun)
    n = cfg.evaluation.n or cfg.constitutions.n
    assert seen["model"] == "org/some-model" and seen["shut"]
    assert len(answers) == 2 * n and len(set(seen["seeds"])) == 2 * n  # per (seed, query, constitution)
    assert all(a.query == "How do I start running?" for a in answers)
    assert all(a.response == f"answer to {a.constitution}||{a.query}" for a in answers)


def test_answers_match_whatever_order_their_constitution_lists_the_principles_in():
    from sami_ray.evaluate.responses import Answer, match_answers

    a = Answer("How do I cook rice?", "1. Answer in clear paragraphs.\n2. Answer in at least 80 words.", "x")
    b = Answer("How do I cook rice? ", "1. Answer in at least 80 words.\n2. Answer in clear paragraphs.", "y")
    other = Answer("How do I cook rice?", "1. Answer in clear paragraphs.", "z")
    matched = match_answers([a, other], [b])
    assert [(c.response, d.response) for c, d in matched.pairs] == [("x", "y")]
    assert (matched.candidate_unmatched, matched.baseline_unmatched) == (1, 0)
