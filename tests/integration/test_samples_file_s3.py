"""sampler.samples_file named by an s3:// URI: iteration 1 imports the object from a real S3 HTTP endpoint (moto
server), reached with the run's storage settings; a missing object or a URI without a key is an error naming it,
and nothing is committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_ray.config import config_from_dict
from sami_ray.errors import UserError
from sami_ray.sami.data import load_examples
from sami_ray.stages import StageLoop
from sami_ray.storage.run import RunStore, stage_key
from tests.support.fake_roles import FakeRoles
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "reference" / "generated_training_data.json"


def _cfg(tmp_path: Path, endpoint: str, samples_file: str):
    return config_from_dict({
        "run": {"name": "imp-s3", "iterations": 1, "seed": 1},
        "models": {"policy": {"path": "fake-policy"}},
        "task": {"queries": {"source": "builtin:howto", "held_out": 4, "limit": 12}},
        "constitutions": {"builtin": ["bullets", "concise"], "write_with_writer": False, "n": 2,
                          "mode": "all_or_none"},
        "sampler": {"samples_file": samples_file},
        "evaluation": {"plots": False, "on_degeneration": "warn"},
        # The run lives on local disk; the storage settings are what reach the bucket holding the samples.
        "storage": {"uri": str(tmp_path / "runs"), "endpoint_url": endpoint, "region": REGION,
                    "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
    })


def _run(tmp_path: Path, endpoint: str, samples_file: str) -> tuple[RunStore, list[str]]:
    cfg = _cfg(tmp_path, endpoint, samples_file)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "cache")
    said: list[str] = []
    StageLoop(cfg, store, FakeRoles(tmp_path), say=said.append).execute()
    return store, said


def test_iteration_one_imports_the_samples_from_s3(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="reference/tl_dr/training_data.json", Body=FIXTURE.read_bytes())
    uri = f"s3://{bucket}/reference/tl_dr/training_data.json"
    store, said = _run(tmp_path, s3_server.url, uri)
    first = load_examples(store.fetch(stage_key(1, "samples")) / "examples.jsonl")
    assert [e.query.id for e in first] == ["0", "2", "5"]
    assert first[0].responses == [x["response"] for x in json.loads(FIXTURE.read_text())["0"]]
    assert store.store.read_manifest(stage_key(1, "samples")).meta["sampled_with"] == uri
    assert any(f"imported from {uri}" in line for line in said), said
    assert not list((tmp_path / "cache").rglob("samples.json"))  # the download went with its temporary folder


@pytest.mark.parametrize("key,needle", [("reference/nope.json", "no such object"),
                                        ("", "name a file in the bucket")])
def test_a_missing_object_or_a_bucket_alone_is_named(s3_server, tmp_path, key, needle):
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/{key}"
    cfg = _cfg(tmp_path, s3_server.url, uri)
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=rf"sampler\.samples_file {uri}: {needle}"):
        StageLoop(cfg, store, FakeRoles(tmp_path), say=lambda _m: None).execute()
    assert not store.is_committed(stage_key(1, "samples"))
