"""The stage loop's decisions (resume, corrupt stages, rollback, early stop) on a real local run store with fake
roles: no Ray, no engines, milliseconds per test."""

from __future__ import annotations

import json

import pytest

from sami_ray.config import config_from_dict
from sami_ray.stages import StageLoop
from sami_ray.storage.run import RunStore, stage_key
from tests.support.fake_roles import EVASIVE, FakeRoles

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import what the loop imports lazily (torch, ray for metrics, evaluation) once, outside the timed tests."""
    import ray  # noqa: F401

    import sami_ray.evaluate.report  # noqa: F401
    import sami_ray.evaluate.runner  # noqa: F401


def make_cfg(tmp_path, iterations=2, on_degeneration="rollback", **over):
    data = {
        "run": {"name": "loop", "iterations": iterations, "seed": 3},
        "models": {"policy": {"path": "fake-policy"}},
        "task": {"queries": {"source": "builtin:howto", "held_out": 12, "limit": 24}},
        "constitutions": {"builtin": ["bullets", "concise"], "write_with_writer": False, "n": 2,
                          "mode": "all_or_none"},
        "evaluation": {"plots": False, "on_degeneration": on_degeneration},
        "storage": {"uri": str(tmp_path / "runs")},
    }
    for key, value in over.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return config_from_dict(data)


def walk(cfg, store, roles):
    return StageLoop(cfg, store, roles, say=lambda _msg: None).execute()


def reopen(store: RunStore, tmp_path, name: str) -> RunStore:
    """The same run as a fresh process sees it: nothing cached."""
    return RunStore.open(store.uri, cache_dir=tmp_path / name)


def test_a_run_commits_every_stage_and_a_resume_of_it_does_nothing(tmp_path):
    cfg = make_cfg(tmp_path)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    roles = FakeRoles(tmp_path)
    summary = walk(cfg, store, roles)
    assert roles.trained == [1, 2] and roles.shut == 1
    assert summary.final_model == "iter-0002/model" and summary.stopped_early is None
    for stage in ("principles", "iter-0000/eval", *(stage_key(k, s) for k in (1, 2)
                                                    for s in ("samples", "model", "eval"))):
        assert store.is_committed(stage), stage
    assert store.load_config() == cfg
    assert store.latest_model() == (2, "iter-0002/model")
    assert store.status(2)["finished"]

    again = FakeRoles(tmp_path)
    resumed = walk(cfg, reopen(store, tmp_path, "c2"), again)
    assert again.trained == [] and again.generated == 0, "a finished run is a no-op on resume"
    assert resumed.final_model == summary.final_model
    assert [r["mi_bound"]["mi_bound"] for r in resumed.reports] == [r["mi_bound"]["mi_bound"] for r in summary.reports]


def test_a_crashed_run_resumes_from_its_last_committed_stage(tmp_path):
    cfg = make_cfg(tmp_path)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    with pytest.raises(RuntimeError, match="iteration 2"):
        walk(cfg, store, FakeRoles(tmp_path, fail_training_at=2))
    assert store.is_committed("iter-0002/samples") and not store.is_committed("iter-0002/model")
    samples = (store.store.get_bytes("iter-0002/samples/examples.jsonl"))

    roles = FakeRoles(tmp_path)
    summary = walk(cfg, reopen(store, tmp_path, "c2"), roles)
    assert roles.trained == [2], "iteration 1 is not trained again"
    assert store.store.get_bytes("iter-0002/samples/examples.jsonl") == samples, "samples are not redrawn"
    assert summary.final_model == "iter-0002/model"


def test_a_corrupt_stage_is_discarded_and_computed_again(tmp_path):
    cfg = make_cfg(tmp_path)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    with pytest.raises(RuntimeError):
        walk(cfg, store, FakeRoles(tmp_path, fail_training_at=2))
    weights = tmp_path / "runs" / "r" / "iter-0001" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"XXXX")  # same size, other bytes: only sha256 can tell

    roles = FakeRoles(tmp_path)
    summary = walk(cfg, reopen(store, tmp_path, "c2"), roles)
    assert roles.trained == [1, 2], "the corrupt model was recomputed, then iteration 2 went on"
    assert summary.final_model == "iter-0002/model"
    fresh = reopen(store, tmp_path, "c3")
    assert fresh.fetch("iter-0001/model") is not None, "the recomputed stage verifies"


def test_a_degenerate_iteration_is_rolled_back(tmp_path):
    cfg = make_cfg(tmp_path, iterations=3, on_degeneration="rollback")
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    roles = FakeRoles(tmp_path, degenerate_from=2)
    summary = walk(cfg, store, roles)
    assert store.eval_report(2)["degeneration"]["action"] == "rollback"
    assert EVASIVE in json.dumps(store.eval_report(2)["samples"])
    # Iteration 3 samples from iteration 1's model again and trains from it (generation 2 once more: degenerate).
    assert store.manifest_meta("iter-0003/samples")["sampled_with"] == "iter-0001/model"
    assert store.manifest_meta("iter-0003/model")["init"] == "iter-0001/model"
    assert summary.final_model == "iter-0001/model"
    assert summary.stopped_early is None


def test_a_degenerate_iteration_stops_the_run_when_told_to(tmp_path):
    cfg = make_cfg(tmp_path, iterations=3, on_degeneration="stop")
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    roles = FakeRoles(tmp_path, degenerate_from=2)
    summary = walk(cfg, store, roles)
    assert roles.trained == [1, 2]
    assert summary.stopped_early == "degeneration guard tripped at iteration 2"
    assert summary.final_model == "iter-0002/model"
    assert not store.is_committed("iter-0003/samples")


def test_the_run_store_redacts_secrets_and_names_missing_or_taken_runs(tmp_path):
    cfg = make_cfg(tmp_path, storage__access_key_id="AKIDSECRET")
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    text = store.store.get_bytes("config.yaml").decode()
    assert "AKIDSECRET" not in text and "***" in text
    assert store.load_config().storage.access_key_id is None, "a redacted secret is not restored as '***'"
    with pytest.raises(Exception, match="already exists"):
        RunStore.create(cfg, "r")
    with pytest.raises(Exception, match="no run at"):
        RunStore.open(str(tmp_path / "runs" / "nothing"))


def test_each_iteration_launches_its_trainer_during_sampling_with_the_arguments_it_trains_with(tmp_path):
    """trainer.start_early: the loop asks the roles to launch iteration k's worker group once its sampler pool is
    up; the launch is only used by a `train` call with the same model, storage target and seed."""
    cfg = make_cfg(tmp_path)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c")
    roles = FakeRoles(tmp_path)
    walk(cfg, store, roles)
    assert len(roles.early) == 2 and roles.early == roles.train_args
    assert roles.early[0][0] is None and "iter-0001-model" in roles.early[1][0], "iteration 2 starts from 1's model"
    resumed = FakeRoles(tmp_path / "again")
    walk(cfg, reopen(store, tmp_path, "c2"), resumed)
    assert resumed.early == [], "no trainer is launched for a model that is committed"
