"""Comparison jobs: the job file is checked, each arm is the base config plus its overrides, and shared stages are
copied between arms as committed, verified stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sami_ray.arms import _share, arm_config, load_job
from sami_ray.config import load_config
from sami_ray.errors import ConfigError
from sami_ray.storage.run import RunStore

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_job_loads_and_each_arm_differs_only_in_its_objective():
    job = load_job(REPO / "jobs" / "compare_demo.yaml")
    cfgs = {arm: arm_config(job, arm, []) for arm in job.arms}
    assert {arm: c.trainer.objective for arm, c in cfgs.items()} == {"sami": "sami", "sft": "sft", "dpo": "dpo"}
    strip = [c.model_dump(exclude={"trainer"}) for c in cfgs.values()]
    assert all(s == strip[0] for s in strip)


def test_a_bad_job_file_is_named(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\narms: {only: []}\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not a comparison job"):
        load_job(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "missing.yaml")


def test_shared_stages_arrive_committed(tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'runs'}"])
    first, second = RunStore.create(cfg, "a"), RunStore.create(cfg, "b")
    first.commit_json("principles", {"principles.json": {"principles": []}}, meta={"by": "writer"})
    _share(first, second, ["principles", "iter-0000/eval"])  # the second is not committed in `first`: skipped
    assert second.is_committed("principles") and not second.is_committed("iter-0000/eval")
    assert second.manifest_meta("principles") == {"by": "writer"}
