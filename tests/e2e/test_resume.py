"""Kill the driver while iteration 1 trains; `sami-ray resume` finishes the run with the same committed results
as an uninterrupted run with the same seed."""

import os
import signal
import subprocess
import time

import pytest

from .conftest import REFERENCE_SECTIONS
from .helpers import CLI, cli_env, committed, eval_report, read_examples, run_cli


@pytest.mark.slow
def test_killed_driver_resumes_to_the_same_results(reference_run, tiny_config, tmp_path):
    cfg, store = tiny_config(**REFERENCE_SECTIONS)
    ref = reference_run
    assert committed(ref, "iter-0001/model") and committed(ref, "iter-0001/eval")

    # The same run, killed once its iteration-1 samples are committed and training has begun.
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(CLI + ["run", str(cfg), "--run-id", "killed"], stdout=log, stderr=subprocess.STDOUT,
                            env=cli_env(), start_new_session=True)
    killed = store / "killed"
    deadline = time.time() + 600
    while time.time() < deadline and not committed(killed, "iter-0001/samples"):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.5)
    assert committed(killed, "iter-0001/samples"), "the run never committed its samples"
    time.sleep(8)  # inside training (start-up alone takes longer than this)
    assert not committed(killed, "iter-0001/model"), "training finished before the kill; the test proves nothing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    samples_manifest = (killed / "iter-0001/samples/MANIFEST.json").read_text()

    out = run_cli(["resume", str(killed)])
    assert "resuming" in out.stdout
    # No stage was done twice: the samples committed before the kill are the ones the run kept.
    assert (killed / "iter-0001/samples/MANIFEST.json").read_text() == samples_manifest
    assert committed(killed, "iter-0001/model") and committed(killed, "iter-0001/eval")
    assert read_examples(killed, 1) == read_examples(ref, 1)
    for k in (0, 1):
        a, b = eval_report(killed, k), eval_report(ref, k)
        assert a["mi_bound"]["mi_bound"] == pytest.approx(b["mi_bound"]["mi_bound"], abs=1e-4), k
    assert "finished" in run_cli(["status", str(killed)]).stdout
