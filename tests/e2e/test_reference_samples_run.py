"""A run whose first iteration trains on the SAMI reference's generated data (sampler.samples_file) without sampling:
through the CLI, as a user runs it, on a tiny model with real Ray and DeepSpeed, no sampler engine started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .helpers import committed, read_examples, run_cli

pytestmark = pytest.mark.timeout(900)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "reference" / "generated_training_data.json"


def test_a_run_trains_on_the_reference_data_without_sampling(tiny_config):
    path, store = tiny_config(sampler={"samples_file": str(FIXTURE)}, evaluation={"enabled": False},
                              trainer={"zero_stage": 0})
    p = run_cli(["run", str(path), "--run-id", "imported"])
    run = store / "imported"
    assert "3 examples (N = 2) imported from" in p.stdout + p.stderr
    assert committed(run, "iter-0001/samples") and committed(run, "iter-0001/model")
    rows = read_examples(run, 1)
    raw = json.loads(FIXTURE.read_text())
    assert [r["query"]["id"] for r in rows] == list(raw)
    assert [r["prompts"] for r in rows] == [[x["prompt"] for x in raw[k]] for k in raw]
    summary = json.loads((run / "iter-0001/model/MANIFEST.json").read_text())["meta"]["summary"]
    assert summary.get("loss") is not None, summary
    # No engine ever started: every timing is the import, the training and the run's own bookkeeping.
    timings = json.loads((run / "summary.json").read_text())["timings"]
    assert "iter1_import" in timings and not any("sampl" in name for name in timings), timings
    assert yaml.safe_load((run / "config.yaml").read_text())["sampler"]["samples_file"] == str(FIXTURE)
