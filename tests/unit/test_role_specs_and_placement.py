"""Per-role specs (model, engine, resources, chat template), custom Ray resources in placement, and the config fields
threaded to where they act (num_principles, sampler.seed, task.max_prompt_tokens). No Ray cluster: Ray's calls are
replaced where a function would make them."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sami_ray.actors import placement
from sami_ray.config import EngineOptions, RoleResources, config_from_dict, load_config
from sami_ray.errors import UserError
from sami_ray.roles import ChatFramed, Roles, engine_roles, role_specs
from sami_ray.sami.constitutions import Constitution, Principle, PrincipleSet
from sami_ray.sami.data import Query, SamiExample
from sami_ray.sami.prompts import chat_tokenizer_for
from sami_ray.sami.sampling import Generation, SamplingSpec

JOBS = Path(__file__).resolve().parents[2] / "jobs"
W2S = JOBS / "weak_to_strong_mixtral.yaml"


# ---------------------------------------------------------------- role specs

def test_role_specs_need_no_ray_and_give_each_role_its_own_engine_and_resources():
    cfg = load_config(W2S, ["models.judge.path=judge", "resources.judge.num_gpus=2", "evaluation.judge.kind=local",
                            "models.judge.engine.gpu_memory_utilization=0.5"])
    specs = role_specs(cfg)
    assert set(specs) == {"policy", "writer", "judge"}
    assert specs["writer"].engine.tensor_parallel_size == 1 and specs["writer"].resources is cfg.resources.writer
    assert specs["judge"].engine.tensor_parallel_size == 2 and specs["judge"].engine.gpu_memory_utilization == 0.5
    assert specs["judge"].resources is cfg.resources.judge and specs["judge"].sampler.replicas == 1
    assert specs["policy"].sampler.replicas == 2 and specs["policy"].engine.enforce_eager is False
    assert specs["writer"].engine.enforce_eager is True  # the sampler's options are not borrowed
    assert [s.name for s in engine_roles(cfg)] == ["policy", "writer", "judge"]


def test_plan_counts_the_engines_the_roles_start():
    from sami_ray.cli.plan import plan_run

    demo = load_config(JOBS / "demo.yaml")  # the writer is the policy's model: it runs on the policy's pool
    assert [s.name for s in engine_roles(demo)] == ["policy"]
    assert "writer" not in {r.role for r in plan_run(demo).roles}
    cfg = load_config(W2S, ["models.judge.path=mistral-7b-judge", "resources.judge.num_gpus=1",
                            "evaluation.judge.kind=local", "resources.gpus_available=17"])
    plan = plan_run(cfg)
    roles = {r.role: r for r in plan.roles}
    assert roles["judge"].gpus == 1 and roles["writer"].detail["tensor_parallel"] == 1
    assert plan.gpus_total == 8 + 1 + 8 and plan.fits  # sampler + judge + max(writer, trainer)


# ---------------------------------------------------------------- custom resources and placement

def test_bundle_asks_for_the_roles_custom_resources():
    assert placement.bundle(RoleResources(num_cpus=8, num_gpus=4, custom={"sami_sampler": 4})) == {
        "CPU": 8.0, "GPU": 4.0, "sami_sampler": 4.0}
    assert placement.bundle(RoleResources(num_cpus=2)) == {"CPU": 2.0}


def test_unplaceable_custom_resource_names_role_resource_and_cluster():
    res = RoleResources(num_cpus=8, num_gpus=1, custom={"sami_trainer": 1})
    cluster = {"CPU": 16.0, "GPU": 8.0, "sami_sampler": 8.0, "node:10.0.0.1": 1.0}
    assert placement.missing_custom(res, cluster, 8) == {"sami_trainer": 8.0}
    assert placement.missing_custom(res, {**cluster, "sami_trainer": 8.0}, 8) == {}
    msg = placement.unplaceable_message("trainer", res, 8, 300, cluster, cluster)
    assert "resources.trainer.custom" in msg and "sami_trainer" in msg and "300 s" in msg
    assert "sami_sampler: 8" in msg and "node:" not in msg  # what the cluster has
    plain = placement.unplaceable_message("sampler", RoleResources(num_cpus=64), 2, 10, cluster, {"CPU": 4.0})
    assert "resources.sampler" in plain and "CPU: 4} free" in plain


def test_reserve_times_out_with_the_custom_resource_named(monkeypatch):
    import importlib

    import ray

    pgmod = importlib.import_module("ray.util.placement_group")  # the module (ray.util names a function so too)
    removed = []
    monkeypatch.setattr(pgmod, "placement_group", lambda bundles, strategy, name: SimpleNamespace(
        ready=lambda: "ref", bundles=bundles))
    monkeypatch.setattr(pgmod, "remove_placement_group", removed.append)
    monkeypatch.setattr(ray, "wait", lambda refs, timeout: ([], refs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    res = RoleResources(num_cpus=4, num_gpus=1, custom={"sami_writer": 1})
    with pytest.raises(UserError, match=r"resources\.writer\.custom asks for sami_writer"):
        placement.reserve("writer", res, 1, name="w", timeout_s=1)
    assert removed and removed[0].bundles == [{"CPU": 4.0, "GPU": 1.0, "sami_writer": 1.0}]
    # The trainer's check before Ray Train: nothing to wait for when the cluster has the resource ...
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "sami_trainer": 8.0})
    placement.require_custom("trainer", RoleResources(custom={"sami_trainer": 1}), 8, timeout_s=1)
    # ... and a UserError naming resources.trainer.custom when no node offers it.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    with pytest.raises(UserError, match=r"resources\.trainer\.custom asks for sami_trainer \(8 in all\)"):
        placement.require_custom("trainer", RoleResources(custom={"sami_trainer": 1}), 8, timeout_s=1)


def test_start_writer_asks_for_custom_resources_and_passes_the_chat_template(monkeypatch):
    import sami_ray.actors.writer as w

    seen = {}

    class FakeActorClass:
        def options(self, **kw):
            seen["options"] = kw
            return SimpleNamespace(remote=lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))

    monkeypatch.setattr(w, "PrincipleWriter", FakeActorClass())
    opts = EngineOptions()
    w.start_writer("/m", opts, RoleResources(num_cpus=4, num_gpus=1, custom={"sami_writer": 1}),
                   chat_template="on")
    assert seen["options"]["resources"] == {"sami_writer": 1}
    assert re.fullmatch(r"sami-writer-[0-9a-f]{6}", seen["options"]["name"])
    assert seen["args"] == ("/m", opts, "vllm", "on", None, None) and seen["kwargs"] == {}


# ---------------------------------------------------------------- chat templates per role

class Tok:
    def __init__(self, template: str | None):
        self.chat_template = template

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_chat_tokenizer_for_follows_the_mode_and_refuses_on_without_a_template():
    with_t, without = Tok("{{x}}"), Tok(None)
    assert chat_tokenizer_for("auto", with_t, "f") is with_t and chat_tokenizer_for("off", with_t, "f") is None
    assert chat_tokenizer_for("auto", without, "f") is None
    with pytest.raises(UserError, match="models.writer.chat_template is 'on'"):
        chat_tokenizer_for("on", without, "models.writer.chat_template")


class Pool:
    def __init__(self):
        self.prompts: list[str] = []
        self.shut = 0

    def generate(self, prompts, spec, seeds=None):
        self.prompts += prompts
        return [[Generation(" Greet the user warmly before answering. | Antithesis: Never greet the user.")]
                for _ in prompts]

    def score(self, prompts, responses):
        return [[0.0] for _ in prompts]

    def shutdown(self):
        self.shut += 1


def _roles(overrides: list[str], toks: dict[str, Tok]) -> Roles:
    roles = Roles(load_config(None, ["models.policy.path=pol", "models.policy.chat_template=off", *overrides]))
    roles.tokenizer_of = lambda role: toks[role]  # type: ignore[method-assign]
    return roles


def test_writer_on_the_policys_pool_uses_the_writer_specs_chat_template_and_num_principles(tmp_path, monkeypatch):
    roles = _roles(["models.writer.path=pol", "models.writer.chat_template=on",
                              "constitutions.num_principles=1"], {"writer": Tok("{{x}}"), "policy": Tok("{{x}}")})
    pool = Pool()
    monkeypatch.setattr(roles, "policy", lambda folder=None: pool)
    pset = roles.write_principles("Answer questions.", [], seed=0)
    assert len(pset.principles) == 1  # constitutions.num_principles, written freely
    assert pool.prompts and pool.prompts[0].startswith("<user>")  # the writer's chat template, not 'off'
    assert "<user>" not in roles.render("Be kind.", "Hi?")  # the policy's own mode: 'off'


def test_local_judge_prompts_go_through_the_judge_models_chat_template(tmp_path, monkeypatch):
    import sami_ray.actors.sampler as sampler_mod
    import sami_ray.roles as roles_mod

    pool = Pool()
    started = {}

    def fake_pool(path, sampler_cfg, resources, runtime_env=None, storage=None, gguf_file=None, role="sampler"):
        started.update(path=path, engine=sampler_cfg.engine, resources=resources)
        return pool

    monkeypatch.setattr(sampler_mod, "SamplerPool", fake_pool)
    monkeypatch.setattr(roles_mod, "ensure_ray", lambda res: None)
    monkeypatch.setattr(roles_mod, "resolve_model_path", lambda path, gguf=None, storage=None: Path(path))
    roles = _roles(["models.judge.path=judge", "evaluation.judge.kind=local",
                              "resources.judge.custom={sami_judge: 1}"], {"judge": Tok("{{x}}")})
    judge = roles.judge()
    assert isinstance(judge, ChatFramed) and started["path"] == "judge"
    assert started["resources"].custom == {"sami_judge": 1}
    judge.generate(["Which is better?"], SamplingSpec())
    assert pool.prompts == ["<user>Which is better?<assistant>"]
    roles.shutdown()
    assert pool.shut == 1
    off = _roles(["models.judge.path=judge", "evaluation.judge.kind=local",
                            "models.judge.chat_template=off"], {})
    assert off.judge() is pool  # 'off': the prompts go as they are


# ---------------------------------------------------------------- fields threaded to where they act

def test_trainer_gets_task_max_prompt_tokens_and_the_worker_cuts_prompts(tmp_path, monkeypatch):
    import sami_ray.train as train_pkg
    from sami_ray.train.worker import _tokenize
    from tests.support.tiny_models import build_tokenizer

    seen = {}

    class Recording:
        def __init__(self, **kw):
            seen.update(kw)

        def train_on(self, examples_path, output_dir):
            seen["examples_path"] = examples_path

        def cancel(self):
            pass

    monkeypatch.setattr(train_pkg, "TrainingLaunch", Recording)
    monkeypatch.setattr("sami_ray.roles.ensure_ray", lambda res: None)
    roles = _roles(["task.max_prompt_tokens=7"], {})
    roles.base_model = lambda: tmp_path  # type: ignore[method-assign]
    roles.train(tmp_path / "ex.jsonl", tmp_path, tmp_path / "out", (None, str(tmp_path / "t")), seed=1)
    assert seen["max_prompt_tokens"] == 7

    build_tokenizer().save_pretrained(tmp_path / "tok")
    cons = [Constitution(f"c{i}", (), t) for i, t in enumerate("tu")]
    row = SamiExample(Query("q", "x"), cons, ["a b", "c d"], ["word " * 50 + "end", "other " * 50 + "end"]).to_dict()
    _, full, ids = _tokenize(str(tmp_path / "tok"), [row], "sami")
    _, cut, _ = _tokenize(str(tmp_path / "tok"), [row], "sami", max_prompt_tokens=7)
    assert ids == ["q"]
    assert all(len(p) > 7 for p in full[0].prompt_ids)
    assert [len(p) for p in cut[0].prompt_ids] == [7, 7] and cut[0].prompt_ids[0] == full[0].prompt_ids[0][-7:]


class _Writing:
    """The roles' write_principles as the stage loop calls it, recording the seeds it is handed."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write_principles(self, description, seeds, seed):
        self.calls.append(list(seeds))
        return PrincipleSet([Principle("kind", "Be kind.", "Be rude.")], source="writer")


