"""`plan` counts what DeepSpeed really allocates for the trainer's model states.

One child process (world size 1, gloo, DS_ACCELERATOR=cpu) builds the trainer's engines with the worker's own code
(`worker._build_engines`: build_ds_config, the partitioned load, torch optimizers handed to deepspeed.initialize)
for every precision x optimizer x ZeRO stage that TrainerConfig accepts, and the offload variants; it takes one
optimizer step on a tiny Llama and measures the tensor storages alive that were not alive before the engines were
built: at the inner optimizer's step (the peak: gradients and, under ZeRO-3, the step's gradient copy are alive)
and after the step. The gradient reduce bucket (a fixed-size buffer, mostly untouched virtual memory) is measured
apart. The measured bytes must be within 15% of plan's figure.

DeepSpeed's own estimator (estimate_zero3_model_states_mem_needs) models only ZeRO-3 with 16-bit parameters, fp32
master weights and Adam's two fp32 moments (18 bytes/param on the GPU without offload; 2 with offload_optimizer;
none with both offloads; 16 and 18 bytes/param in CPU memory with those offloads): plan must agree with it there.
It does not model RMSprop, fp32 training, bf16 master weights nor DeepSpeed's fixed buffers.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from sami_ray.cli.plan import MODEL_STATES, trainer_memory
from sami_ray.config import TrainerConfig
from sami_ray.train.ds_config import REDUCE_BUCKET_ELEMENTS

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 0.15


def _cases() -> dict[str, dict]:
    """ZeRO-3 with every precision x optimizer TrainerConfig accepts, with the offloads and a reference model; stages
    2 and 0 at each precision (stage 1 allocates what stage 2 does on one worker: they differ only in splitting)."""
    precisions = {"fp32": dict(dtype="float32"), "bf16": dict(dtype="bfloat16"),
                  "bf16-pure": dict(dtype="bfloat16", master_weights="bfloat16")}
    cases = {f"z3-{name}-{opt}": dict(zero_stage=3, optimizer=opt, **kw)
             for name, kw in precisions.items() for opt in ("adamw", "rmsprop")}
    cases.update({f"z2-{name}-adamw": dict(zero_stage=2, optimizer="adamw", **kw) for name, kw in precisions.items()})
    cases.update({"z0-fp32-adamw": dict(zero_stage=0, optimizer="adamw", dtype="float32"),
                  "z0-bf16-rmsprop": dict(zero_stage=0, optimizer="rmsprop", dtype="bfloat16")})
    z3 = dict(zero_stage=3, dtype="bfloat16", optimizer="rmsprop")
    cases.update({
        "z3-bf16-adamw-offload_optimizer": dict(z3, optimizer="adamw", offload_optimizer=True),
        "z3-bf16-rmsprop-offload_params": dict(z3, offload_params=True),
        "z3-bf16-rmsprop-offload_both": dict(z3, offload_params=True, offload_optimizer=True),
        "z3-bf16-pure-rmsprop-offload_params": dict(z3, master_weights="bfloat16", offload_params=True),
        "z3-bf16-rmsprop-reference": dict(z3, beta=0.1),
    })
    return cases


CASES = _cases()


def _trainer_cfg(kw: dict) -> TrainerConfig:
    return TrainerConfig(**kw, num_workers=1, lr=1e-3, max_steps=1)


def _planned(kw: dict, num_params: int) -> dict[str, float]:
    mem = trainer_memory(_trainer_cfg(kw), num_params)
    both = {**mem.gpu, **mem.host}
    states = sum(both.get(k, 0.0) for k in (*MODEL_STATES, "reference"))
    return {"peak": states, "after_step": states - both.get("step_buffer", 0.0),
            "reduce_bucket": both.get("reduce_bucket", 0.0), "bytes_per_param": mem.bytes_per_param}


# ---------------------------------------------------------------- the child process: build, step, measure

def _live_storages() -> dict[int, object]:
    """Every tensor storage alive, by address, each with one tensor that keeps it alive (so that no address is
    reused while a snapshot holds it)."""
    import torch

    found: dict[int, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated torch.distributed names warns
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                storage = obj.untyped_storage()
                if storage.nbytes():
                    found.setdefault(storage.data_ptr(), obj)
    return found


def _new_bytes(before: dict[int, object]) -> tuple[int, int]:
    """Bytes of the storages not alive in `before`: (reduce buckets, everything else)."""
    bucket = other = 0
    for ptr, tensor in _live_storages().items():
        if ptr in before:
            continue
        nbytes = tensor.untyped_storage().nbytes()
        if nbytes == REDUCE_BUCKET_ELEMENTS * tensor.element_size():
            bucket += nbytes
        else:
            other += nbytes
    return bucket, other


def _measure(kw: dict, model_dir: str, example, pad_id: int) -> dict[str, int]:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from sami_ray.train import worker
    from sami_ray.train.step import sami_objective

    cfg = _trainer_cfg(kw)
    gc.collect()
    before = _live_storages()
    peak = {"bucket": 0, "other": 0}

    def at_step(*_):  # after each inner optimizer step: states exist, gradients are still alive
        bucket, other = _new_bytes(before)
        peak["bucket"], peak["other"] = max(peak["bucket"], bucket), max(peak["other"], other)

    hook = register_optimizer_step_post_hook(at_step)
    # What worker._build_engines reads and fills in, without Ray Train around it.
    w = SimpleNamespace(cfg=cfg, world=1, init_path=model_dir, ref_path=model_dir if cfg.beta > 0 else None,
                        pad_id=pad_id, steps=1, engine=None, ref_engine=None)
    try:
        worker._build_engines(w)
        ref = None
        if w.ref_engine is not None:
            with torch.no_grad():
                ref = w.ref_engine([example])
        out = sami_objective(w.engine([example]), ref, batch_size=1, n=example.n, beta=cfg.beta)
        w.engine.backward(out.loss)
        w.engine.step()
        del out, ref
        gc.collect()
        bucket, after = _new_bytes(before)
    finally:
        hook.remove()
        for engine in (w.engine, w.ref_engine):
            if engine is not None:
                engine.destroy()
        del w  # collected before the next case's snapshot
    return {"peak": max(peak["other"], after), "after_step": after,
            "reduce_bucket": max(peak["bucket"], bucket)}


def _child(out_path: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    torch.set_num_threads(1)
    from sami_ray.train import worker

    worker._skip_shm_op()
    import deepspeed
    from transformers import AutoTokenizer

    from sami_ray.sami.constitutions import Constitution
    from sami_ray.sami.data import Query, SamiExample, tokenize_example
    from tests.support.tiny_models import tiny_model

    deepspeed.init_distributed(dist_backend="gloo")
    model_dir = str(tiny_model(kind="llama"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    constitutions = [Constitution("brief", (), "Answer briefly."), Constitution("long", (), "Answer at length.")]
    example = tokenize_example(tok, SamiExample(Query("q", "How do I bake bread?"), constitutions,
                                                ["- bake bread", "First make the bread, then bake it long."],
                                                ["Answer briefly. How do I bake bread?",
                                                 "Answer at length. How do I bake bread?"]))
    results: dict = {"num_params": worker._count_parameters(model_dir), "cases": {}}
    for name, kw in CASES.items():
        try:
            results["cases"][name] = _measure(kw, model_dir, example, tok.pad_token_id)
        except Exception as e:  # noqa: BLE001 - reported per case by the test
            results["cases"][name] = {"error": f"{type(e).__name__}: {e}"}
    Path(out_path).write_text(json.dumps(results))


# ---------------------------------------------------------------- the tests

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan_memory") / "measured.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "DEEPSPEED_TIMEOUT": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_SIZE": "1", "TORCH_EXTENSIONS_DIR": str(out.parent / "torch_extensions"),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    results = json.loads(out.read_text())
    _print_table(results)
    return results


def _print_table(results: dict) -> None:
    """Bytes per parameter, measured and planned (after the step: ZeRO-3 only, the other stages free their
    gradients then), and whether the reduce bucket is the planned one (ZeRO-3 allocates it at start-up)."""
    n = results["num_params"]
    print(f"\n{'case':<38}{'at the step':>12}{'planned':>9}{'after it':>10}{'planned':>9}{'bucket':>8}")
    for name, kw in CASES.items():
        got, want = results["cases"][name], _planned(kw, n)
        if "error" in got:
            print(f"{name:<38} {got['error']}")
            continue
        z3 = kw["zero_stage"] == 3
        after = f"{got['after_step'] / n:>10.2f}{want['after_step'] / n:>9.2f}" if z3 else f"{'-':>10}{'-':>9}"
        bucket = ("ok" if got["reduce_bucket"] == want["reduce_bucket"] else "DIFF") if z3 else "-"
        print(f"{name:<38}{got['peak'] / n:>12.2f}{want['peak'] / n:>9.2f}{after}{bucket:>8}")


@pytest.mark.parametrize("name", list(CASES))
def test_plan_counts_what_deepspeed_allocates(measured, name):
    got, n = measured["cases"][name], measured["num_params"]
    assert "error" not in got, got
    want = _planned(CASES[name], n)
    assert got["peak"] == pytest.approx(want["peak"], rel=TOLERANCE), (got["peak"] / n, want["peak"] / n)
    if CASES[name]["zero_stage"] == 3:  # stages 0-2 free their gradients after the step; ZeRO-3 keeps its buffer
        assert got["after_step"] == pytest.approx(want["after_step"], rel=TOLERANCE)
        assert got["reduce_bucket"] == want["reduce_bucket"]  # allocated whole at start-up


def test_plan_per_param_bytes_are_the_measured_ones(measured):
    """Model states without the step's gradient copy, per parameter, one worker (the figure plan prints)."""
    n = measured["num_params"]
    got = {name: round(measured["cases"][name]["after_step"] / n, 1)
           for name in ("z3-fp32-adamw", "z3-fp32-rmsprop", "z3-bf16-adamw", "z3-bf16-rmsprop",
                        "z3-bf16-pure-adamw", "z3-bf16-pure-rmsprop")}
    assert got == {"z3-fp32-adamw": 20.0, "z3-fp32-rmsprop": 16.0, "z3-bf16-adamw": 16.0, "z3-bf16-rmsprop": 12.0,
                   "z3-bf16-pure-adamw": 10.0, "z3-bf16-pure-rmsprop": 8.0}
    for name, value in got.items():
        assert _planned(CASES[name], n)["bytes_per_param"] == value


