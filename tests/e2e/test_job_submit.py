"""`ray start --head`, then the demo job through the Jobs API with a tiny-model config: it SUCCEEDS and its
iterations are committed in the store."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                    f"--temp-dir={tmp_path / 'ray'}"], check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_demo_job_through_the_jobs_api(ray_head, tiny_config):
    from ray.job_submission import JobStatus, JobSubmissionClient

    dashboard, address = ray_head
    cfg, store = tiny_config()
    client = JobSubmissionClient(dashboard)
    entry = f"{sys.executable} {REPO / 'jobs' / 'entrypoint.py'} {cfg} --run-id job"
    env_vars = {k: os.environ[k] for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "DS_ACCELERATOR",
                                           "HF_HUB_OFFLINE", "DEEPSPEED_TIMEOUT", "SAMI_RAY_CACHE") if k in os.environ}
    env_vars["RAY_ADDRESS"] = address
    job = client.submit_job(entrypoint=entry, runtime_env={"env_vars": env_vars})
    deadline = time.time() + 900
    status = client.get_job_status(job)
    while time.time() < deadline and status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(2)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    run = store / "job"
    for stage in ("principles", "iter-0000/eval", "iter-0001/samples", "iter-0001/model", "iter-0001/eval"):
        assert (run / stage / "MANIFEST.json").exists(), stage
    assert "final model: iter-0001/model" in logs