def _loop(tmp_path, **sections):
    from sami_ray.stages import StageLoop
    from sami_ray.storage.run import RunStore
    from tests.support.fake_roles import FakeRoles

    data = {"run": {"name": "t", "seed": 3}, "models": {"policy": {"path": "fake-policy"}},
            "task": {"queries": {"source": "builtin:howto", "held_out": 2, "limit": 6}},
            "constitutions": {"n": 2, "mode": "all_or_none"}, "storage": {"uri": str(tmp_path / "runs")},
            **sections}
    cfg = config_from_dict(data)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "cache")
    roles = _Writing(FakeRoles(tmp_path))
    return StageLoop(cfg, store, roles, say=lambda _m: None), roles


def test_a_writer_without_seed_principles_writes_its_own(tmp_path):
    loop, roles = _loop(tmp_path, models={"policy": {"path": "fake-policy"}, "writer": {"path": "w"}},
                        constitutions={"n": 2, "mode": "all_or_none", "num_principles": 1})
    pset = loop.principles()
    assert roles.calls == [[]] and [p.name for p in pset.principles] == ["kind"]


def test_sampler_seed_changes_the_training_samples_seeds(tmp_path):
    seeds = {}
    for s in (0, 1):
        loop, roles = _loop(tmp_path / str(s), constitutions={"builtin": ["bullets"], "n": 2, "mode": "all_or_none",
                                                               "write_with_writer": False},
                            sampler={"seed": s})
        got: list[int] = []
        inner = roles.inner.policy(None)

        class Recording:
            def generate(self, prompts, spec, seeds=None, _inner=inner, _got=got):
                _got.extend(seeds)
                return _inner.generate(prompts, spec, seeds)

        loop.policy = lambda stage, _p=Recording(): _p
        train, _ = loop.queries()
        loop.sample_examples(1, None, train, loop.principles())
        seeds[s] = got
    assert len(seeds[0]) == len(seeds[1]) > 0 and set(seeds[0]).isdisjoint(seeds[1])


