"""CheckpointStore against a real S3 HTTP endpoint (moto server on 127.0.0.1): multipart, faults, corruption, Ray."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from sami_ray.errors import StoreError
from sami_ray.storage import MANIFEST_NAME, CheckpointStore, RunStore, StoreNotFound, list_runs
from tests.support.s3 import SECRET_KEY, free_port

MB = 1024 * 1024


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture
def bucket(s3_server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def store(s3_server, bucket) -> CheckpointStore:
    return CheckpointStore.open(f"s3://{bucket}/runs", **s3_server.store_kwargs(retry_total_seconds=5))


def test_objects_and_stages_round_trip(store, s3_server, bucket, tmp_path):
    assert store.uri == f"s3://{bucket}/runs" and store.url("a/b") == f"s3://{bucket}/runs/a/b"
    run = store.child("run-1")
    run.put_json("config.yaml", {"x": 1})
    run.put_bytes("iter-0001/train_metrics.json", b"{}")
    assert run.get_json("config.yaml") == {"x": 1} and run.exists("config.yaml") and not run.exists("nope")
    with pytest.raises(StoreNotFound, match=f"s3://{bucket}/runs/run-1/nope"):
        run.get_bytes("nope")
    src = _folder(tmp_path / "src", {"a.txt": b"a", "sub/b.bin": os.urandom(1000)})
    run.commit_stage("iter-0001/model", src, meta={"k": 1})
    with pytest.raises(StoreError, match="already committed"):
        run.commit_stage("iter-0001/model", src)
    assert list_runs(store) == ["run-1"]
    assert store.committed_stages("run-1") == ["iter-0001/model"]
    assert RunStore(run, cache_dir=tmp_path / "cache").latest_model() == (1, "iter-0001/model")
    out = run.fetch_stage("iter-0001/model", tmp_path / "dl")
    assert (out / "sub/b.bin").read_bytes() == (src / "sub/b.bin").read_bytes()
    # The objects sit under the prefix on the endpoint, manifest included.
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert f"runs/run-1/iter-0001/model/{MANIFEST_NAME}" in keys and "runs/run-1/config.yaml" in keys
    run.delete_prefix("iter-0001")
    assert run.list() == ["config.yaml"]


def test_200mb_folder_round_trip_uses_multipart(s3_server, bucket, tmp_path):
    store = CheckpointStore.open(f"s3://{bucket}/big", **s3_server.store_kwargs(
        multipart_threshold_mb=16, multipart_chunk_mb=16, max_concurrency=4))
    files = {"model-00001.safetensors": 150 * MB, "model-00002.safetensors": 48 * MB, "config.json": 2000}
    files.update({f"tok/part{i}.txt": 100_000 + i for i in range(20)})
    src = tmp_path / "src"
    for rel, size in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(src / rel, "wb") as f:
            for off in range(0, size, 8 * MB):
                f.write(os.urandom(min(8 * MB, size - off)))
    total = sum(files.values())
    assert total >= 200 * 1000 * 1000

    m = store.commit_stage("run/iter-0001/model", src)
    assert m.total_bytes == total
    head = s3_server.client().head_object(Bucket=bucket, Key="big/run/iter-0001/model/model-00001.safetensors")
    assert head["ETag"].strip('"').endswith("-10")  # 150 MB in 16 MB parts: a multipart upload
    out = store.fetch_stage("run/iter-0001/model", tmp_path / "dl")
    for rel in files:
        assert _sha(out / rel) == _sha(src / rel) == next(f.sha256 for f in m.files if f.path == rel)


def test_object_corrupted_on_server_is_detected(store, s3_server, bucket, tmp_path):
    data = os.urandom(4000)
    store.commit_stage("r/iter-0001/model", _folder(tmp_path / "src", {"w.bin": data, "c.json": b"{}"}))
    key = "runs/r/iter-0001/model/w.bin"
    flipped = bytes([data[0] ^ 1]) + data[1:]
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=flipped)  # same size, one bit changed
    with pytest.raises(StoreError, match="sha256") as e:
        store.fetch_stage("r/iter-0001/model", tmp_path / "dl" / "model")
    assert f"s3://{bucket}/{key}" in str(e.value)
    assert list((tmp_path / "dl").iterdir()) == []  # no partial folder handed out
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=data[:10])
    with pytest.raises(StoreError, match="size 10"):
        store.fetch_stage("r/iter-0001/model", tmp_path / "dl" / "model")


def test_wrong_bucket_fails_at_once(s3_server):
    store = CheckpointStore.open("s3://no-such-bucket-here/p", **s3_server.store_kwargs(retry_total_seconds=30))
    for op in (lambda: store.put_bytes("k", b""), lambda: store.get_bytes("k"), lambda: store.exists("k"),
               lambda: store.list(""), lambda: store.is_committed("iter-0001/model")):
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist") as e:
            op()
        assert time.monotonic() - t0 < 5
        assert "s3://no-such-bucket-here/p" in str(e.value)


def test_missing_credentials_fail_at_once(s3_server, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = CheckpointStore.open("s3://some-bucket/p", endpoint_url=s3_server.url, retry_total_seconds=30)
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="no S3 credentials found") as e:
        store.get_bytes("config.yaml")
    assert time.monotonic() - t0 < 5 and "s3://some-bucket/p/config.yaml" in str(e.value)
    with pytest.raises(StoreError, match="secret_access_key is not"):
        CheckpointStore.open("s3://some-bucket/p", endpoint_url=s3_server.url, access_key_id="AKIA")


def test_unreachable_endpoint_retried_within_bounded_time(caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    store = CheckpointStore.open("s3://bucket-x/p", endpoint_url=url, access_key_id="AKIA",
                                 secret_access_key=SECRET_KEY, retry_total_seconds=2, connect_timeout=1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sami_ray.storage"):
        with pytest.raises(StoreError, match="failed after [0-9]+ attempts") as e:
            store.put_bytes("k", b"v")
    assert 2.0 <= time.monotonic() - t0 < 10  # the whole budget is used, and not much more
    assert "s3://bucket-x/p/k" in str(e.value) and "retry_total_seconds=2" in str(e.value)
    assert "retry" in caplog.text


def test_credentials_never_printed(s3_server, bucket, tmp_path, caplog):
    store = CheckpointStore.open(f"s3://{bucket}/p", **s3_server.store_kwargs(retry_total_seconds=1))
    texts = [repr(store), repr(store._b), repr(store._b.conn.s), str(store.__dict__)]
    with caplog.at_level(logging.DEBUG, logger="sami_ray"):
        store.commit_stage("s", _folder(tmp_path / "src", {"f": b"1"}))
        for op in (lambda: CheckpointStore.open("s3://missing-bkt/p", **s3_server.store_kwargs()).get_bytes("k"),
                   lambda: CheckpointStore.open("s3://x-bkt/p", **s3_server.store_kwargs(
                       endpoint_url=f"http://127.0.0.1:{free_port()}", retry_total_seconds=0.5)).get_bytes("k")):
            with pytest.raises(StoreError) as e:
                op()
            texts.append(str(e.value))
    texts.append(caplog.text)
    assert all(SECRET_KEY not in t for t in texts)


def test_abort_partial_uploads_only_under_prefix(store, s3_server, bucket):
    client = s3_server.client()
    mine = client.create_multipart_upload(Bucket=bucket, Key="runs/r/iter-0001/model/w.bin")
    client.upload_part(Bucket=bucket, Key="runs/r/iter-0001/model/w.bin", UploadId=mine["UploadId"],
                       PartNumber=1, Body=b"x" * 1000)
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/w.bin")
    assert store.abort_partial_uploads() == 1
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["elsewhere/w.bin"]


def test_prune_on_s3(store, tmp_path):
    run = store.child("r")
    for k in (1, 2, 3):
        run.put_bytes(f"iter-{k:04d}/train/checkpoint_0/x.pt", b"x")
        run.commit_stage(f"iter-{k:04d}/model", _folder(tmp_path / f"m{k}", {"w": b"w"}))
    runs = RunStore(run, cache_dir=tmp_path / "cache")
    assert runs.prune_train_checkpoints(keep_last=1) == ["iter-0001/train", "iter-0002/train"]
    assert [k for k in run.list() if "/train/" in k] == ["iter-0003/train/checkpoint_0/x.pt"]
    assert runs.latest_model() == (3, "iter-0003/model")


def test_transient_outage_is_retried(moto_process, tmp_path):
    """A server that stops answering for a moment costs a retry, not the run."""
    ep = moto_process.endpoint
    bucket = ep.new_bucket()
    store = CheckpointStore.open(f"s3://{bucket}/p", **ep.store_kwargs(
        retry_total_seconds=30, connect_timeout=1, read_timeout=1))
    moto_process.freeze()
    threading.Timer(2.5, moto_process.thaw).start()
    t0 = time.monotonic()
    store.put_bytes("k", b"v")
    assert time.monotonic() - t0 > 1.5  # it did wait out the outage
    assert store.get_bytes("k") == b"v"


def test_server_frozen_mid_multipart_upload_leaves_nothing_committed(moto_process, tmp_path):
    ep = moto_process.endpoint
    bucket = ep.new_bucket()
    store = CheckpointStore.open(f"s3://{bucket}/runs", **ep.store_kwargs(
        multipart_threshold_mb=5, multipart_chunk_mb=5, max_concurrency=2, retry_total_seconds=3,
        connect_timeout=1, read_timeout=1))
    run = store.child("r")
    run.commit_stage("iter-0001/model", _folder(tmp_path / "m1", {"w.bin": b"one"}))
    src = _folder(tmp_path / "m2", {"a.txt": b"a" * 100, "w.bin": os.urandom(30 * MB), "z.txt": b"z"})
    sent = {"n": 0}

    def stop_after_a_part(path: str, n: int) -> None:
        sent["n"] += n
        if path == "w.bin" and sent["n"] > 6 * MB and sent.get("frozen") is None:
            sent["frozen"] = True
            moto_process.freeze()

    t0 = time.monotonic()
    with pytest.raises(StoreError, match=f"s3://{bucket}/runs/r/iter-0002/model") as e:
        run.commit_stage("iter-0002/model", src, progress=stop_after_a_part)
    assert time.monotonic() - t0 < 60 and "failed after" in str(e.value)
    assert sent.get("frozen")
    moto_process.thaw()

    # Nothing half-written counts as committed; the previous iteration is still the latest.
    assert not run.is_committed("iter-0002/model")
    assert run.committed_stages() == ["iter-0001/model"]
    assert RunStore(run, cache_dir=tmp_path / "cache").latest_model() == (1, "iter-0001/model")
    assert not ep.client().list_objects_v2(Bucket=bucket, Prefix=f"runs/r/iter-0002/model/{MANIFEST_NAME}").get(
        "Contents")
    run.abort_partial_uploads()
    assert not ep.client().list_multipart_uploads(Bucket=bucket).get("Uploads")

    # The same stage retried commits, and downloads verified.
    run.commit_stage("iter-0002/model", src)
    assert RunStore(run, cache_dir=tmp_path / "cache").latest_model() == (2, "iter-0002/model")
    out = run.fetch_stage("iter-0002/model", tmp_path / "dl")
    assert _sha(out / "w.bin") == _sha(src / "w.bin")


def test_server_killed_mid_upload_then_restarted(moto_process, tmp_path):
    ep = moto_process.endpoint
    bucket = ep.new_bucket()
    store = CheckpointStore.open(f"s3://{bucket}/runs", **ep.store_kwargs(retry_total_seconds=2, connect_timeout=1,
                                                                          read_timeout=2))
    src = _folder(tmp_path / "src", {f"f{i}.bin": os.urandom(200_000) for i in range(8)})
    done: list[str] = []

    def kill_after_two(path: str, n: int) -> None:
        done.append(path)
        if len(done) == 2:
            moto_process.kill()

    with pytest.raises(StoreError, match=f"s3://{bucket}/runs/r/iter-0001/samples") as e:
        store.commit_stage("r/iter-0001/samples", src, progress=kill_after_two)
    assert "failed after" in str(e.value)

    moto_process.start()  # the same port; moto keeps no state across a restart, so the bucket is made again
    ep.client().create_bucket(Bucket=bucket)
    assert not store.is_committed("r/iter-0001/samples") and list_runs(store) == []
    m = store.commit_stage("r/iter-0001/samples", src)  # the same store object, retried
    assert len(m.files) == 8 and store.committed_stages("r") == ["iter-0001/samples"]
    out = store.fetch_stage("r/iter-0001/samples", tmp_path / "dl")
    assert all((out / f).read_bytes() == (src / f).read_bytes() for f in (p.name for p in src.iterdir()))


def test_ray_train_checkpoint_lands_under_run_prefix(s3_server, bucket, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_loop(config: dict) -> None:  # nested, so Ray ships it by value to a worker that cannot import tests
        import tempfile

        import ray.train

        with tempfile.TemporaryDirectory() as d:
            Path(d, "weights.bin").write_bytes(b"w" * 5000)
            ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(d))

    run = CheckpointStore.open(f"s3://{bucket}/runs", **s3_server.store_kwargs()).child("run-7")
    fs, base = run.pyarrow_filesystem()
    assert base == f"{bucket}/runs/run-7"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2)
    try:
        result = TorchTrainer(
            train_loop, scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
            run_config=RunConfig(name="train", storage_path=f"{base}/iter-0001", storage_filesystem=fs),
        ).fit()
    finally:
        if started:
            ray.shutdown()
    assert result.checkpoint is not None
    assert result.checkpoint.path.startswith(f"{base}/iter-0001/train/")
    keys = run.list("iter-0001/train")
    ckpt = [k for k in keys if k.endswith("/weights.bin")]
    assert len(ckpt) == 1 and ckpt[0].startswith("iter-0001/train/checkpoint_"), keys
    assert run.get_bytes(ckpt[0]) == b"w" * 5000
