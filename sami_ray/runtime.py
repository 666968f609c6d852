"""Process settings and Ray start-up shared by the driver, jobs and the CLI."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from . import logs
from .config import ResourcesConfig

log = logging.getLogger(__name__)

# Settings every process of a run needs (driver, actors, Train workers); passed on through runtime_env.
_CPU_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in the actor's own process: Ray's CPU accounting holds
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
}
_ALWAYS = {
    "RAY_DEDUP_LOGS": "0",
    # vLLM's start-up and per-call INFO/WARNING lines drown the run's own progress; set it to INFO to see them.
    "VLLM_LOGGING_LEVEL": "ERROR",
    # Ray Train's controller sees a finished worker group at its next health check (default every 2 s); each
    # training stage ends by that wait.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment for the block (for the processes it starts), then as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def process_env(gpu: bool | None = None) -> dict[str, str]:
    """Environment variables for every process of the run (only those not already set by the user)."""
    gpu = has_cuda() if gpu is None else gpu
    wanted = dict(_ALWAYS)
    if not gpu:
        wanted.update(_CPU_DEFAULTS)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SAMI_RAY_CACHE", "DEEPSPEED_TIMEOUT",
                "TORCH_EXTENSIONS_DIR", "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL_S3",
                "SAMI_RAY_TEST_FAULTS"):
        if key in os.environ:
            wanted[key] = os.environ[key]
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


def apply_process_env(gpu: bool | None = None) -> dict[str, str]:
    env = process_env(gpu)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return env


def runtime_env(gpu: bool | None = None) -> dict:
    return {"env_vars": process_env(gpu)}


def ensure_ray(resources: ResourcesConfig) -> None:
    """Join the configured cluster, or start a local one sized to this machine."""
    import ray

    if ray.is_initialized():
        logs.ray_started()  # a session begun after Ray still takes the workers' lines
        return
    apply_process_env()
    address = resources.ray_address or os.environ.get("RAY_ADDRESS")
    # Worker lines come to this process; a `sami-ray run` session writes them into the run's log file.
    kwargs: dict = {"runtime_env": runtime_env(), **logs.ray_init_options()}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # Inside `ray job submit` the job's runtime_env (working_dir, env_vars) already applies to every actor;
        # a second one here would conflict with it. Actors still get `runtime_env()` as their own env_vars.
        kwargs.pop("runtime_env")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        num_cpus = resources.num_cpus or os.cpu_count() or 2
        log.info("starting a local Ray with %d CPUs", num_cpus)
        # Ray starts workers at niceness 15, so on a small machine every wake-up of Ray's own processes pre-empts a
        # training thread and the others wait for it at the next parallel barrier: the demo's step ran 1.13x
        # slower. Our workers are the machine's work here; they run at the normal priority.
        ray.init(num_cpus=num_cpus, _system_config={"worker_niceness": 0}, **kwargs)
        # Ray Train starts a preemption watcher process with every worker group, to act on a node being drained
        # (a reclaimed spot instance). No one drains the one node of a cluster this process started, and on a
        # small machine that process's start competes with the workers' own (Ray Train reads this in the driver).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    logs.ray_started()
