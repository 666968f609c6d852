"""`plan`'s count of the trainer's memory (the figures are measured against DeepSpeed in
tests/integration/test_plan_memory.py), the master-precision setting end to end (config, DeepSpeed config), and
`plan --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_ray.cli.plan import GIB, MODEL_STATES, plan_run, trainer_memory
from sami_ray.config import TrainerConfig, load_config
from sami_ray.errors import ConfigError
from sami_ray.train.ds_config import build_ds_config, inference_ds_config

JOBS = Path(__file__).resolve().parents[2] / "jobs"
W2S = JOBS / "weak_to_strong_mixtral.yaml"


@pytest.mark.parametrize(("dtype", "master", "optimizer", "per_param"), [
    ("float32", "float32", "adamw", 20.0), ("float32", "float32", "rmsprop", 16.0),
    ("bfloat16", "float32", "adamw", 16.0), ("bfloat16", "float32", "rmsprop", 12.0),
    ("bfloat16", "bfloat16", "adamw", 10.0), ("bfloat16", "bfloat16", "rmsprop", 8.0)])
def test_zero3_bytes_per_param(dtype, master, optimizer, per_param):
    """weights + grads + DeepSpeed's own master copy + states in the master's precision."""
    cfg = TrainerConfig(dtype=dtype, master_weights=master, optimizer=optimizer, num_workers=8)
    mem = trainer_memory(cfg, 8e9)
    assert mem.bytes_per_param == per_param
    states = sum(v for k, v in mem.gpu.items() if k in MODEL_STATES and k != "step_buffer")
    assert states == pytest.approx(per_param * 1e9)  # split over 8 workers


def test_mixtral_on_8_gpus_holds_twice_what_plan_used_to_say():
    """The issue's figure: bf16 + RMSprop with DeepSpeed's default fp32 master weights, 46.7B parameters, 8 GPUs."""
    cfg = load_config(W2S, ["trainer.master_weights=float32", "trainer.offload_params=false"])
    trainer = next(r for r in plan_run(cfg).roles if r.role == "trainer")
    states = sum(v for k, v in trainer.components_gb.items() if k in MODEL_STATES and k != "step_buffer")
    assert states == pytest.approx(46.7e9 * 12 / 8 / GIB, abs=0.2) and 64 < states < 66
    assert not trainer.fits and not plan_run(cfg).fits


def test_offload_moves_the_counted_states_to_cpu_memory():
    base = dict(dtype="bfloat16", optimizer="adamw", num_workers=8)
    opt = trainer_memory(TrainerConfig(**base, offload_optimizer=True), 8e9)
    assert set(opt.host) == {"grads", "master", "optimizer_states", "master_grads"}
    assert opt.gpu["weights"] == 2e9 and "step_buffer" not in opt.gpu
    params = trainer_memory(TrainerConfig(**base, offload_params=True), 8e9)
    assert set(params.host) == {"weights"} and params.gpu["step_buffer"] == 4e9  # one sub-group of 1e9 in fp32
    ref = trainer_memory(TrainerConfig(**base, beta=0.1), 8e9)
    assert ref.gpu["reference"] == 2e9


@pytest.mark.parametrize(("override", "words"), [
    ("trainer.dtype=float32", "needs dtype = 'bfloat16'"),
    ("trainer.zero_stage=0", "needs zero_stage 1, 2 or 3"),
    ("trainer.offload_optimizer=true", "cannot be combined with offload_optimizer"),
])
def test_impossible_master_weights_name_the_fields(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(JOBS / "tldr_mistral7b.yaml", [override])
    assert "trainer: master_weights = 'bfloat16'" in str(err.value) and words in str(err.value)


def test_ds_config_sets_deepspeeds_bf16_master_options():
    mixed = build_ds_config(TrainerConfig(dtype="bfloat16"), world_size=2)
    assert mixed["bf16"] == {"enabled": True}  # DeepSpeed's default: fp32 master weights and states
    pure = build_ds_config(TrainerConfig(dtype="bfloat16", master_weights="bfloat16"), world_size=2)
    assert pure["bf16"] == {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    assert inference_ds_config(pure)["bf16"] == {"enabled": True}  # no optimizer, no master weights
    zero = pure["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["sub_group_size"]) == (500_000_000, 1_000_000_000)  # what plan counts


def test_plan_json_gives_each_roles_gpus_components_and_fit():
    from typer.testing import CliRunner

    from sami_ray.cli import app

    out = CliRunner().invoke(app, ["plan", str(W2S), "--json"])
    assert out.exit_code == 0, out.output
    roles = {r["role"]: r for r in json.loads(out.output)["roles"]}
    assert set(roles) == {"sampler", "writer", "trainer"}
    for r in roles.values():
        assert r["gpus"] > 0 and r["fits"] is True
        assert sum(r["components_gb"].values()) == pytest.approx(r["per_gpu_gb"], abs=0.5)
    trainer = roles["trainer"]
    assert {"grads", "master", "optimizer_states", "step_buffer", "reduce_bucket", "gathered_layer",
            "activations"} <= set(trainer["components_gb"])
    assert trainer["detail"]["cpu_components_gb"] == {"weights": pytest.approx(46.7e9 * 2 / 8 / GIB, abs=0.1)}
    assert set(roles["sampler"]["components_gb"]) == {"weights", "kv_cache"}
    bad = CliRunner().invoke(app, ["plan", str(W2S), "trainer.offload_params=false", "--json"])
    assert bad.exit_code == 1
    plan = json.loads(bad.output)
    trainer = next(r for r in plan["roles"] if r["role"] == "trainer")
    assert trainer["fits"] is False and any("trainer.offload_params" in p for p in plan["problems"])
