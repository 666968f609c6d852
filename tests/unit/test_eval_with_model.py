"""Evaluation on a real (tiny, random) transformers model: the MI bound against the core loss, a degenerate policy
that games the bound but trips the guard, and a whole `evaluate_iteration` with reports, plots and a summary.

What is real: the model, its tokenizer and chat template, every log-prob, the training steps (core SAMI loss,
core collation). What is hand-made: the answers of the degenerate and the base policy (a tiny random model cannot
write English), which are scripted per (query, constitution) and then scored by the real model.
"""

import json
import math

import pytest
import torch

from sami_ray.config import EvaluationConfig, JudgeConfig
from sami_ray.engines.base import prompt_seeds
from sami_ray.evaluate.mi_bound import mi_bound, score_matrices
from sami_ray.evaluate.policy import Policy
from sami_ray.evaluate.report import format_summary, plot_history, read_report, write_report
from sami_ray.evaluate.runner import evaluate_iteration, prompt_renderer
from sami_ray.evaluate.verifiable import get_principle
from sami_ray.sami.constitutions import sample_constitutions
from sami_ray.sami.data import Query, SamiExample, collate_pairs, tokenize_example
from sami_ray.sami.loss import mi_lower_bound, sami_loss, sequence_logprobs, token_logprobs
from sami_ray.sami.sampling import Generation
from tests.support.tiny_models import tiny_model