def test_a_cpu_replica_needs_a_cpu_per_tensor_parallel_rank():
    from sami_ray.actors.sampler import SamplerError, SamplerPool
    from sami_ray.config import SamplerConfig

    cfg = SamplerConfig(engine={"tensor_parallel_size": 2})
    with pytest.raises(SamplerError, match=r"resources.judge.num_cpus=1(.0)? is less than .*tensor_parallel_size=2"):
        SamplerPool("/m", cfg, RoleResources(num_cpus=1), role="judge")


def test_training_data_follows_the_objective(tmp_path):
    """SAMI trains on the samples; DPO on contrast pairs and SFT on distilled answers made from them, or on the
    user's pairs file."""
    from sami_ray.sami.constitutions import Principle, sample_constitutions
    from sami_ray.sami.data import Query, SamiExample, read_jsonl, save_examples
    from sami_ray.sami.pairs import TextPair, write_pairs
    from sami_ray.sami.prompts import render_prompt

    principles = [Principle("concise", "Be concise.", "Be verbose.")]
    q = Query("q0", "How do I bake bread?")
    cons = sample_constitutions(principles, 2, seed=0, key="q0", mode="all_or_none", first_all_positive=True)
    samples = tmp_path / "examples.jsonl"
    save_examples(samples, [SamiExample(q, cons, ["Knead, bake.", "Well, first of all, bread is..."],
                                        [render_prompt("instruction", c.text, q.text) for c in cons])])

    from transformers import AutoTokenizer

    from tests.support.tiny_models import tiny_model

    tok = AutoTokenizer.from_pretrained(tiny_model(kind="llama"))  # the user's prompts are checked for length

    def data(*overrides):
        roles = _roles(list(overrides), {"policy": tok})
        return roles._training_data(samples, tmp_path / "-".join(overrides).replace("/", "_"))

    assert data() == samples
    (dpo,) = read_jsonl(data("trainer.objective=dpo"))
    assert (dpo["chosen"], dpo["rejected"]) == ("Knead, bake.", "Well, first of all, bread is...")
    (sft,) = read_jsonl(data("trainer.objective=sft"))
    assert sft["completion"] == "Knead, bake." and "concise" not in sft["prompt"]
    user = tmp_path / "prefs.jsonl"
    write_pairs(user, [TextPair("u", "Hi?", "Hello.", "Go away.")])
    (row,) = read_jsonl(data("trainer.objective=dpo", f"trainer.pairs_file={user}"))
    assert row["prompt"] == "Hi?"


def test_the_trainer_starts_early_by_default_only_where_it_does_not_share_the_samplers_cores(monkeypatch):
    """trainer.start_early auto: not on a one-machine Ray that counts more CPUs than the machine has cores (the
    demo's 4 on 2 cores); yes on a cluster of several nodes, or one that counts what it has."""
    import ray

    from sami_ray import roles as roles_module

    here = "10.0.0.1"
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: here)
    monkeypatch.setattr(roles_module.os, "cpu_count", lambda: 2)

    def nodes(*cpus: float, address: str = here):
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeManagerAddress": address,
                                                    "Resources": {"CPU": c}} for c in cpus])

    nodes(4.0)
    assert roles_module._cores_shared()
    nodes(2.0)
    assert not roles_module._cores_shared()
    nodes(4.0, 4.0)
    assert not roles_module._cores_shared()
    nodes(4.0, address="10.0.0.9")  # a one-node cluster elsewhere: its cores are not this machine's
    assert not roles_module._cores_shared()
