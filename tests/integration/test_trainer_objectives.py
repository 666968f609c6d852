"""The baselines on the same worker group as SAMI: DPO and SFT each lower their own loss on a tiny real model under
ZeRO-3 with 2 workers (gloo), and DPO resumes from its checkpoint after a worker is killed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_ray.config import RoleResources, TrainerConfig
from sami_ray.sami.pairs import TextPair, write_pairs
from sami_ray.train import train
from tests.support.tiny_models import tiny_model

pytestmark = pytest.mark.timeout(900)

QUERIES = ["How do I bake bread?", "How can I fix a bike tire?", "How do I boil an egg?", "How do I sew a button?"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("objectives")


@pytest.fixture(scope="module")
def fault_marker(workdir) -> Path:
    marker = workdir / "fault-done"
    marker.write_text("disabled until a test removes it\n")
    return marker


@pytest.fixture(scope="module")
def ray_cluster(workdir, fault_marker):
    import ray

    env = {"DS_ACCELERATOR": "cpu", "DEEPSPEED_TIMEOUT": "1", "TORCH_EXTENSIONS_DIR": str(workdir / "ext"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "SAMI_RAY_TEST_FAULTS": json.dumps({"train_exit": {"rank": 1, "step": 3, "marker": str(fault_marker),
                                                            "delay_s": 3}})}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model(kind="llama")


def _prompt(model_dir: Path, query: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok.apply_chat_template([{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def preferences(workdir, model_dir) -> Path:
    rows = [TextPair(f"p{k}", _prompt(model_dir, q), "- step one\n- step two", "Well, it is a long story really.")
            for k, q in enumerate(QUERIES)]
    path = workdir / "preferences.jsonl"
    write_pairs(path, rows)
    return path


@pytest.fixture(scope="module")
def demonstrations(workdir, model_dir) -> Path:
    rows = [TextPair(f"d{k}", _prompt(model_dir, q), "- step one\n- step two") for k, q in enumerate(QUERIES)]
    path = workdir / "demonstrations.jsonl"
    write_pairs(path, rows)
    return path


def _cfg(**kw) -> TrainerConfig:
    base = dict(num_workers=2, zero_stage=3, lr=1e-3, report_every=1, checkpoint_every=100, max_steps=6,
                epochs=100, collective_timeout_min=1, max_failures=0)
    return TrainerConfig(**{**base, **kw})


def _train(workdir, model_dir, data, name, cfg):
    return train(examples_path=str(data), init_model_path=str(model_dir), ref_model_path=None, trainer_cfg=cfg,
                 output_dir=str(workdir / name / "model"), storage_path=str(workdir / "storage"), run_name=name,
                 resources=RoleResources(num_cpus=1), seed=0)


@pytest.mark.parametrize("objective, loss_key", [("dpo", "dpo_loss"), ("sft", "sft_loss")])
def test_objective_lowers_its_own_loss(ray_cluster, workdir, model_dir, preferences, demonstrations, objective,
                                       loss_key):
    data = preferences if objective == "dpo" else demonstrations
    result = _train(workdir, model_dir, data, objective, _cfg(objective=objective))
    losses = [m[loss_key] for m in result.metrics if loss_key in m]
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.8, losses
    assert result.summary["objective"] == objective and result.summary["steps"] == 6
    assert (Path(result.model_dir) / "model.safetensors").exists()
    if objective == "dpo":
        first = next(m for m in result.metrics if "reward_margin" in m)
        assert abs(first["reward_margin"]) < 1e-3  # step 1 runs on the reference's own weights
        assert result.metrics[-1]["reward_accuracy"] == 1.0


def test_dpo_resumes_after_a_worker_kill(ray_cluster, workdir, model_dir, preferences, fault_marker):
    fault_marker.unlink()  # arm the hook: rank 1 exits once, right after step 3
    result = _train(workdir, model_dir, preferences, "dpo-killed",
                    _cfg(objective="dpo", checkpoint_every=2, max_failures=1))
    assert fault_marker.exists(), "the fault hook never fired; the test proves nothing"
    assert result.summary["resumed_from"] == 2 and result.summary["steps"] == 6
    assert [m["step"] for m in result.metrics] == [1, 2, 3, 4, 5, 6]
