"""CheckpointStore on a local folder: atomic writes, manifests written last, verified downloads, runs and pruning."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from sami_ray.errors import StoreError, UserError
from sami_ray.storage import MANIFEST_NAME, CheckpointStore, RunStore, StoreNotFound, list_runs


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


FILES = {"config.json": b'{"a": 1}', "model.safetensors": bytes(range(256)) * 400, "tok/vocab.txt": b"a\nb\n"}


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore.open(tmp_path / "store")


def test_objects_round_trip(store, tmp_path):
    store.put_bytes("a/b.bin", b"xyz")
    store.put_json("a/c.json", {"k": [1, 2], "s": "é"})
    assert store.get_bytes("a/b.bin") == b"xyz"
    assert store.get_json("./a//c.json") == {"k": [1, 2], "s": "é"}
    assert store.exists("a/b.bin") and not store.exists("a/none") and not store.exists("a")
    assert store.list("a") == ["a/b.bin", "a/c.json"]
    assert store.list("a/b") == []  # a prefix is a folder, never a partial name
    store.put_bytes("a/b.bin", b"new")  # overwrite in place
    assert store.get_bytes("a/b.bin") == b"new"
    store.delete_prefix("a")
    assert store.list("") == []
    with pytest.raises(StoreNotFound) as e:
        store.get_bytes("a/b.bin")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, UserError)
    assert str(tmp_path / "store" / "a" / "b.bin") in str(e.value)


def test_keys_stay_inside_the_store(store):
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(StoreError):
            store.put_bytes(bad, b"")
    with pytest.raises(StoreError, match="whole store"):
        store.delete_prefix(".")


def test_uri_child_and_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = CheckpointStore.open("runs")
    assert store.uri == str(tmp_path / "runs")  # relative paths are pinned when opened
    run = store.child("run-1")
    assert run.uri == str(tmp_path / "runs" / "run-1")
    assert run.url("iter-0001/model") == str(tmp_path / "runs/run-1/iter-0001/model")
    assert store.child(".").uri == store.uri
    assert CheckpointStore.open(f"file://{tmp_path}/runs").uri == store.uri
    with pytest.raises(StoreError, match="only local paths"):
        CheckpointStore.open("gs://bucket/x")
    run.put_bytes("f", b"1")
    assert store.get_bytes("run-1/f") == b"1"


def test_from_config_reads_storage_section(tmp_path):
    from sami_ray.config import StorageConfig

    cfg = StorageConfig(uri=str(tmp_path / "s"), keep_last_checkpoints=3)
    store = CheckpointStore.from_config(cfg)
    assert store.uri == str(tmp_path / "s") and store.is_local
    assert store._keep_last == 3


def test_failed_write_keeps_old_value_and_leaves_no_temp(store, tmp_path):
    store.put_bytes("k", b"old")
    (tmp_path / "store" / "d").mkdir()
    with pytest.raises(StoreError):
        store.put_bytes("d", b"cannot replace a folder")
    assert store.get_bytes("k") == b"old"
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")] == []


def test_commit_and_fetch_round_trip(store, tmp_path):
    src = _folder(tmp_path / "src", FILES)
    m = store.commit_stage("iter-0001/model", src, meta={"step": 3})
    assert sorted(f.path for f in m.files) == sorted(FILES)
    for f in m.files:
        assert f.size == len(FILES[f.path]) and f.sha256 == hashlib.sha256(FILES[f.path]).hexdigest()
    stored = json.loads(store.get_bytes(f"iter-0001/model/{MANIFEST_NAME}"))
    assert stored["meta"] == {"step": 3} and stored["created"] and len(stored["files"]) == 3
    assert store.is_committed("iter-0001/model")
    assert store.read_manifest("iter-0001/model").total_bytes == sum(map(len, FILES.values()))

    out = store.fetch_stage("iter-0001/model", tmp_path / "dl" / "model")
    assert out == tmp_path / "dl" / "model"
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == FILES
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no temp folders left beside it


def test_fetch_downloads_only_manifest_files_and_replaces_destination(store, tmp_path):
    store.commit_stage("s", _folder(tmp_path / "src", FILES))
    store.put_bytes("s/stray.bin", b"not in the manifest")
    dest = _folder(tmp_path / "dest", {"old.txt": b"old"})
    store.fetch_stage("s", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(FILES)


def test_recommit_refused_unless_overwrite(store, tmp_path):
    store.commit_stage("s", _folder(tmp_path / "a", {"x": b"1", "y": b"2"}))
    with pytest.raises(StoreError, match="already committed"):
        store.commit_stage("s", _folder(tmp_path / "b", {"x": b"3"}))
    assert store.get_bytes("s/x") == b"1"
    m = store.commit_stage("s", tmp_path / "b", overwrite=True)
    assert [f.path for f in m.files] == ["x"]
    assert store.list("s") == ["s/MANIFEST.json", "s/x"]  # files of the old commit are gone


def test_failure_mid_commit_leaves_stage_uncommitted_then_retry_commits(store, tmp_path):
    src = _folder(tmp_path / "src", {f"f{i}.bin": bytes([i]) * 1000 for i in range(5)})
    seen = []

    def crash_on_third(path: str, n: int) -> None:
        seen.append(path)
        if len(seen) == 3:
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.commit_stage("iter-0001/samples", src, progress=crash_on_third)
    assert store.list("iter-0001/samples")  # some files made it ...
    assert not store.exists(f"iter-0001/samples/{MANIFEST_NAME}")  # ... but no manifest
    assert not store.is_committed("iter-0001/samples")
    assert store.committed_stages() == []
    with pytest.raises(StoreError, match="not committed"):
        store.fetch_stage("iter-0001/samples", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()

    m = store.commit_stage("iter-0001/samples", src)  # the same stage, retried
    assert len(m.files) == 5 and store.committed_stages() == ["iter-0001/samples"]


def test_corrupted_file_detected_and_nothing_returned(store, tmp_path):
    store.commit_stage("m", _folder(tmp_path / "src", FILES))
    path = tmp_path / "store" / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256") as e:
        store.fetch_stage("m", tmp_path / "dl" / "m")
    assert str(path) in str(e.value)
    assert not (tmp_path / "dl" / "m").exists() and list((tmp_path / "dl").iterdir()) == []

    path.write_bytes(bytes(data[:50]))  # truncated
    with pytest.raises(StoreError, match="size 50"):
        store.fetch_stage("m", tmp_path / "dl" / "m")


def test_garbage_manifest_is_an_error_not_a_guess(store, tmp_path):
    store.commit_stage("m", _folder(tmp_path / "src", FILES))
    store.put_bytes(f"m/{MANIFEST_NAME}", b"{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        store.is_committed("m")
    store.put_json(f"m/{MANIFEST_NAME}", {"version": 1, "stage": "m", "files": [
        {"path": "../escape", "size": 1, "sha256": "0"}]})
    with pytest.raises(StoreError, match="bad file path"):
        store.fetch_stage("m", tmp_path / "dl")
    assert not (tmp_path / "escape").exists()


def test_runs_committed_stages_and_latest(store, tmp_path):
    src = _folder(tmp_path / "src", {"w": b"w"})
    run = store.child("run-a")
    run.put_bytes("config.yaml", b"run: {}")
    for stage in ("principles", "iter-0001/samples", "iter-0001/model", "iter-0002/model", "iter-0010/model"):
        run.commit_stage(stage, src)
    run.put_bytes("iter-0011/model/w", b"half written, no manifest")
    store.child("run-b").commit_stage("principles", src)
    store.put_bytes("not-a-run/file", b"")

    assert list_runs(store) == ["run-a", "run-b"]
    assert store.committed_stages("run-a") == ["iter-0001/model", "iter-0001/samples", "iter-0002/model",
                                               "iter-0010/model", "principles"]
    assert run.committed_stages() == store.committed_stages("run-a")
    assert RunStore(run, cache_dir=tmp_path / "cache").latest_model() == (10, "iter-0010/model")
    assert RunStore(store.child("run-b"), cache_dir=tmp_path / "cache").latest_model() is None


def test_prune_keeps_last_k_train_checkpoints(store, tmp_path):
    run = store.child("r")
    for k in (1, 2, 3, 10):
        for c in (1, 2):
            run.put_bytes(f"iter-{k:04d}/train/checkpoint_{c}/shard.pt", b"x")
        run.commit_stage(f"iter-{k:04d}/model", _folder(tmp_path / "m", {"w": b"w"}))
    deleted = RunStore(run, cache_dir=tmp_path / "cache").prune_train_checkpoints(keep_last=2)
    assert deleted == ["iter-0001/train", "iter-0002/train"]
    assert sorted({k.split("/")[0] for k in run.list() if "/train/" in k}) == ["iter-0003", "iter-0010"]
    assert len(run.committed_stages()) == 4  # the models are untouched
    # A finer pattern: the last checkpoint folder of the run across iterations.
    assert run.prune(".", "iter-*/train/checkpoint_*", keep_last=1) == [
        "iter-0003/train/checkpoint_1", "iter-0003/train/checkpoint_2", "iter-0010/train/checkpoint_1"]
    assert [k for k in run.list() if "/train/" in k] == ["iter-0010/train/checkpoint_2/shard.pt"]
    # keep_last = 0 (the default): no training folder outlives the model stage it led to
    assert RunStore(run, cache_dir=tmp_path / "cache").prune_train_checkpoints(keep_last=0) == ["iter-0010/train"]
    assert not [k for k in run.list() if "/train/" in k] and len(run.committed_stages()) == 4
    with pytest.raises(StoreError):
        run.prune(".", "iter-*/train", keep_last=-1)


def test_temp_files_are_invisible_and_cleaned(store, tmp_path):
    store.put_bytes("a/x", b"1")
    (tmp_path / "store" / "a" / ".sami-tmp-y.1234").write_bytes(b"partial")
    assert store.list("a") == ["a/x"]
    assert store.abort_partial_uploads() == 1
    assert sorted(p.name for p in (tmp_path / "store" / "a").iterdir()) == ["x"]


def test_pyarrow_filesystem_is_the_same_folder(store):
    import pyarrow.fs

    fs, base = store.child("run").pyarrow_filesystem()
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and base == store.url("run")
    fs.create_dir(f"{base}/iter-0001/train")
    with fs.open_output_stream(f"{base}/iter-0001/train/ck.bin") as f:
        f.write(b"ray")
    assert store.get_bytes("run/iter-0001/train/ck.bin") == b"ray"


def test_retries_are_bounded_in_time_and_skip_user_errors():
    from sami_ray.storage.retry import with_retries

    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    transient = lambda e: isinstance(e, ConnectionError)  # noqa: E731
    assert with_retries(flaky, "s3://b/k", "read", 10, transient, str, first_delay=0.01) == "ok"
    assert len(calls) == 3

    def down() -> None:
        raise ConnectionError("refused")

    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"s3://b/k: read failed after \d+ attempts .*refused"):
        with_retries(down, "s3://b/k", "read", 0.5, transient, str, first_delay=0.01)
    assert 0.5 <= time.monotonic() - t0 < 2

    def wrong() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        with_retries(wrong, "s3://b/k", "read", 10, transient, str)


def test_link_or_copy_tree_links_on_one_file_system_and_copies_across(tmp_path, monkeypatch):
    """Checkpoints and exported models reach the run's folder as hard links: the bytes are not written twice."""
    import os

    from sami_ray.atomic import link_or_copy_tree

    src = tmp_path / "export"
    (src / "model").mkdir(parents=True)
    (src / "model" / "model.safetensors").write_bytes(b"w" * 1000)
    (src / "marker.json").write_text("{}")
    linked = link_or_copy_tree(src, tmp_path / "ckpt" / "checkpoint_1")
    got = linked / "model" / "model.safetensors"
    assert got.read_bytes() == b"w" * 1000
    assert got.stat().st_ino == (src / "model" / "model.safetensors").stat().st_ino  # one file, two names

    def no_links(a, b):  # as across file systems (EXDEV)
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copied = link_or_copy_tree(src, tmp_path / "other")
    assert (copied / "marker.json").read_text() == "{}"
    assert (copied / "model" / "model.safetensors").stat().st_ino != got.stat().st_ino
    import shutil

    shutil.rmtree(src)  # the source goes, as the worker's temporary export folder does: both copies stay whole
    assert got.read_bytes() == b"w" * 1000 and (copied / "model" / "model.safetensors").read_bytes() == b"w" * 1000
