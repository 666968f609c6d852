"""A tiny run inside a local Ray whose Prometheus endpoint we read: the sami-ray metrics are there, with sane values."""

import socket
import time
import urllib.request

import pytest
import ray

from sami_ray.config import load_config
from sami_ray.driver import Run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, list[tuple[str, float]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in body.splitlines():
        if line.startswith("ray_sami_"):
            name = line.split("{", 1)[0]
            out.setdefault(name, []).append((line, float(line.rsplit(" ", 1)[1])))
    return out


@pytest.mark.slow
def test_run_exports_dashboard_metrics(tiny_config):
    port = _free_port()
    ray.init(num_cpus=2, _metrics_export_port=port, include_dashboard=True)
    try:
        cfg_path, _ = tiny_config()
        run = Run.start(load_config(cfg_path), run_id="metrics")
        run.execute()
        wanted = {"ray_sami_stage", "ray_sami_iteration", "ray_sami_train_loss", "ray_sami_mi_bound",
                  "ray_sami_checkpoint_upload_bytes_total", "ray_sami_samples_per_second"}
        deadline, found = time.time() + 60, {}
        while time.time() < deadline:  # the endpoint shows a gauge's new value at its next export
            found = _scrape(port)
            if wanted <= set(found) and found["ray_sami_stage"][-1][1] == 6:
                break
            time.sleep(2)
        assert wanted <= set(found), sorted(found)
        value = dict((n, v[-1][1]) for n, v in found.items())
        assert value["ray_sami_stage"] == 6, found["ray_sami_stage"]  # done
        assert value["ray_sami_iteration"] == 1
        assert value["ray_sami_checkpoint_upload_bytes_total"] > 100_000  # at least one model was committed
        assert value["ray_sami_samples_per_second"] > 0
        assert 0 <= value["ray_sami_train_loss"] < 10
        assert all('run="metrics"' in line for line, _ in found["ray_sami_mi_bound"])
    finally:
        ray.shutdown()
