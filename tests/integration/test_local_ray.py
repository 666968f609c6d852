"""The local Ray that a run starts for itself (no resources.ray_address)."""

import subprocess
import sys

SCRIPT = """
import os, ray
from sami_ray.config import ResourcesConfig
from sami_ray.runtime import ensure_ray
ensure_ray(ResourcesConfig(num_cpus=1))
print("NICE", ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()))
ray.shutdown()
"""


def test_workers_of_the_local_ray_run_at_normal_priority():
    # Ray's default (15) made the demo's training step 1.13x slower on 2 cores (runtime.ensure_ray says why).
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert "NICE 0" in out.stdout, out.stdout + out.stderr
