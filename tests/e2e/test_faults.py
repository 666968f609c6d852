"""Faults injected into real tiny runs; each test asserts on what the store holds afterwards.

- a sampler replica dies in the middle of iteration 1's sampling, and a training worker dies after step 2
  (Ray Train restarts from its last checkpoint): the run ends with exactly the reference run's samples and model;
- a committed model object is corrupted: resume finds it, discards the stage and trains it again, same weights;
- the S3 endpoint goes down for 10 s in the middle of the model upload: the upload is retried and completes, and
  the S3 secret appears in no output, log, stored config or stored object.
"""

import json
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
import torch
import yaml

from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, OutageProxy
from tests.support.tiny_models import tiny_run_config, write_tiny_queries

from .conftest import REFERENCE_SECTIONS
from .helpers import CLI, cli_env, committed, mi, model_tensors, read_examples, run_cli

pytestmark = pytest.mark.slow
STAGES = ("principles", "iter-0000/eval", "iter-0001/samples", "iter-0001/model", "iter-0001/eval")


def _same_model(a: Path, b: Path) -> None:
    ta, tb = model_tensors(a, 1), model_tensors(b, 1)
    assert ta.keys() == tb.keys()
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], rtol=0, atol=1e-6, msg=name)


def test_sampler_replica_and_training_worker_killed(reference_run, tiny_config, tmp_path):
    cfg, store = tiny_config(**REFERENCE_SECTIONS)
    faults = {"sampler_exit": {"call": 2, "marker": str(tmp_path / "sampler-died")},
              "train_exit": {"rank": 0, "step": 2, "marker": str(tmp_path / "worker-died"), "delay_s": 3}}
    out = run_cli(["run", str(cfg), "--run-id", "faulty"], SAMI_RAY_TEST_FAULTS=json.dumps(faults))
    assert (tmp_path / "sampler-died").exists() and (tmp_path / "worker-died").exists(), "a fault was not injected"
    assert "replacing it and retrying" in out.stdout + out.stderr
    run = store / "faulty"
    assert all(committed(run, s) for s in STAGES)
    got, want = read_examples(run, 1), read_examples(reference_run, 1)
    ids = [e["query"]["id"] for e in got]
    assert len(ids) == len(set(ids)), "an example was duplicated"
    assert got == want, "samples differ from the uninterrupted run: something was lost, duplicated or reseeded"
    _same_model(run, reference_run)
    assert mi(run, 1) == pytest.approx(mi(reference_run, 1), abs=1e-4)


def test_corrupt_checkpoint_is_discarded_and_trained_again(reference_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference_run, run)
    weights = sorted((run / "iter-0001/model").glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors
    weights.write_bytes(bytes(data))

    out = run_cli(["resume", str(run)])
    text = out.stdout + out.stderr
    assert "sha256" in text and weights.name in text and "computing it again" in text
    assert committed(run, "iter-0001/model")
    _same_model(run, reference_run)


def test_s3_down_for_10s_during_the_model_upload_and_no_secret_leaks(moto_process, tiny_llama, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_process.endpoint.url, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name=REGION)
    s3.create_bucket(Bucket="sami-runs")
    proxy = OutageProxy(moto_process.port, trigger=b"/iter-0001/model/model", outage_s=10.0)
    queries = write_tiny_queries(tmp_path / "queries.jsonl", 8)
    # Credentials in the config file, as some users write them: they must still leak nowhere.
    cfg = tiny_run_config(tiny_llama, queries, "s3://sami-runs/runs", storage={
        "endpoint_url": proxy.url, "region": REGION, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
        "retry_total_seconds": 60})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(CLI + ["run", str(path), "--run-id", "s3run"], capture_output=True, text=True, timeout=900,
                       env=cli_env())
    proxy.close()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert proxy.outages == 1, "the outage never happened: the test proves nothing"

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sami-runs", Prefix="runs/s3run/")["Contents"]]
    for stage in STAGES:
        assert f"runs/s3run/{stage}/MANIFEST.json" in keys, stage
    manifest = json.loads(s3.get_object(Bucket="sami-runs", Key="runs/s3run/iter-0001/model/MANIFEST.json")["Body"]
                          .read())
    for f in manifest["files"]:
        head = s3.head_object(Bucket="sami-runs", Key=f"runs/s3run/iter-0001/model/{f['path']}")
        assert head["ContentLength"] == f["size"], f["path"]

    stored_config = s3.get_object(Bucket="sami-runs", Key="runs/s3run/config.yaml")["Body"].read().decode()
    assert "***" in stored_config
    leaks = ["stdout/stderr of the run"] if SECRET_KEY in p.stdout + p.stderr else []
    for key in keys:
        if SECRET_KEY.encode() in s3.get_object(Bucket="sami-runs", Key=key)["Body"].read():
            leaks.append(f"s3://sami-runs/{key}")
    logs = Path("/tmp/ray/session_latest/logs")
    for f in logs.rglob("*") if logs.exists() else []:
        if f.is_file() and SECRET_KEY.encode() in f.read_bytes():
            leaks.append(str(f))
    assert not leaks, f"the S3 secret appears in: {leaks}"
