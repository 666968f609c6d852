"""Kill the driver while iteration 1 trains; `sami-ray resume` finishes the run with the same committed results
as an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "sami_ray.cli"]


def _env():
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(args, timeout=900):
    p = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=_env())
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def _committed(run: Path, stage: str) -> bool:
    return (run / stage / "MANIFEST.json").exists()


def _read_examples(run: Path, k: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"iter-{k:04d}/samples/examples.jsonl").read_text().splitlines()]


def _eval(run: Path, k: int) -> dict:
    return json.loads((run / f"iter-{k:04d}/eval/report.json").read_text())


@pytest.mark.slow
def test_killed_driver_resumes_to_the_same_results(tiny_config, tmp_path):
    cfg, store = tiny_config(trainer={"checkpoint_every": 1, "report_every": 1})
    # The uninterrupted reference run.
    _run(["run", str(cfg), "--run-id", "reference"])
    ref = store / "reference"
    assert _committed(ref, "iter-0001/model") and _committed(ref, "iter-0001/eval")

    # The same run, killed once its iteration-1 samples are committed and training has begun.
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(CLI + ["run", str(cfg), "--run-id", "killed"], stdout=log, stderr=subprocess.STDOUT,
                            env=_env(), start_new_session=True)
    killed = store / "killed"
    deadline = time.time() + 600
    while time.time() < deadline and not _committed(killed, "iter-0001/samples"):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.5)
    assert _committed(killed, "iter-0001/samples"), "the run never committed its samples"
    time.sleep(8)  # inside training (start-up alone takes longer than this)
    assert not _committed(killed, "iter-0001/model"), "training finished before the kill; the test proves nothing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    samples_manifest = (killed / "iter-0001/samples/MANIFEST.json").read_text()

    out = _run(["resume", str(killed)])
    assert "resuming" in out.stdout
    # No stage was done twice: the samples committed before the kill are the ones the run kept.
    assert (killed / "iter-0001/samples/MANIFEST.json").read_text() == samples_manifest
    assert _committed(killed, "iter-0001/model") and _committed(killed, "iter-0001/eval")
    assert _read_examples(killed, 1) == _read_examples(ref, 1)
    for k in (0, 1):
        a, b = _eval(killed, k), _eval(ref, k)
        assert a["mi_bound"] == pytest.approx(b["mi_bound"], abs=1e-4), k
    assert "finished" in _run(["status", str(killed)]).stdout
