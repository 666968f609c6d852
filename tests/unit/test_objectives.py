"""The baselines' pieces: DPO and SFT losses, preference/demonstration readers, pairs from SAMI samples, token
rule, and scoring one prompt x k responses in one forward (against a plain per-sequence computation)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sami_ray.errors import DataError
from sami_ray.sami.constitutions import Constitution, Principle, render, sample_constitutions
from sami_ray.sami.data import Query, SamiExample, read_jsonl
from sami_ray.sami.loss import IGNORE_INDEX, dpo_loss, dpo_stats, sft_loss, token_logprobs
from sami_ray.sami.pairs import (
    TextPair,
    TokenizedPair,
    contrast_pairs,
    distillation_pairs,
    plain_renderer,
    read_demonstrations,
    read_preferences,
    split_shared_prefix,
    tokenize_pair,
    write_pairs,
)
from sami_ray.sami.prompts import render_prompt
from sami_ray.sami.tokens import encode_prompt, encode_response
from sami_ray.train.step import (
    ResponseScorer,
    dpo_objective,
    reference_logps,
    score_responses,
    sft_objective,
)
from tests.support.tiny_models import tiny_model

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "preferences"
HH_GZ = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "hh_rlhf" / "train.jsonl.gz"


# ---------------------------------------------------------------- losses

def test_dpo_loss_matches_a_hand_computed_value():
    # pair 1: log-ratios 0.5 (chosen) and -0.5 (rejected) -> logit 1.0; pair 2: 0 and 0 -> logit 0
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -4.0])
    rc, rr = torch.tensor([-1.5, -3.0]), torch.tensor([-1.5, -4.0])
    beta = 0.5
    want = (math.log1p(math.exp(-0.5)) + math.log(2.0)) / 2  # -log sigmoid(beta * logit), averaged
    assert float(dpo_loss(pc, pr, rc, rr, beta)) == pytest.approx(want, rel=1e-6)
    stats = dpo_stats(pc, pr, rc, rr, beta)
    assert stats["chosen_reward"] == pytest.approx(0.5 * (0.5 + 0.0) / 2)
    assert stats["rejected_reward"] == pytest.approx(0.5 * (-0.5 + 0.0) / 2)
    assert stats["reward_margin"] == pytest.approx(0.25)
    assert stats["reward_accuracy"] == pytest.approx(0.5)  # pair 2 ties: not counted as right
    assert stats["chosen_logps"] == pytest.approx(-2.0) and stats["rejected_logps"] == pytest.approx(-3.0)


def test_dpo_gradient_raising_chosen_lowers_the_loss():
    pc = torch.tensor([-5.0, -2.0], requires_grad=True)
    pr = torch.tensor([-4.0, -2.5], requires_grad=True)
    rc, rr = torch.tensor([-4.5, -2.0]), torch.tensor([-4.5, -2.0])
    loss = dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    with torch.no_grad():
        assert dpo_loss(pc + 0.5, pr, rc, rr, beta=0.1) < loss
        assert dpo_loss(pc, pr + 0.5, rc, rr, beta=0.1) > loss
    ref = torch.tensor([-4.5, -2.0], requires_grad=True)  # the reference is frozen: no gradient reaches it
    assert not dpo_loss(pc.detach(), pr.detach(), ref, rr, beta=0.1).requires_grad


def test_dpo_needs_a_positive_beta():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta > 0"):
        dpo_loss(x, x, x, x, beta=0.0)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_sft_loss_is_torch_cross_entropy_on_response_tokens(tiny):
    model, _ = tiny
    rng = random.Random(1)
    vocab = model.config.vocab_size
    seqs = [[rng.randrange(4, vocab) for _ in range(n)] for n in (12, 9)]
    prompt_lens = (5, 7)
    length = max(map(len, seqs))
    ids = torch.full((2, length), 3)
    labels = torch.full((2, length), IGNORE_INDEX)
    for b, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        ids[b, :len(s)] = torch.tensor(s)
        labels[b, p - 1:len(s) - 1] = torch.tensor(s[p:])  # position t predicts token t+1; responses only
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    want = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    got = sft_loss(token_logprobs(logits, labels), labels)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- scoring one prompt x k responses

def _plain_logps(model, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt) from one unpadded forward over prompt + response."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(lp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response))


def _items(vocab: int, rows: int, k: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def seq(lo: int, hi: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(seq(3, 11), seq(1, 8) + [2], (seq(0, 8) + [2]) if k == 2 else None) for _ in range(rows)]


@pytest.mark.parametrize("impl", ["shared_prefix", "reference"])
@pytest.mark.parametrize("k", [1, 2])
def test_score_responses_matches_per_sequence_logprobs(tiny, impl, k):
    model, _ = tiny
    items = _items(model.config.vocab_size, rows=3, k=k)
    scorer = ResponseScorer(model, impl, chunk_size=5, pad_token_id=3)
    with torch.no_grad():
        got = score_responses(scorer, items)
    assert got.summed.shape == (3, k)
    for r, it in enumerate(items):
        for j, resp in enumerate(it.responses):
            want = _plain_logps(model, it.prompt_ids, resp)
            assert float(got.summed[r, j]) == pytest.approx(want, rel=1e-5, abs=1e-5)
            assert float(got.mean[r, j]) == pytest.approx(want / len(resp), rel=1e-5, abs=1e-5)
            assert int(got.tokens[r, j]) == len(resp)


def test_chosen_and_rejected_are_scored_in_one_forward_with_the_prompt_once(tiny):
    model, _ = tiny
    items = _items(model.config.vocab_size, rows=2, k=2, seed=3)
    calls = []
    hook = model.base_model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                                  with_kwargs=True)
    try:
        with torch.no_grad():
            score_responses(model, items)  # a bare model is wrapped in a shared-prefix scorer
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 2  # one forward, one row per prompt
    longest = max(len(it.prompt_ids) + sum(len(r) - 1 for r in it.responses) for it in items)
    assert calls[0][1] == longest


def test_dpo_and_sft_objectives_agree_across_layouts_and_with_the_plain_losses(tiny):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model(), dtype=torch.float32)
    with torch.no_grad():  # a policy that differs from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    ref_model, _ = tiny
    pairs = _items(policy.config.vocab_size, rows=3, k=2, seed=5)
    ref = reference_logps(ResponseScorer(ref_model, pad_token_id=3), pairs, micro_batch=2)
    outs, grads = {}, {}
    for impl in ("shared_prefix", "reference"):
        policy.zero_grad(set_to_none=True)
        out = dpo_objective(ResponseScorer(policy, impl, chunk_size=4, pad_token_id=3)(pairs), ref, beta=0.1)
        out.loss.backward()
        outs[impl] = out
        grads[impl] = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}
    a, b = outs["shared_prefix"], outs["reference"]
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    assert a.input_tokens < b.input_tokens and a.response_tokens == b.response_tokens
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["shared_prefix"][name], g, rtol=1e-4, atol=1e-6)
    plain = torch.tensor([[_plain_logps(policy, it.prompt_ids, r) for r in it.responses] for it in pairs])
    plain_ref = torch.tensor([[_plain_logps(ref_model, it.prompt_ids, r) for r in it.responses] for it in pairs])
    want = dpo_loss(plain[:, 0], plain[:, 1], plain_ref[:, 0], plain_ref[:, 1], 0.1)
    assert a.stats["dpo_loss"] == pytest.approx(float(want), rel=1e-5)
    assert set(a.stats) >= {"reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"}

    singles = [TokenizedPair(it.prompt_ids, it.chosen_ids) for it in pairs]
    with torch.no_grad():
        sft = sft_objective(ResponseScorer(policy, pad_token_id=3)(singles))
    tokens = sum(len(it.chosen_ids) for it in singles)
    want_sft = -sum(_plain_logps(policy, it.prompt_ids, it.chosen_ids) for it in singles) / tokens
    assert sft.stats["sft_loss"] == pytest.approx(want_sft, rel=1e-5)
    assert sft.response_tokens == tokens


def test_reference_logps_are_cached_per_item_and_pad_forwards_for_zero3(tiny):
    model, _ = tiny
    items = _items(model.config.vocab_size, rows=3, k=2, seed=7)
    scorer = ResponseScorer(model, pad_token_id=3)
    calls = []
    hook = scorer.register_forward_hook(lambda m, a, out: calls.append(len(a[0])))
    try:
        cached = reference_logps(scorer, items, micro_batch=2, min_batches=4)
    finally:
        hook.remove()
    assert calls == [2, 1, 1, 1]  # two real batches, then repeats so every rank runs as many forwards
    assert cached.shape == (3, 2) and cached.dtype == torch.float32 and not cached.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(cached, score_responses(scorer, items).summed)


# ---------------------------------------------------------------- readers

def test_reads_trl_preferences():
    got = read_preferences(FIX / "trl.jsonl")
    assert got.skipped == 0 and [p.id for p in got.pairs] == ["p1", "p2", "3"]
    assert got.pairs[0] == TextPair("p1", "How do I keep bread fresh?", " Wrap it in a cloth and keep it in a bread "
                                    "box.", " Bread.")


def test_hh_rlhf_transcripts_give_their_shared_beginning_as_prompt():
    rows = [json.loads(line) for line in (FIX / "hh_rlhf.jsonl").read_text().splitlines()]
    got = read_preferences(FIX / "hh_rlhf.jsonl").pairs
    assert len(got) == 2
    for pair, row in zip(got, rows, strict=True):
        assert pair.prompt.endswith("\n\nAssistant:")
        assert pair.prompt + pair.chosen == row["chosen"] and pair.prompt + pair.rejected == row["rejected"]
    assert got[0].chosen == " Soak the soil, then let it dry out fully before watering again."
    assert "Mysteries." in got[1].prompt and got[1].rejected == " Try the phone book."
    assert len(read_preferences(HH_GZ).pairs) == 3  # the hub's gzipped layout


def test_split_shared_prefix_without_turn_markers_cuts_between_words():
    assert split_shared_prefix("Q: name a fruit. Apple", "Q: name a fruit. Apricot") == \
        ("Q: name a fruit.", " Apple", " Apricot")


def test_reads_demonstrations_and_the_pair_layout_round_trips(tmp_path):
    demos = read_demonstrations(FIX / "demonstrations.jsonl").pairs
    assert [(d.id, d.rejected) for d in demos] == [("d1", None), ("d2", None)]
    prefs = read_preferences(FIX / "trl.jsonl").pairs
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(path, demos + prefs) == 5
    rows = list(read_jsonl(path))
    assert set(rows[0]) == {"id", "prompt", "completion"} and set(rows[2]) == {"id", "prompt", "chosen", "rejected"}
    assert [TextPair.from_dict(r) for r in rows] == demos + prefs
    assert read_preferences(path, skip_bad=True).skipped == 2  # demonstration rows are not preferences


@pytest.mark.parametrize(("name", "line", "why", "kept"), [
    ("bad_missing_field.jsonl", 2, "missing field 'rejected'", 2),
    ("bad_empty_chosen.jsonl", 3, "chosen is empty", 2),
    ("bad_identical.jsonl", 1, "chosen and rejected are identical", 1),
])
def test_bad_preference_rows_raise_or_are_counted(name, line, why, kept):
    with pytest.raises(DataError) as e:
        read_preferences(FIX / name)
    assert f"{FIX / name}, line {line}: {why}" in str(e.value)
    got = read_preferences(FIX / name, skip_bad=True)
    assert (got.skipped, len(got.pairs)) == (1, kept)
    assert got.problems[0].startswith(f"{FIX / name}, line {line}: {why}")


def test_a_prompt_over_max_prompt_tokens_is_a_bad_row(tiny):
    _, tokenizer = tiny
    path = FIX / "bad_long_prompt.jsonl"
    assert len(read_preferences(path).pairs) == 2  # no limit, no check
    with pytest.raises(DataError, match=r"bad_long_prompt.jsonl, line 2: the prompt is \d+ tokens, over "
                                        r"max_prompt_tokens = 64"):
        read_preferences(path, tokenizer=tokenizer, max_prompt_tokens=64)
    got = read_preferences(path, tokenizer=tokenizer, max_prompt_tokens=64, skip_bad=True)
    assert (got.skipped, [p.id for p in got.pairs]) == (1, ["p1"])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        read_preferences(path, max_prompt_tokens=64)


def test_bad_demonstration_rows_and_files_with_nothing_usable(tmp_path):
    path = FIX / "bad_missing_completion.jsonl"
    with pytest.raises(DataError, match=r"line 2: missing field 'completion' \(a demonstration row needs"):
        read_demonstrations(path)
    assert read_demonstrations(path, skip_bad=True).skipped == 1
    with pytest.raises(DataError, match="no usable preference rows; 2 bad row"):
        read_preferences(path, skip_bad=True)  # skipping every row is still no data
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        read_preferences(broken, skip_bad=True)  # a damaged file is never half-read
    with pytest.raises(DataError, match="no such file"):
        read_preferences(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- pairs from a run's own samples

PRINCIPLES = [Principle("concise", "Be concise.", "Be verbose."), Principle("polite", "Be polite.", "Be rude.")]


def _example(qid: str, mode: str, n: int, responses: list[str], first_all_positive: bool = True) -> SamiExample:
    q = Query(qid, f"Question {qid}?")
    cons = sample_constitutions(PRINCIPLES, n, seed=0, key=qid, mode=mode, first_all_positive=first_all_positive)
    prompts = [render_prompt("instruction", c.text, q.text) for c in cons]
    return SamiExample(q, cons, responses, prompts)


def test_contrast_pairs_prefer_the_answer_under_the_principles():
    ex = _example("a", "all_or_none", 2, ["Short and kind.", "Long and rude."])
    ex = SamiExample(ex.query, ex.constitutions[::-1], ex.responses[::-1], ex.prompts[::-1])  # order is no signal
    flips = _example("b", "flip_one", 3, ["Good.", "Bad one.", "Bad two."])
    got = contrast_pairs([ex, flips])
    assert got.skipped == 0 and len(got.pairs) == 3
    first = got.pairs[0]
    assert (first.chosen, first.rejected) == ("Short and kind.", "Long and rude.")
    assert first.prompt == ex.prompts[1] and "Be concise." in first.prompt  # the prompt chosen was sampled under
    assert first.id == "a:-concise,-polite"
    assert [(p.chosen, p.rejected) for p in got.pairs[1:]] == [("Good.", "Bad one."), ("Good.", "Bad two.")]
    plain = contrast_pairs([ex], render=plain_renderer("instruction"))
    assert plain.pairs[0].prompt == "Human: Question a?\n\nAssistant:"


def test_contrast_pairs_skip_what_cannot_be_contrasted():
    same = _example("s", "all_or_none", 2, ["Same.", "Same."])
    q = Query("n", "Question n?")
    mixed = [render(PRINCIPLES, {"concise": True, "polite": False}, [0, 1]),
             render(PRINCIPLES, {"concise": False, "polite": True}, [1, 0])]
    no_positive = SamiExample(q, mixed, ["x", "y"], [render_prompt("instruction", c.text, q.text) for c in mixed])
    unknown = SamiExample(Query("u", "?"), [Constitution(f"reference-{i}", (), "") for i in range(2)], ["a", "b"],
                          ["p0", "p1"])  # a reference file's example: the signs are unknown
    keep = _example("k", "all_or_none", 2, ["Fine.", "Awful."])
    got = contrast_pairs([same, no_positive, unknown, keep])
    assert [p.id for p in got.pairs] == ["k:-concise,-polite"]
    assert got.skipped == 3
    assert any("same as under the principles" in p for p in got.problems)
    assert sum("no constitution states every principle" in p for p in got.problems) == 2
    assert distillation_pairs([no_positive, unknown, keep], plain_renderer("instruction")).skipped == 2


def test_distillation_pairs_drop_the_constitution_from_the_prompt(tiny):
    _, tokenizer = tiny
    ex = _example("d", "all_or_none", 2, ["Brief, kind answer.", "Rambling rude answer."])
    base = distillation_pairs([ex], plain_renderer("instruction")).pairs
    assert base == [TextPair("d", "Human: Question d?\n\nAssistant:", "Brief, kind answer.")]
    chat = distillation_pairs([ex], plain_renderer("instruction", tokenizer)).pairs[0]
    assert chat.prompt == "<|user|>\nQuestion d?</s>\n<|assistant|>\n"
    summary = plain_renderer("summarization")("A post.")
    assert summary == "POST: A post.\n\nSummarize the post above.\n\nSummary:"
    for prompt in (base[0].prompt, chat.prompt, summary):
        assert "principles" not in prompt and "Be concise" not in prompt


# ---------------------------------------------------------------- tokens

def test_tokenize_pair_follows_the_token_rule(tiny):
    _, tokenizer = tiny
    pair = TextPair("p", "How do I bake bread?", " Knead, rise, bake.", " No idea.")
    tok = tokenize_pair(tokenizer, pair)
    eos = tokenizer.eos_token_id
    assert tok.prompt_ids == encode_prompt(tokenizer, pair.prompt)
    assert tok.chosen_ids == encode_response(tokenizer, pair.chosen) + [eos]
    assert tok.rejected_ids == encode_response(tokenizer, pair.rejected) + [eos]
    assert tok.responses == [tok.chosen_ids, tok.rejected_ids]
    short = tokenize_pair(tokenizer, TextPair("d", pair.prompt, pair.chosen), max_prompt_tokens=3,
                          max_response_tokens=2)
    assert short.prompt_ids == tok.prompt_ids[-3:] and short.chosen_ids == tok.chosen_ids[:2] + [eos]
    assert short.rejected_ids is None and short.responses == [short.chosen_ids]