@pytest.mark.parametrize("offload", ["none", "optimizer", "optimizer_and_params"])
@pytest.mark.parametrize("size", ["tiny-1", "mistral7b-4", "mixtral-8"])
def test_plan_agrees_with_deepspeeds_estimator(offload, size):
    """bf16 parameters, fp32 master weights, AdamW: the one setting DeepSpeed's ZeRO-3 estimator models."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    n, workers = {"tiny-1": (426_624, 1), "mistral7b-4": (7.24e9, 4), "mixtral-8": (46.7e9, 8)}[size]
    cfg = TrainerConfig(zero_stage=3, dtype="bfloat16", optimizer="adamw", num_workers=workers,
                        offload_optimizer=offload != "none", offload_params=offload == "optimizer_and_params")
    mem = trainer_memory(cfg, n)
    plan_gpu = sum(v for k, v in mem.gpu.items() if k in MODEL_STATES)
    plan_cpu_node = sum(mem.host.values()) * workers  # all workers on one node
    # largest_layer_params=0: the gathered layer is counted apart by plan (as gathered_layer), and by DeepSpeed as
    # 4 bytes x the largest module; additional_buffer_factor=1: no allowance on top of the states.
    ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
        int(n), 0, num_gpus_per_node=workers, num_nodes=1, cpu_offload=offload != "none",
        cpu_offload_params=offload == "optimizer_and_params", zero_init=True, additional_buffer_factor=1.0)
    assert plan_gpu == pytest.approx(ds_gpu, rel=TOLERANCE, abs=1)
    if offload != "none":
        assert plan_cpu_node == pytest.approx(ds_cpu, rel=TOLERANCE)


if __name__ == "__main__":
    _child(sys.argv[1])
