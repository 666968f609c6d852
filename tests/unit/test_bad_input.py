"""Fuzz-style bad input: configs and data files that must end in one clear message naming the file or field."""

import json
import random

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sami_ray.config import load_config
from sami_ray.errors import ConfigError, DataError, UserError
from sami_ray.inputs import seed_principles, split_queries
from sami_ray.models import require_safetensors, resolve_model_path
from sami_ray.sami.data import load_queries

YAML_SCALARS = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=16), st.text(max_size=5),
                         st.booleans(), st.none())
SECTIONS = ["run", "models", "task", "constitutions", "sampler", "trainer", "storage", "evaluation", "resources"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(SECTIONS), key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       value=YAML_SCALARS)
def test_random_config_keys_fail_cleanly_or_load(tmp_path, section, key, value):
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump({section: {key: value}}))
    try:
        load_config(p)
    except ConfigError as e:
        msg = str(e)
        assert str(p) in msg and f"{section}." in msg, msg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200))
def test_random_bytes_as_query_file(tmp_path, content):
    p = tmp_path / "q.jsonl"
    p.write_bytes(content)
    try:
        qs = load_queries(p)
    except DataError as e:
        assert str(p) in str(e)
    else:
        assert all(q.text for q in qs)


@pytest.mark.parametrize("text,words", [
    ("constitutions:\n  builtin: []\n  principles: []\n", "no principles"),
    ("constitutions:\n  mode: flip_one\n  n: 3\n  principles:\n    - {name: a, text: A., antithesis: B.}\n",
     "at most 2"),
    ("constitutions:\n  principles:\n    - {name: a, text: A., antithesis: B.}\n    - {name: a, text: C., "
     "antithesis: D.}\n", "more than once"),
])
def test_constitutions_that_cannot_work(tmp_path, text, words):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=words):
        cfg = load_config(p)
        seed_principles(cfg.constitutions)


def test_held_out_larger_than_the_data():
    from sami_ray.sami.data import Query

    with pytest.raises(DataError, match="held_out"):
        split_queries([Query("a", "x"), Query("b", "y")], 2, 0)


def test_split_is_stable_and_disjoint():
    from sami_ray.sami.data import Query

    qs = [Query(str(i), f"q{i}") for i in range(20)]
    a = split_queries(qs, 5, 3)
    assert a == split_queries(list(reversed(qs))[::-1], 5, 3)
    assert not {q.id for q in a[0]} & {q.id for q in a[1]}


def test_pickle_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0")
    (folder / "pytorch_model.bin").write_bytes(random.randbytes(16))
    with pytest.raises(UserError, match="pickle"):
        resolve_model_path(str(folder))
    (folder / "pytorch_model.bin").unlink()
    assert require_safetensors(folder) == folder
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no .safetensors"):
        require_safetensors(folder)


def test_missing_model_path_is_named():
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path("./no/such/model")
    with pytest.raises(UserError, match="unknown built-in model"):
        resolve_model_path("builtin:nope")


def test_principles_file_formats(tmp_path):
    ours = tmp_path / "p.yaml"
    ours.write_text(yaml.safe_dump([{"name": "a", "text": "Be brief.", "antithesis": "Be long."}]))
    cfg = load_config(None, [f"constitutions.file={ours}"])
    assert seed_principles(cfg.constitutions)[0].antithesis == "Be long."
    ref = tmp_path / "m.json"
    ref.write_text(json.dumps({"x": {"weak": "w", "strong": "s", "antithesis": "a", "relevant_for": ["math"]}}))
    cfg = load_config(None, [f"constitutions.file={ref}"])
    assert seed_principles(cfg.constitutions)[0].categories == ("math",)
    broken = tmp_path / "b.json"
    broken.write_text("{nope")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        seed_principles(load_config(None, [f"constitutions.file={broken}"]).constitutions)


def test_a_folder_where_a_file_belongs_is_named_with_its_field(tmp_path):
    from sami_ray.config import QueriesConfig
    from sami_ray.inputs import load_run_queries

    with pytest.raises(ConfigError, match="constitutions.file: .* is a folder"):
        seed_principles(load_config(None, [f"constitutions.file={tmp_path}"]).constitutions)
    with pytest.raises(ConfigError, match="task.queries.source: .* is a folder"):
        load_run_queries(QueriesConfig(source=str(tmp_path)))
    with pytest.raises(ConfigError, match="config file .* is a folder"):
        load_config(tmp_path)


def test_overrides_without_a_config_tweak_the_embedded_demo(monkeypatch):
    import importlib

    from sami_ray.config import demo_config_path

    commands = importlib.import_module("sami_ray.cli.app")  # the module; `sami_ray.cli.app` is also the Typer app

    seen = {}

    class Stop(Exception):
        pass

    def fake_start(cfg, run_id=None, progress=None):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr("sami_ray.driver.Run.start", fake_start)
    with pytest.raises(Stop):
        commands.run(None, ["trainer.lr=1e-5"])
    demo = load_config(demo_config_path())
    assert seen["cfg"].trainer.lr == 1e-5
    assert seen["cfg"].constitutions == demo.constitutions and seen["cfg"].models == demo.models
