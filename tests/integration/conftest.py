"""Fixtures shared by the integration tests."""

import pytest

from tests.support.tiny_models import tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Llama models of the same shape and other weights (a, b): weight reloads must tell them apart."""
    root = tmp_path_factory.mktemp("models")
    return tiny_model(root / "a", seed=0), tiny_model(root / "b", seed=1)
