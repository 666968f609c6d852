"""The training workers' environment: glibc malloc kept from unmapping on CPU workers, never over the user's own."""

from sami_ray.train.trainer import CPU_WORKER_MALLOC, worker_env_vars


def test_cpu_workers_keep_freed_memory_in_one_arena():
    env = worker_env_vars(False, set())
    assert env == CPU_WORKER_MALLOC
    assert env["MALLOC_ARENA_MAX"] == "1" and env["MALLOC_MMAP_MAX_"] == "0"
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2**40


def test_gpu_workers_get_nothing_and_a_users_setting_wins():
    assert worker_env_vars(True, set()) == {}
    env = worker_env_vars(False, {"MALLOC_ARENA_MAX", "PATH"})
    assert "MALLOC_ARENA_MAX" not in env and set(env) == set(CPU_WORKER_MALLOC) - {"MALLOC_ARENA_MAX"}
