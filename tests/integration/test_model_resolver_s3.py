"""resolve_model_path for s3:// model folders against a real S3 HTTP endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from sami_ray.config import StorageConfig
from sami_ray.errors import CorruptStageError, StoreError, UserError
from sami_ray.model_sources import MARKER
from sami_ray.models import resolve_model_path
from sami_ray.storage import CheckpointStore
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY


def _files(seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b'{"version": "1.0"}',
            "model.safetensors": rng.randbytes(300_000), "sub/extra.txt": b"x"}


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != MARKER}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMI_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "s3"


@pytest.fixture
def committed(s3_server, tmp_path) -> tuple[str, dict[str, bytes]]:
    """A committed run stage s3://b/runs/r/iter-0001/model (with MANIFEST.json)."""
    bucket = s3_server.new_bucket()
    files = _files()
    store = CheckpointStore.open(f"s3://{bucket}/runs/r/iter-0001", **s3_server.store_kwargs())
    store.commit_stage("model", _folder(tmp_path / "src", files))
    return f"s3://{bucket}/runs/r/iter-0001/model", files


@pytest.fixture
def fetches(monkeypatch) -> list[str]:
    """Every CheckpointStore.fetch_stage call, slowed a little so that concurrent callers overlap."""
    calls: list[str] = []
    real = CheckpointStore.fetch_stage

    def spy(self, rel_stage, local_dir, progress=None):
        calls.append(self.url(rel_stage))
        time.sleep(0.3)
        return real(self, rel_stage, local_dir, progress)

    monkeypatch.setattr(CheckpointStore, "fetch_stage", spy)
    return calls


def _storage(s3_server, uri: str = "s3://unused") -> StorageConfig:
    return StorageConfig(uri=uri, **s3_server.store_kwargs())


def test_committed_prefix_is_fetched_verified_and_once(s3_server, cache, committed, fetches):
    uri, files = committed
    folder = resolve_model_path(uri, storage=_storage(s3_server))
    assert folder.parent == cache and folder.name.startswith("r-iter-0001-model-")
    assert _read(folder) == files and (folder / MARKER).exists()
    assert resolve_model_path(uri + "/", storage=_storage(s3_server)) == folder  # cached; same URI
    assert fetches == [uri]


def test_recommitted_prefix_is_fetched_again(s3_server, cache, committed, tmp_path):
    uri, _ = committed
    kw = s3_server.store_kwargs()
    folder = resolve_model_path(uri, storage=kw)
    new = _files(seed=1)
    store = CheckpointStore.open(uri.rsplit("/", 1)[0], **kw)
    store.commit_stage("model", _folder(tmp_path / "new", new), overwrite=True)
    assert resolve_model_path(uri, storage=kw) == folder
    assert _read(folder) == new


def test_object_corrupted_after_commit_is_named(s3_server, cache, committed):
    uri, files = committed
    bucket, key = uri[5:].split("/", 1)
    s3_server.client().put_object(Bucket=bucket, Key=f"{key}/model.safetensors",
                                  Body=random.Random(9).randbytes(len(files["model.safetensors"])))
    with pytest.raises(CorruptStageError) as e:
        resolve_model_path(uri, storage=_storage(s3_server))
    msg = str(e.value)
    assert msg.startswith(f"model {uri}: {uri}/model.safetensors: sha256 ")
    assert isinstance(e.value, UserError) and SECRET_KEY not in msg
    assert not list(cache.rglob(MARKER))  # nothing is taken for a whole copy
    assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_prefix_without_manifest_is_copied_and_size_checked(s3_server, cache):
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    files = _files(seed=2)
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"models/tiny/{rel}", Body=data)
    client.put_object(Bucket=bucket, Key="models/tiny-other/config.json", Body=b"{}")  # a sibling, not ours
    uri = f"s3://{bucket}/models/tiny"
    folder = resolve_model_path(uri, storage=s3_server.store_kwargs())
    assert _read(folder) == files
    assert resolve_model_path(uri, storage=s3_server.store_kwargs()) == folder
    with pytest.raises(UserError, match=rf"^model s3://{bucket}/models/none: no objects under this prefix"):
        resolve_model_path(f"s3://{bucket}/models/none", storage=s3_server.store_kwargs())


def test_default_aws_chain_and_endpoint_variable(s3_server, cache, committed, monkeypatch):
    uri, files = committed
    for name, value in {"AWS_ENDPOINT_URL_S3": s3_server.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                        "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    assert _read(resolve_model_path(uri)) == files


def test_concurrent_resolvers_download_once(s3_server, cache, committed, fetches):
    uri, files = committed
    out: list[Path] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            out.append(resolve_model_path(uri, storage=_storage(s3_server)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fetches == [uri] and len(out) == 2 and out[0] == out[1]
    assert _read(out[0]) == files


def test_missing_bucket_is_named(s3_server, cache):
    with pytest.raises(StoreError, match=r"^model s3://no-such-bucket-here/m: .*no-such-bucket-here"):
        resolve_model_path("s3://no-such-bucket-here/m", storage=s3_server.store_kwargs())
    with pytest.raises(UserError, match=r"^model s3://abc: name the model's folder"):
        resolve_model_path("s3://abc", storage=s3_server.store_kwargs())
