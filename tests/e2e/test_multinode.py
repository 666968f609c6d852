"""A run on several Ray nodes that do not share a disk, submitted with `ray job submit`.

The head is the driver's node; a sampler node and a trainer node each have their own /tmp and caches (a private
mount namespace), and the custom resource of their node type in cluster/aws.yaml. Models and stages travel only
through S3 (a moto server on 127.0.0.1): the policy is an s3:// model, and each node fetches what it needs into its
own cache. Then the sampler node is killed during iteration 2's sampling and a fresh one joins.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sami_ray.storage import CheckpointStore, RunStore
from tests.support.cluster import LocalCluster, can_isolate_nodes, name_of
from tests.support.tiny_models import tiny_run_config, write_tiny_queries

from .helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(can_isolate_nodes()), reason=str(can_isolate_nodes()))]

SAMPLER = {"sami_sampler": 1}
TRAINER = {"sami_trainer": 1}
PASS_ENV = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "DS_ACCELERATOR", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "DEEPSPEED_TIMEOUT", "AWS_EC2_METADATA_DISABLED", "TOKENIZERS_PARALLELISM")


def _config(model_uri: str, queries: Path, store_uri: str, iterations: int = 2, cluster: bool = True) -> dict:
    cfg = tiny_run_config(model_uri, queries, store_uri, run={"name": "mn", "seed": 0, "iterations": iterations})
    cfg["trainer"].update({"checkpoint_every": 1000, "report_every": 1})
    if cluster:
        cfg["resources"] = {"ray_address": "auto",
                            "sampler": {"num_cpus": 1, "custom": SAMPLER},
                            "writer": {"num_cpus": 1, "custom": SAMPLER},
                            "trainer": {"num_cpus": 1, "custom": TRAINER}}
    return cfg


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 endpoint and credentials as every process of the run sees them: through the environment."""
    env = {"AWS_ENDPOINT_URL_S3": s3_server.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path)
    t0 = time.perf_counter()
    c.start(num_cpus=1)
    c.add_worker("sampler", 1, SAMPLER)
    c.add_worker("trainer", 1, TRAINER)
    c.started_s = time.perf_counter() - t0
    print(f"\ncluster of 3 nodes up in {c.started_s:.1f} s")
    try:
        yield c
    finally:
        c.stop()


def _submit(cluster: LocalCluster, job_id: str, argv: list[str], env: dict) -> None:
    env_vars = {k: os.environ[k] for k in PASS_ENV if k in os.environ} | env
    cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, "--no-wait",
                "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *argv)


def _wait_job(cluster: LocalCluster, job_id: str, timeout: float = 1200, while_running=None) -> str:
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        status = cluster.ray("job", "status", "--address", cluster.dashboard, job_id).lower()
        if any(f"job '{job_id}' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        if while_running is not None:
            while_running()
        time.sleep(3)
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard, job_id)
    assert f"job '{job_id}' succeeded" in status, logs[-6000:]
    return logs


def _role_nodes(cluster: LocalCluster) -> dict[str, set[str]]:
    """The names of the nodes each kind of actor ran on (dead actors and nodes included)."""
    nodes = json.loads(cluster.ray("list", "nodes", "--address", cluster.address, "--format=json", "--detail",
                                   "--limit=100"))
    names = {n["node_id"]: name_of(n.get("resources_total") or {}) for n in nodes}
    actors = json.loads(cluster.ray("list", "actors", "--address", cluster.address, "--format=json", "--detail",
                                    "--limit=1000"))
    out: dict[str, set[str]] = {}
    for a in actors:
        kind = "sampler" if (a.get("name") or "").startswith("sami-sampler") else \
            "trainer" if a.get("class_name") == "RayTrainWorker" else None
        if kind and a.get("node_id"):
            out.setdefault(kind, set()).add(names.get(a["node_id"]) or "?")
    return out


