"""GSM8K's protocol: greedy pass@1 and sampled pass@k on the test file, stop strings and the cut after the first
'####' answer line, the neutral prompt, and a GSM8K run without a test file refused.

The model is a real tiny transformers model behind the HF engine, the problems are the fixture test file in
openai/grade-school-math's layout. Where an answer's text must be exact (a rambling answer), a scripted policy
stands in and honours `stop` as the engines do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sami_ray.config import EvaluationConfig, load_config
from sami_ray.errors import ConfigError
from sami_ray.evaluate.gsm8k import STOP_STRINGS, cut_after_answer, extract_answer, gsm8k_eval, is_correct
from sami_ray.evaluate.runner import evaluate_iteration, prompt_renderer
from sami_ray.evaluate.verifiable import get_principle
from sami_ray.sami.datasets import load_dataset_queries
from sami_ray.sami.sampling import Generation, SamplingSpec
from tests.support.tiny_models import tiny_model

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "gsm8k"
RAMBLING = ("3 boxes of 8 is 24, minus 5 is 19.\n#### 19\nProblem: Tom has 2 apples and buys 5 more.\n"
            "He has 7.\n#### 7")


def problems():
    return load_dataset_queries(FIX / "test.jsonl", "gsm8k")


class ScriptedEngine:
    """Answers every prompt with `text`, cut at the earliest stop string as vLLM and the HF engine cut."""

    def __init__(self, text: str):
        self.text, self.specs = text, []

    def generate(self, prompts, spec, seeds=None):
        self.specs.append(spec)
        cuts = [self.text.index(s) for s in spec.stop if s in self.text]
        text = self.text[:min(cuts)] if cuts else self.text
        return [[Generation(text)] * spec.n for _ in prompts]

    def score(self, prompts, responses):  # pragma: no cover - GSM8K scores nothing
        raise AssertionError


def test_cut_after_the_first_answer_line():
    assert cut_after_answer("so 19\n#### 19\nMore: #### 7") == "so 19\n#### 19"
    assert cut_after_answer("#### \nthen #### 4\n#### 5") == "#### \nthen #### 4"  # a '####' with no number
    assert cut_after_answer("no line, 12") == "no line, 12"
    assert extract_answer("#### 19\nbut later\n#### 7") == "19"  # the first answer line counts
    assert is_correct("#### 19\n#### 7", "#### 19") and not is_correct("#### 7\n#### 19", "#### 19")


def test_stop_strings_cut_a_second_answer_line():
    """The rambling answer would score 7 from its last '####' line; the stop at 'Problem:' and the cut keep 19."""
    qs = problems()[:1]
    engine = ScriptedEngine(RAMBLING)
    out = gsm8k_eval(engine, ["p"], [qs[0].reference], 2, SamplingSpec(temperature=0.8, stop=["<END>"]), 0)
    assert all(s.stop[0] == "<END>" and set(STOP_STRINGS) <= set(s.stop) for s in engine.specs)
    assert out["greedy_pass_at_1"] == 1.0 and out["pass_at"]["2"] == 1.0
    assert out["examples"][0]["answer"].endswith("#### 19") and "#### 7" not in out["examples"][0]["answer"]
    # with no stop string to meet, the cut still drops the later line
    no_marker = ScriptedEngine(RAMBLING.replace("\nProblem:", " Then:"))
    assert gsm8k_eval(no_marker, ["p"], [qs[0].reference], 1, SamplingSpec(), 0)["greedy_pass_at_1"] == 1.0


class Recorder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompts, spec, seeds=None):
        out = self.inner.generate(prompts, spec, seeds)
        self.calls.append((list(prompts), spec, [[g.text for g in gs] for gs in out]))
        return out

    def score(self, prompts, responses):
        return self.inner.score(prompts, responses)


@pytest.fixture(scope="module")
def engine():
    from sami_ray.engines.hf_engine import HFEngine

    return HFEngine(str(tiny_model()))


class Sampler:
    temperature, top_p, max_tokens, stop = 1.0, 0.95, 12, []


def _run(policy, tok, prompt_mode: str, description: str = "Solve grade-school math word problems."):
    principles = [get_principle("step_by_step").to_principle(), get_principle("final_answer_line").to_principle()]
    cfg = EvaluationConfig(mi_bound=False, verifiable=False, degeneration_guard=False, gsm8k_k=3,
                           gsm8k_prompt=prompt_mode)
    return evaluate_iteration(policy, problems(), principles, cfg, "math", prompt_renderer("math", tok), 1, None, 5,
                              Sampler(), task_description=description)


def test_greedy_pass_at_1_and_sampled_pass_at_k_on_the_test_file(engine):
    policy = Recorder(engine)
    rep = _run(policy, engine.tokenizer, "neutral")
    g = rep["gsm8k"]
    assert g["problems"] == 2 and g["samples"] == 3 and set(g["pass_at"]) == {"1", "2", "3"}
    gsm_calls = [c for c in policy.calls if c[1].stop]  # evaluation's own samples have no stop strings here
    (greedy_prompts, greedy_spec, greedy_out), (_, sampled_spec, sampled_out) = gsm_calls
    assert greedy_spec.temperature == 0.0 and greedy_spec.n == 1
    assert sampled_spec.temperature == 1.0 and sampled_spec.n == 3
    assert set(STOP_STRINGS) <= set(greedy_spec.stop) and greedy_spec.stop == sampled_spec.stop
    # the neutral prompt: the task description alone; no principle, no answer format an antithesis may forbid
    for p, q in zip(greedy_prompts, problems(), strict=True):
        assert q.text in p and "Solve grade-school math word problems." in p
        assert "step by step" not in p.lower() and "####" not in p
    refs = [q.reference for q in problems()]
    greedy_ok = [is_correct(cut_after_answer(o[0]), r) for o, r in zip(greedy_out, refs, strict=True)]
    assert [p["greedy_correct"] for p in g["per_problem"]] == greedy_ok
    assert g["greedy_pass_at_1"] == sum(greedy_ok) / 2
    sampled_ok = [sum(is_correct(cut_after_answer(x), r) for x in o) for o, r in zip(sampled_out, refs, strict=True)]
    assert [p["sampled_correct"] for p in g["per_problem"]] == sampled_ok
    assert g["pass_at"]["3"] == sum(c > 0 for c in sampled_ok) / 2
    assert [p["reference"] for p in g["per_problem"]] == ["19", "150"] and "neutral" in g["prompt"]
    again = _run(Recorder(engine), engine.tokenizer, "neutral")["gsm8k"]
    assert [p["greedy"] for p in again["per_problem"]] == [p["greedy"] for p in g["per_problem"]]  # greedy


def test_constitution_prompt_when_chosen(engine):
    policy = Recorder(engine)
    rep = _run(policy, None, "constitution")
    prompts = [c[0] for c in policy.calls if c[1].stop][0]
    assert all("step by step" in p.lower() and p.startswith("System: Solve the problem.") for p in prompts)
    assert "constitution" in rep["gsm8k"]["prompt"]


def test_a_gsm8k_run_without_its_test_file_is_refused():
    train, test = FIX / "train.jsonl", FIX / "test.jsonl"
    base = [f"task.queries.source={train}", "task.queries.format=gsm8k"]
    with pytest.raises(ConfigError, match="eval_source is unset: GSM8K is evaluated on its test file"):
        load_config(None, base)
    assert load_config(None, [*base, f"task.queries.eval_source={test}"]).task.queries.eval_source == str(test)
    assert not load_config(None, [*base, "evaluation.enabled=false"]).evaluation.enabled
    assert load_config(None, [*base, "task.queries.held_out=0"]).task.queries.held_out == 0
