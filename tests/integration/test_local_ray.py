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

# A one-worker Ray Train group (no DeepSpeed) in the local Ray; which actor classes the cluster ever had.
TRAIN_SCRIPT = """
import tempfile
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.state import list_actors
from sami_ray.config import ResourcesConfig
from sami_ray.runtime import ensure_ray
ensure_ray(ResourcesConfig(num_cpus=2))
TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1),
             run_config=RunConfig(storage_path=tempfile.mkdtemp())).fit()
print("ACTORS", sorted({a.class_name for a in list_actors(limit=1000)}))
"""


def test_workers_of_the_local_ray_run_at_normal_priority():
    # Ray's default (15) made the demo's training step 1.13x slower on 2 cores (runtime.ensure_ray says why).
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert "NICE 0" in out.stdout, out.stdout + out.stderr


def test_a_training_group_in_the_local_ray_starts_no_preemption_watcher():
    # One process fewer per training stage (runtime.ensure_ray says why); the group itself still runs.
    out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], capture_output=True, text=True, timeout=300,
                         check=True)
    actors = next(line for line in out.stdout.splitlines() if line.startswith("ACTORS"))
    assert "RayTrainWorker" in actors and "TrainController" in actors, out.stdout + out.stderr
    assert "PreemptionWatcher" not in actors, actors
