"""Running the CLI as a user does, and reading what a run committed."""

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "sami_ray.cli"]


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def run_cli(args, timeout=900, **env) -> subprocess.CompletedProcess:
    p = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=cli_env(**env))
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def committed(run: Path, stage: str) -> bool:
    return (run / stage / "MANIFEST.json").exists()


def read_examples(run: Path, k: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"iter-{k:04d}/samples/examples.jsonl").read_text().splitlines()]


def eval_report(run: Path, k: int) -> dict:
    return json.loads((run / f"iter-{k:04d}/eval/report.json").read_text())


def mi(run: Path, k: int) -> float:
    return eval_report(run, k)["mi_bound"]["mi_bound"]


def model_tensors(run: Path, k: int) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run / f"iter-{k:04d}/model").glob("*.safetensors")):
        out.update(load_file(f))
    return out
