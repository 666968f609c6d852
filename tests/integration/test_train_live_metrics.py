"""Training statistics while training runs: the dashboard's metrics endpoint shows the step counter move during a
tiny ZeRO-3 training stage (2 workers), the driver's step callback sees the steps, and the gradient norm is a
real number in every report, in ZeRO-3 and in the one-worker ZeRO stage 0 setting of the demo."""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from sami_ray.config import RoleResources, TrainerConfig
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.data import Query, SamiExample, save_examples
from sami_ray.train import train
from sami_ray.train.trainer import CPU_WORKER_MALLOC
from tests.support.tiny_models import tiny_model

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_worker_env() -> dict[str, str]:
    """The environment of a running Ray Train worker process on this machine, or {} when none runs."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pairs = (item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
                return dict(pairs)
        except OSError:  # the process ended while being read
            continue
    return {}


def _scrape(port: int, name: str, run: str) -> list[float]:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return []
    return [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
            if line.startswith(name + "{") and f'run="{run}"' in line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    port = _free_port()
    env = {"DS_ACCELERATOR": "cpu", "DEEPSPEED_TIMEOUT": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCH_EXTENSIONS_DIR": str(tmp_path_factory.mktemp("ext"))}
    ray.init(num_cpus=2, include_dashboard=True, _metrics_export_port=port, runtime_env={"env_vars": env},
             _system_config={"metrics_report_interval_ms": 1000})
    yield port
    ray.shutdown()


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    model = tiny_model(kind="llama")
    tok = AutoTokenizer.from_pretrained(model)
    cons = [Constitution("pos", (), "Be brief."), Constitution("neg", (), "Be long.")]
    rows = []
    for k, q in enumerate(["How do I bake bread?", "How do I fix a tire?", "How do I boil an egg?", "How to sew?"]):
        prompts = [tok.apply_chat_template([{"role": "system", "content": c.text}, {"role": "user", "content": q}],
                                           tokenize=False, add_generation_prompt=True) for c in cons]
        rows.append(SamiExample(Query(f"q{k}", q), cons, [f"Short {k}.", f"A much longer answer number {k}."],
                                prompts))
    path = tmp_path_factory.mktemp("live") / "examples.jsonl"
    save_examples(path, rows)
    return model, path


def test_step_counter_moves_on_the_dashboard_while_training(cluster, examples, tmp_path):
    model, path = examples
    seen: list[tuple[float, float]] = []
    steps_to_driver: list[int] = []
    worker_env: dict[str, str] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.extend((time.time(), v) for v in _scrape(cluster, "ray_sami_train_step", "live"))
            worker_env.update(worker_env or _train_worker_env())
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cfg = TrainerConfig(num_workers=2, zero_stage=3, lr=1e-3, max_steps=120, epochs=1000, report_every=40,
                        checkpoint_every=1000, collective_timeout_min=1, max_failures=0, max_grad_norm=0.5)
    try:
        result = train(examples_path=str(path), init_model_path=str(model), ref_model_path=None, trainer_cfg=cfg,
                       output_dir=str(tmp_path / "model"), storage_path=str(tmp_path / "storage"),
                       resources=RoleResources(num_cpus=1), run_id="live",
                       on_step=lambda s: steps_to_driver.append(s["step"]))
        finished = time.time()
    finally:
        done.set()
        watcher.join()
    during = sorted({v for t, v in seen if t < finished})
    assert len(during) >= 2 and during[0] < during[-1] <= 120, f"step values scraped while training: {during}"
    assert steps_to_driver and steps_to_driver == sorted(steps_to_driver) and steps_to_driver[-1] == 120
    norms = [m["grad_norm"] for m in result.metrics if "grad_norm" in m]
    assert norms and all(math.isfinite(g) and g > 0 for g in norms), norms
    assert _scrape(cluster, "ray_sami_train_grad_norm", "live"), "no gradient norm on the dashboard"
    # The CPU workers ran with the trainer's malloc settings, beside the job's own variables.
    assert {k: worker_env.get(k) for k in CPU_WORKER_MALLOC} == CPU_WORKER_MALLOC, worker_env
    assert worker_env.get("DS_ACCELERATOR") == "cpu"


def test_grad_norm_is_real_in_the_demo_setting(cluster, examples, tmp_path):
    """One worker at ZeRO stage 0 in fp32, where DeepSpeed clips with torch and keeps no norm."""
    model, path = examples
    cfg = TrainerConfig(num_workers=1, zero_stage=0, lr=1e-3, max_steps=3, epochs=100, report_every=1,
                        checkpoint_every=1000, collective_timeout_min=1, max_failures=0)
    result = train(examples_path=str(path), init_model_path=str(model), ref_model_path=None, trainer_cfg=cfg,
                   output_dir=str(tmp_path / "model"), storage_path=str(tmp_path / "storage"),
                   resources=RoleResources(num_cpus=1))
    norms = [m["grad_norm"] for m in result.metrics if "grad_norm" in m]
    assert len(norms) == 3 and all(math.isfinite(g) and g > 0 for g in norms), norms
