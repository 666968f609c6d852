"""scripts/gpu_check.sh --small runs the GPU check's own code on CPU (tiny Mixtral), so it cannot rot between the
rare runs on a GPU machine; and the modules it imports stay free of what a bare GPU machine lacks."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.imports import loaded_with

ROOT = Path(__file__).resolve().parents[2]


def test_small_check_prints_one_table_with_every_row(tmp_path):
    # An empty wheel folder: the check uses this interpreter's DeepSpeed when it has one and installs nothing.
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WHEELS=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--small", "--steps", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["check", "result"], proc.stdout
    rows = {name: next((ln for ln in lines if ln.startswith(name + " ")), None)
            for name in ("device", "step shared_prefix", "step reference", "deepspeed zero3")}
    assert all(rows.values()), proc.stdout
    assert re.match(r"step shared_prefix\s+ok\b", rows["step shared_prefix"]), proc.stdout
    assert re.match(r"step reference\s+ok\b", rows["step reference"]), proc.stdout
    assert "reference/this: time" in rows["step shared_prefix"]
    ds_expected = "ok" if importlib.util.find_spec("deepspeed") else "skipped"
    assert re.match(rf"deepspeed zero3\s+{ds_expected}\b", rows["deepspeed zero3"]), proc.stdout

    # Same weights before any update: both implementations (and DeepSpeed's engine) give the same SAMI loss.
    losses = [float(m.group(1)) for name in ("step shared_prefix", "step reference", "deepspeed zero3")
              if (m := re.search(r"loss (\d+\.\d+)", rows[name]))]
    assert len(losses) == (3 if ds_expected == "ok" else 2)
    assert max(losses) - min(losses) < 1e-4, losses


def test_the_check_imports_nothing_a_bare_gpu_machine_lacks():
    # The check itself: torch, transformers and the step modules only.
    assert loaded_with("gpu_check, sami_ray.train.step",
                     ("pydantic", "ray", "deepspeed", "vllm", "sami_ray.config")) == []
    # Its DeepSpeed child may use pydantic (carried with DeepSpeed), never Ray or vLLM.
    assert loaded_with("sami_ray.train.worker, sami_ray.train.ds_config, sami_ray.train.optim, sami_ray.config",
                     ("ray", "vllm")) == []


def test_deepspeed_is_skipped_with_its_reason_without_module_or_wheel(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    site, why = gpu_check.deepspeed_source(tmp_path)
    assert site is None
    assert "no deepspeed wheel" in why and "--wheels" in why