def _tensors(store: RunStore, stage: str) -> dict:
    from safetensors.torch import load_file

    folder = store.require(stage)
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_a_run_across_nodes_without_a_shared_disk(cluster, s3_server, s3_env, tiny_llama, tmp_path):
    bucket = s3_server.new_bucket()
    model_uri = f"s3://{bucket}/models/tiny-llama"
    CheckpointStore.open(f"s3://{bucket}/models").commit_stage("tiny-llama", tiny_llama)
    queries = write_tiny_queries(tmp_path / "queries.jsonl", 8)
    cfg_path = tmp_path / "mn.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(model_uri, queries, f"s3://{bucket}/runs")))

    t0 = time.perf_counter()
    _submit(cluster, "mn-run", [sys.executable, str(REPO / "jobs" / "entrypoint.py"), str(cfg_path),
                                "--run-id", "mn"], s3_env)
    logs = _wait_job(cluster, "mn-run")
    run_s = time.perf_counter() - t0
    run = RunStore.open(f"s3://{bucket}/runs/mn", cache_dir=tmp_path / "check")
    for k in (1, 2):
        for stage in ("samples", "model", "eval"):
            assert run.fetch(f"iter-{k:04d}/{stage}") is not None, f"iter-{k}/{stage} committed and verified"
    placed = _role_nodes(cluster)
    print(f"multi-node run: {run_s:.0f} s; roles ran on {placed}")
    assert placed["sampler"] == {"sampler"} and placed["trainer"] == {"trainer"}, placed

    # The same config on one local node (local store) ends with the same weights.
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(_config(model_uri, queries, str(tmp_path / "runs"), cluster=False)))
    run_cli(["run", str(single), "--run-id", "one"], **s3_env)
    local = RunStore.open(str(tmp_path / "runs" / "one"), cache_dir=tmp_path / "check-local")
    a, b = _tensors(run, "iter-0002/model"), _tensors(local, "iter-0002/model")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "same seed, same final weights"

    # Resuming the finished run on the cluster does nothing.
    before = CheckpointStore.open(f"s3://{bucket}/runs/mn").list()
    _submit(cluster, "mn-resume", [sys.executable, "-m", "sami_ray.cli", "resume", f"s3://{bucket}/runs/mn"], s3_env)
    resumed = _wait_job(cluster, "mn-resume")
    assert "_train] " not in resumed and "_sample] " not in resumed, resumed[-3000:]
    after = CheckpointStore.open(f"s3://{bucket}/runs/mn").list()
    assert [k for k in after if "summary.json" not in k] == [k for k in before if "summary.json" not in k]
    assert "final model: iter-0002/model" in logs


def test_losing_the_sampler_node_mid_sampling(cluster, s3_server, s3_env, tiny_llama, tmp_path):
    bucket = s3_server.new_bucket()
    CheckpointStore.open(f"s3://{bucket}/models").commit_stage("tiny-llama", tiny_llama)
    queries = write_tiny_queries(tmp_path / "queries.jsonl", 8)
    cfg = _config(f"s3://{bucket}/models/tiny-llama", queries, f"s3://{bucket}/runs")
    cfg["sampler"]["batch_size"] = 2  # several batches, so the kill lands between them
    cfg_path = tmp_path / "mn.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = CheckpointStore.open(f"s3://{bucket}/runs/mn")
    state: dict = {}

    def kill_when_iteration_two_samples() -> None:
        """Iteration 2's sampling (weight sync, then generation) starts as iteration 1's evaluation is committed."""
        while not run.is_committed("iter-0001/eval"):
            if state.get("done"):
                return
            time.sleep(0.2)
        cluster.kill("sampler")
        state["killed_at"] = time.perf_counter()
        state["samples_were_committed"] = run.is_committed("iter-0002/samples")
        cluster.add_worker("sampler-2", 1, SAMPLER)
        state["rejoined_at"] = time.perf_counter()

    watcher = threading.Thread(target=kill_when_iteration_two_samples, daemon=True)
    t0 = time.perf_counter()
    _submit(cluster, "mn-kill", [sys.executable, str(REPO / "jobs" / "entrypoint.py"), str(cfg_path),
                                 "--run-id", "mn"], s3_env)
    watcher.start()
    try:
        logs = _wait_job(cluster, "mn-kill")
    finally:
        state["done"] = True
        watcher.join(timeout=180)
    assert "killed_at" in state, "the run finished before the kill: the test proves nothing"
    assert not state["samples_were_committed"], "the kill came after iteration 2's sampling: it proves nothing"
    print(f"sampler node killed {state['killed_at'] - t0:.0f} s into the run, a fresh one joined in "
          f"{state['rejoined_at'] - state['killed_at']:.0f} s; the run ended {time.perf_counter() - t0:.0f} s in")
    examples = [json.loads(line) for line in run.get_bytes("iter-0002/samples/examples.jsonl").decode().splitlines()]
    ids = [e["query"]["id"] for e in examples]
    assert len(ids) == len(set(ids)), "every example exactly once"
    retried = logs.count("replacing it and retrying")
    reloads = logs.count("starting a fresh one on")
    print(f"cost of the lost node: {retried} batch(es) of <= {cfg['sampler']['batch_size']} prompts sampled again, "
          f"{reloads} replica(s) replaced during a weight sync; {len(ids)} examples kept, each once")
    assert retried + reloads >= 1, logs[-4000:]
    assert _role_nodes(cluster)["sampler"] == {"sampler", "sampler-2"}, "the replacement ran on the fresh node"
    assert RunStore.open(run.uri, cache_dir=tmp_path / "c").fetch("iter-0002/model") is not None
