"""resolve_model_path: local folders, builtin:NAME, hub ids from the hub's own cache (offline), and the
fetch-once lock. S3 folders: tests/integration/test_model_resolver_s3.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from sami_ray.errors import UserError
from sami_ray.model_sources import fetch_once, parse_hub_id
from sami_ray.models import resolve_model_path
from tests.support.tiny_models import tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache in tmp_path, offline: huggingface_hub reads its settings at import, so the constants
    are patched along with the environment."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SAMI_RAY_CACHE", str(tmp_path / "sami-cache"))
    return cache


def _put_in_hub_cache(cache: Path, repo_id: str, model: Path, commit: str = COMMIT) -> Path:
    """The hub cache's own layout: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _model_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "model.safetensors").write_bytes(b"\0" * 8)
    return root


# ------------------------------------------------------------------ local folders and builtin:NAME

def test_local_folder_is_itself(tmp_path):
    folder = _model_folder(tmp_path / "m")
    assert resolve_model_path(str(folder)) == folder
    assert resolve_model_path(str(folder), None, None) == folder


def test_local_folder_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=rf"^model {empty}: .*no config.json"):
        resolve_model_path(str(empty))
    with pytest.raises(UserError, match=r"^model ./no/such/model: does not exist"):
        resolve_model_path("./no/such/model")
    with pytest.raises(UserError, match=r"^model gs://b/m: only local folders"):
        resolve_model_path("gs://b/m")
    with pytest.raises(UserError, match=r"^model justaname: does not exist"):
        resolve_model_path("justaname")


def test_a_run_stands_for_its_final_model(tmp_path):
    """SAMI after SFT: `models.policy.path` may name another run, which resolves to its committed final model."""
    from sami_ray.config import load_config
    from sami_ray.storage.run import RunStore

    run = RunStore.create(load_config(None, [f"storage.uri={tmp_path / 'runs'}"]), "sft")
    run_dir = tmp_path / "runs" / "sft"
    with pytest.raises(UserError, match=rf"^model {run_dir}: this run has no final model"):
        resolve_model_path(str(run_dir))
    run.store.commit_stage("iter-0002/model", _model_folder(tmp_path / "trained"))
    run.put_summary({"final_model": "iter-0002/model"})
    assert resolve_model_path(str(run_dir)) == run_dir / "iter-0002" / "model"


def test_unknown_builtin_is_named():
    with pytest.raises(UserError, match=r"^model builtin:nope: unknown built-in model; known: builtin:smollm2"):
        resolve_model_path("builtin:nope")


def test_hub_ids_are_recognised():
    assert parse_hub_id("mistralai/Mixtral-8x7B-v0.1") == ("mistralai/Mixtral-8x7B-v0.1", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id(f"org/name@{COMMIT}") == ("org/name", COMMIT)
    for bad in ("name", "a/b/c", "../x", "org/..", "org/name@", "/abs/path", "org/na me"):
        assert parse_hub_id(bad) is None, bad


# ------------------------------------------------------------------ hub ids, offline

def test_hub_id_resolves_from_the_cache_offline(hub_cache, tiny):
    snapshot = _put_in_hub_cache(hub_cache, "org/tiny", tiny)
    assert resolve_model_path("org/tiny") == snapshot
    assert resolve_model_path(f"org/tiny@{COMMIT}") == snapshot
    assert resolve_model_path("org/tiny@main") == snapshot
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in tiny.iterdir())

    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(resolve_model_path("org/tiny")).model_type == "llama"


def test_hub_id_missing_offline_says_what_to_do(hub_cache):
    with pytest.raises(UserError) as e:
        resolve_model_path("org/missing")
    msg = str(e.value)
    assert msg.startswith("model org/missing: not in the hub cache (")
    assert str(hub_cache) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download org/missing" in msg and "s3://" in msg
    assert "\n" not in msg


def test_hub_revision_missing_offline(hub_cache, tiny):
    _put_in_hub_cache(hub_cache, "org/tiny", tiny)
    with pytest.raises(UserError, match=r"^model org/tiny@v2: not in the hub cache .*--revision v2"):
        resolve_model_path("org/tiny@v2")


def test_hub_snapshot_without_safetensors_is_refused(hub_cache, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 8)
    _put_in_hub_cache(hub_cache, "org/pickled", folder)
    with pytest.raises(UserError, match=r"^model org/pickled: .*no .safetensors weights"):
        resolve_model_path("org/pickled")


# ------------------------------------------------------------------ fetch once

def test_fetch_once_builds_once_under_concurrency(tmp_path):
    dest = tmp_path / "models" / "x"
    builds = []

    def build() -> None:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other thread to find the lock taken
        dest.mkdir(parents=True)
        (dest / "done").write_text("1")

    def done() -> bool:
        return (dest / "done").exists()

    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(fetch_once(dest, done, build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and out == [dest] * 3


def test_fetch_once_failure_leaves_nothing_done(tmp_path):
    dest = tmp_path / "x"

    def boom() -> None:
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError):
        fetch_once(dest, lambda: dest.exists(), boom)
    assert fetch_once(dest, lambda: dest.exists(), lambda: dest.mkdir()) == dest
