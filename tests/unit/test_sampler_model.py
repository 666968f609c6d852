"""models.sampler: a model other than the policy samples the training data (the multi-task paper's instruct model
for a base policy). Its role spec and plan row, the samples stage choosing it in every iteration while evaluation
sees the policy, and the one sampler pool taking turns between the two models. No Ray: the pool is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from sami_ray.cli.plan import plan_run
from sami_ray.config import config_from_dict, load_config
from sami_ray.roles import Roles, engine_roles, role_specs
from sami_ray.sami.data import load_examples
from sami_ray.stages import StageLoop
from sami_ray.storage.run import RunStore, stage_key
from tests.support.fake_roles import FakePolicy, FakeRoles

JOBS = Path(__file__).resolve().parents[2] / "jobs"
TLDR = JOBS / "tldr_mistral7b.yaml"
INSTRUCT = ["models.sampler.path=mistralai/Mistral-7B-Instruct-v0.2", "models.sampler.params_b=7.24",
            "models.sampler.chat_template=on", "models.sampler.max_model_len=8192"]


def test_the_sampler_model_takes_the_policys_pool_place_with_its_own_model_settings():
    cfg = load_config(TLDR, INSTRUCT)
    specs = role_specs(cfg)
    s, p = specs["sampler"], specs["policy"]
    assert s.model.path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert s.resources is cfg.resources.sampler and s.sampler.replicas == p.sampler.replicas == 2
    # the policy's engine options (CUDA graphs, memory share, dtype), with this model's own context length
    assert s.engine.enforce_eager is False and s.engine.gpu_memory_utilization == p.engine.gpu_memory_utilization
    assert s.engine.dtype == "bfloat16" and s.engine.max_model_len == 8192 and p.engine.max_model_len == 4096
    # the tldr writer is this same instruct model: it writes on the sampler model's pool, no third engine
    assert [r.name for r in engine_roles(cfg)] == ["policy", "sampler"]
    assert [r.name for r in engine_roles(load_config(TLDR))] == ["policy", "writer"]


def test_plan_counts_the_sampler_models_memory_on_the_pools_gpus():
    base = plan_run(load_config(TLDR))
    plan = plan_run(load_config(TLDR, INSTRUCT))
    rows = {r.role: r for r in plan.roles}
    assert rows["datagen"].gpus == rows["sampler"].gpus == 2  # the same two GPUs, in turn
    assert rows["datagen"].detail["weights_gb_per_gpu"] == pytest.approx(7.24e9 * 2 / 1024 ** 3, abs=0.1)
    assert plan.gpus_total == base.gpus_total and plan.fits and "writer" not in rows  # it writes on datagen's pool
    big = plan_run(load_config(TLDR, INSTRUCT + ["models.sampler.params_b=70"]))
    assert any(p.startswith("datagen:") and "models.sampler.engine.tensor_parallel_size" in p
               for p in big.problems), big.problems


def test_a_sampler_model_that_is_the_policy_adds_no_engine():
    cfg = load_config(JOBS / "demo.yaml", ["models.sampler.path=builtin:smollm2-135m-instruct"])
    assert [r.name for r in engine_roles(cfg)] == ["policy"]


# ---------------------------------------------------------------- the samples stage

class WithSamplerModel(FakeRoles):
    """Fake roles whose sampler model answers as 'generation 99' and frames its prompts its own way."""

    def __init__(self, root):
        super().__init__(root)
        self.sampler_calls = 0

    def render(self, constitution, query, role="policy"):
        frame = "<inst>" if role == "sampler" else ""
        return f"{frame}{constitution}\nQUERY: {query}"

    def sampler(self):
        self.sampler_calls += 1
        roles = self

        class Asked(FakePolicy):
            def generate(self, prompts, spec, seeds=None):
                assert all(p.startswith("<inst>") for p in prompts)  # framed for the sampler model
                roles.generated += len(prompts)
                return super().generate(prompts, spec, seeds)

        return Asked(99, False)


def test_every_iteration_samples_with_the_sampler_model_and_trains_on_the_policys_prompts(tmp_path):
    cfg = config_from_dict({
        "run": {"name": "s", "iterations": 2, "seed": 2},
        "models": {"policy": {"path": "fake-policy"}, "sampler": {"path": "fake-instruct"}},
        "task": {"queries": {"source": "builtin:howto", "held_out": 4, "limit": 12}},
        "constitutions": {"builtin": ["bullets", "concise"], "write_with_writer": False, "n": 2,
                          "mode": "all_or_none"},
        "evaluation": {"plots": False, "on_degeneration": "warn"},
        "storage": {"uri": str(tmp_path / "runs")},
    })
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c")
    roles = WithSamplerModel(tmp_path)
    StageLoop(cfg, store, roles, say=lambda _m: None).execute()
    assert roles.sampler_calls == 2 and roles.trained == [1, 2]
    assert roles.loaded == [0, 1, 2]  # the policy pool served only the evaluations: base, iteration 1, iteration 2
    for k in (1, 2):
        examples = load_examples(store.fetch(stage_key(k, "samples")) / "examples.jsonl")
        assert examples and all("generation 99" in r for e in examples for r in e.responses)
        assert all(not p.startswith("<inst>") for e in examples for p in e.prompts)  # the policy's prompts
        assert store.store.read_manifest(stage_key(k, "samples")).meta["sampled_with"] == "fake-instruct"


# ---------------------------------------------------------------- the pool taking turns

class Pool:
    def __init__(self, path):
        self.path, self.loads, self.shut = path, [], 0

    def load_weights(self, ref):
        self.loads.append(ref)
        return [1]

    def shutdown(self):
        self.shut += 1


def test_the_pool_restarts_on_the_other_model_and_syncs_weights_within_one(monkeypatch):
    import sami_ray.actors.sampler as sampler_mod
    import sami_ray.roles as roles_mod

    started = []

    def fake_pool(path, sampler_cfg, resources, runtime_env=None, storage=None, gguf_file=None, role="sampler"):
        started.append((path, sampler_cfg.engine.max_model_len))
        return Pool(path)

    monkeypatch.setattr(sampler_mod, "SamplerPool", fake_pool)
    monkeypatch.setattr(roles_mod, "ensure_ray", lambda res: None)
    roles = Roles(config_from_dict({"models": {"policy": {"path": "base", "max_model_len": 512},
                                               "sampler": {"path": "instruct", "max_model_len": 1024}}}))
    evaluated = roles.policy(None)
    sampling = roles.sampler()
    assert evaluated.shut == 1 and started == [("base", 512), ("instruct", 1024)]
    assert roles.sampler() is sampling and len(started) == 2  # kept while it serves the sampler model
    trained = roles.policy("iter-0001/model")
    assert sampling.shut == 1 and started[-1] == ("iter-0001/model", 512) and trained.loads == []
    roles.policy("iter-0002/model")
    assert trained.loads == ["iter-0002/model"]  # within the policy: weights synced, no restart
    roles.shutdown()
    assert trained.shut == 1
    same = Roles(config_from_dict({"models": {"policy": {"path": "base"}, "sampler": {"path": "base"}}}))
    assert same.sampler() is same.policy(None)  # the policy's base model samples: its own pool, no restart
