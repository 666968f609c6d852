"""End-to-end fixtures: a tiny model, tiny queries and a run config written to disk."""

import pytest
import yaml

from tests.support.tiny_models import tiny_model, tiny_run_config, write_tiny_queries

from .helpers import run_cli


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model(kind="llama")


@pytest.fixture
def tiny_config(tmp_path, tiny_llama):
    """Write a tiny run config; returns (config path, store folder)."""

    def make(**sections):
        store = tmp_path / "runs"
        queries = write_tiny_queries(tmp_path / "queries.jsonl", 8)
        cfg = tiny_run_config(tiny_llama, queries, str(store), **sections)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path, store

    return make


REFERENCE_SECTIONS = {"trainer": {"checkpoint_every": 1, "report_every": 1}}


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_llama):
    """One uninterrupted tiny run (config REFERENCE_SECTIONS) that fault tests compare their results with."""
    root = tmp_path_factory.mktemp("reference")
    queries = write_tiny_queries(root / "queries.jsonl", 8)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tiny_llama, queries, str(root / "runs"), **REFERENCE_SECTIONS)))
    run_cli(["run", str(path), "--run-id", "reference"])
    return root / "runs" / "reference"
