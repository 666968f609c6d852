"""`ray start --head` (token authentication on), then the demo job through `ray job submit` with a tiny-model config: it SUCCEEDS and its
iterations are committed in the store."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch):
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dash = _free_port(), _free_port()
    # Token authentication on, as on our clusters; a token of this test's own, so a fresh machine needs none.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # Short: Ray's unix socket paths live under it and must stay within 107 bytes.
    temp = tempfile.mkdtemp(prefix="rayj-", dir="/tmp")
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                    f"--temp-dir={temp}"], check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}"
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(temp: str) -> None:
    """Stop this head only (`ray stop` would stop every Ray on the machine): its processes name its temp dir, and
    its workers exit with their raylet."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp in arg for arg in (p.info["cmdline"] or [])):
            procs.append(p)
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


def _ray_cli(*args, timeout=120) -> str:
    """The `ray` command as a user runs it (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 60
    while True:
        p = subprocess.run([ray_bin, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
        # `ray start` returns before the head's job agent is up (seen on a loaded 2-core machine); Ray asks to retry
        if p.returncode == 0 or "No available agent" not in p.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert p.returncode == 0, f"ray {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.slow
def test_demo_job_through_the_jobs_api(ray_head, tiny_config):
    dashboard, address = ray_head
    cfg, store = tiny_config()
    env_vars = {k: os.environ[k] for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "DS_ACCELERATOR",
                                           "HF_HUB_OFFLINE", "DEEPSPEED_TIMEOUT", "SAMI_RAY_CACHE") if k in os.environ}
    env_vars["RAY_ADDRESS"] = address
    _ray_cli("job", "submit", "--address", dashboard, "--submission-id", "sami-tiny", "--no-wait",
             "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
             sys.executable, str(REPO / "jobs" / "entrypoint.py"), str(cfg), "--run-id", "job")
    deadline = time.time() + 900
    status = ""
    while time.time() < deadline:
        status = _ray_cli("job", "status", "--address", dashboard, "sami-tiny").lower()
        if any(f"job 'sami-tiny' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = _ray_cli("job", "logs", "--address", dashboard, "sami-tiny")
    assert "job 'sami-tiny' succeeded" in status, logs[-5000:]
    run = store / "job"
    for stage in ("principles", "iter-0000/eval", "iter-0001/samples", "iter-0001/model", "iter-0001/eval"):
        assert (run / stage / "MANIFEST.json").exists(), stage
    assert "final model: iter-0001/model" in logs
    _assert_quiet_job_log_and_run_log(logs, run)


def _assert_quiet_job_log_and_run_log(logs: str, run: Path) -> None:
    """`ray job logs` holds the run's own lines only; the workers' lines are in the run folder's log."""
    log_file = run / "logs" / "sami-ray.log"
    assert f"log: {log_file}" in logs
    ours = logs.split("Running entrypoint for job", 1)[1]  # before it: the `ray job` tools' own lines
    noise = [line for line in ours.splitlines()
             if any(n in line for n in ("pid=", "Warning", "RayTrainWorker", "TrainController", "INFO", "%|"))]
    assert not noise and "\r" not in ours, noise[:20]
    worker_lines = log_file.read_text()
    assert "(PolicySampler pid=" in worker_lines and "RayTrainWorker" in worker_lines, worker_lines[-3000:]