class HFPolicy:
    """The Policy protocol over a plain transformers causal LM (what the sampler pool offers, minus vLLM)."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model.eval(), tokenizer

    def generate(self, prompts, spec, seeds=None):
        out = []
        with torch.no_grad():
            for i, p in enumerate(prompts):
                torch.manual_seed(prompt_seeds(spec, len(prompts), seeds)[i])
                ids = self.tok(p, add_special_tokens=False, return_tensors="pt")
                sample = dict(do_sample=True, temperature=spec.temperature, top_p=spec.top_p) \
                    if spec.temperature > 0 else {}
                gen = self.model.generate(**ids, max_new_tokens=spec.max_tokens, num_return_sequences=spec.n,
                                          pad_token_id=self.tok.pad_token_id, **sample)
                out.append([Generation(self.tok.decode(g[ids.input_ids.shape[1]:], skip_special_tokens=True))
                            for g in gen])
        return out

    def score(self, prompts, responses):
        out = []
        with torch.no_grad():
            for p, r in zip(prompts, responses, strict=True):
                p_ids = self.tok(p, add_special_tokens=False).input_ids
                r_ids = self.tok(r, add_special_tokens=False).input_ids
                logits = self.model(torch.tensor([p_ids + r_ids])).logits[0].float()
                lp = torch.log_softmax(logits[len(p_ids) - 1:-1], dim=-1)
                out.append(lp.gather(-1, torch.tensor(r_ids)[:, None]).squeeze(-1).tolist())
        return out


class ScriptedAnswers(HFPolicy):
    """Answers chosen by hand per (query, constitution); log-probs from the real model."""

    def __init__(self, model, tokenizer, answer):
        super().__init__(model, tokenizer)
        self.answer = answer  # (prompt) -> response

    def generate(self, prompts, spec, seeds=None):
        return [[Generation(self.answer(p))] * spec.n for p in prompts]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model()
    tok = AutoTokenizer.from_pretrained(path)
    return path, tok, lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


TOPICS = ["bake bread", "fix a bike tire", "save money", "sleep better", "clean a pan", "learn to code",
          "plant a garden", "write a letter", "cook rice", "paint a wall", "train a dog", "brew coffee"]
QUERIES = [Query(f"q{i}", f"How do I {t}?", "howto") for i, t in enumerate(TOPICS)]
CONCISE = get_principle("concise").to_principle()
EVASIVE = "I understand these instructions clearly."


def normal_answer(topic: str, long: bool) -> str:
    short = f"To {topic}, start small, follow a simple guide and practise each day."
    return short if not long else short + f" Most people who {topic} well took notes and asked others for help."


def test_policy_protocol_is_met(tiny):
    _, tok, load = tiny
    assert isinstance(HFPolicy(load(), tok), Policy)


def test_mi_bound_equals_core_loss_on_a_real_model(tiny):
    _, tok, load = tiny
    model = load()
    render = prompt_renderer("instruction", tok)
    principles = [get_principle("bullets").to_principle(), CONCISE]
    prompts, responses, examples = [], [], []
    for q in QUERIES[:4]:
        cons = sample_constitutions(principles, 2, seed=0, key=q.id, mode="all_or_none")
        ps = [render(c.text, q.text) for c in cons]
        rs = [f"- {q.text.lower()} first", f"Some prose about {q.text.lower()} and more words."]
        prompts.append(ps)
        responses.append(rs)
        examples.append(tokenize_example(tok, SamiExample(q, cons, rs, ps), add_eos=False))
    got = mi_bound(HFPolicy(model, tok), prompts, responses)

    batch = collate_pairs(examples, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    matrix = sequence_logprobs(token_logprobs(logits, batch.labels), batch.labels).reshape(4, 2, 2)
    loss = sami_loss(matrix)
    assert got["mi_bound"] == pytest.approx(mi_lower_bound(loss, 2), abs=1e-5)
    assert got["loss"] == pytest.approx(float(loss), abs=1e-5)
    assert got["n"] == 2 and got["queries"] == 4 and got["skipped_queries"] == 0
    assert score_matrices(HFPolicy(model, tok), prompts, responses).double() == pytest.approx(matrix.double(),
                                                                                             abs=1e-5)
    # a query with an empty answer has no per-token mean: it is skipped, not scored as log p = 0
    responses[0][1] = ""
    assert mi_bound(HFPolicy(model, tok), prompts, responses)["skipped_queries"] == 1


def _sami_train(model, tok, render, queries, answer, steps: int, lr: float = 2e-3) -> None:
    """A few plain SAMI steps with the core loss (what the trainer does, minus DeepSpeed)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        q = queries[step % len(queries)]
        cons = sample_constitutions([CONCISE], 2, seed=0, key=("eval", q.id), mode="all_or_none")
        ps = [render(c.text, q.text) for c in cons]
        ex = tokenize_example(tok, SamiExample(q, cons, [answer(p) for p in ps], ps), add_eos=False)
        batch = collate_pairs([ex], tok.pad_token_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = sami_loss(sequence_logprobs(token_logprobs(logits, batch.labels), batch.labels).reshape(1, 2, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_degenerate_policy_gets_a_high_bound_but_trips_the_guard(tiny, tmp_path):
    _, tok, load = tiny
    render = prompt_renderer("instruction", tok)
    topic_of = {render(c.text, q.text): (t, c.signs["concise"])
                for q, t in zip(QUERIES, TOPICS, strict=True)
                for c in sample_constitutions([CONCISE], 2, seed=0, key=("eval", q.id), mode="all_or_none")}

    def base_answer(prompt):  # on topic under both constitutions, a little shorter under 'concise'
        topic, short = topic_of[prompt]
        return normal_answer(topic, long=not short)

    def degenerate_answer(prompt):  # an evasive one-liner under 'concise', a normal answer otherwise
        topic, short = topic_of[prompt]
        return EVASIVE if short else normal_answer(topic, long=True)

    cfg = EvaluationConfig(seeds=[0], on_degeneration="rollback", sample_answers=1, judge=JudgeConfig())
    train_q, held_out = QUERIES[:8], QUERIES[8:]
    base = evaluate_iteration(ScriptedAnswers(load(), tok, base_answer), held_out, [CONCISE], cfg, "instruction",
                              render, 0, None, 0)
    model = load()
    torch.manual_seed(0)
    _sami_train(model, tok, render, train_q, degenerate_answer, steps=48)
    after = evaluate_iteration(ScriptedAnswers(model, tok, degenerate_answer), held_out, [CONCISE], cfg,
                               "instruction", render, 1, base, 0)

    assert abs(base["mi_bound"]["mi_bound"]) < 0.1  # the untrained model cannot tell the constitutions apart
    assert after["mi_bound"]["mi_bound"] > 0.6 * math.log(2)  # ... the trained one can, on held-out queries
    assert after["mi_bound"]["row_accuracy"] == 1.0
    assert not base["degeneration"]["flagged"] and base["degeneration"]["action"] == "none"
    guard = after["degeneration"]
    assert guard["flagged"] and guard["action"] == "rollback"
    assert guard["per_constitution"]["+concise"]["on_topic"] == 0.0
    assert guard["per_constitution"]["+concise"]["evasive"] == 1.0
    assert guard["per_constitution"]["-concise"]["on_topic"] == 1.0
    assert any(r.startswith("+concise: on-topic share 0.00 vs base 1.00") for r in guard["reasons"])
    # the verifiable check alone would call this a success: every '+concise' answer is under 40 words
    assert after["verifiable"]["concise"]["positive_follows"] == 1.0
    assert after["samples"]["+concise"][0]["response"] == EVASIVE
    text = format_summary([base, after])
    assert "rollback" in text and EVASIVE in text
    write_report(after, tmp_path)
    assert read_report(tmp_path)["degeneration"]["flagged"] is True


def test_evaluate_iteration_end_to_end(tiny, tmp_path):
    """Sampling, scoring, rates, guard, a local judge (the tiny model: its verdicts are garbage and are counted as
    such), GSM8K on problems with references, JSON, plots and the summary."""
    _, tok, load = tiny
    policy = HFPolicy(load(), tok)
    principles = [get_principle("bullets").to_principle(), CONCISE]
    held = QUERIES[:3] + [Query("m1", "What is 2 + 3?", None, "2 + 3 = 5\n#### 5")]
    cfg = EvaluationConfig(seeds=[0, 1], sample_answers=1, gsm8k_k=2, judge=JudgeConfig(kind="local"))

    class Sampler:
        temperature, top_p, max_tokens, stop = 1.0, 0.95, 12, []

    reports = []
    for it in (0, 1):
        reports.append(evaluate_iteration(policy, held, principles, cfg, "instruction",
                                          prompt_renderer("instruction", tok), it,
                                          reports[0] if reports else None, 7, Sampler(), judge_policy=policy))
    rep = reports[1]
    assert rep["iteration"] == 1 and rep["n"] == 2 and rep["queries"] == 4
    assert len(rep["mi_bound"]["per_seed"]) == 2 and rep["mi_bound"]["mi_bound"] is not None
    assert len(rep["responses"]) == 4 * 2 * 2
    assert set(rep["verifiable"]) == {"bullets", "concise"}
    assert rep["verifiable"]["bullets"]["positive_n"] == 8
    assert set(rep["degeneration"]["per_constitution"]) == {"+bullets,+concise", "-bullets,-concise"}
    assert rep["degeneration"]["compared_to_base"]
    judge = rep["judge"]
    assert judge["pairs"] == 16 and judge["verdicts"] == 32
    assert judge["unparseable"] + judge["wins"] + judge["losses"] + judge["ties"] == 32
    assert "judge" not in reports[0] or reports[0]["judge"] is None  # no baseline for the base model itself
    assert rep["gsm8k"]["problems"] == 1 and set(rep["gsm8k"]["pass_at"]) == {"1", "2"}
    path = write_report(rep, tmp_path)
    assert json.loads(path.read_text())["iteration"] == 1
    pngs = plot_history(reports, tmp_path)
    assert sorted(p.name for p in pngs) == ["degeneration.png", "mi_bound.png", "verifiable.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    summary = format_summary(reports)
    assert "MI bound" in summary and "bullets +/-" in summary and "sample answers, iteration 1" in summary
