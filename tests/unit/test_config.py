import pytest

from sami_ray.config import load_config
from sami_ray.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides():
    cfg = load_config(None, ["trainer.lr=1e-6", "sampler.replicas=2", "run.name=abc"])
    assert cfg.trainer.lr == 1e-6 and cfg.sampler.replicas == 2 and cfg.run.name == "abc"


def test_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "trainer:\n  lr: 2.0e-6\n  grad_accum: 4\n")
    cfg = load_config(p, ["trainer.grad_accum=8"])
    assert cfg.trainer.lr == 2e-6 and cfg.trainer.grad_accum == 8


@pytest.mark.parametrize("text,field,words", [
    ("trainer:\n  lr: -1\n", "trainer.lr", "greater than 0"),
    ("constitutions:\n  n: 1\n", "constitutions.n", "N >= 2"),
    ("trainer:\n  lrr: 1\n", "trainer.lrr", "unknown key"),
    ("sampler:\n  replicas: two\n", "sampler.replicas", "integer"),
    ("models:\n  policy:\n    path: ''\n", "models.policy.path", "at least 1"),
    ("models:\n  policy: {}\n", "models.policy.path", "required"),
    ("storage:\n  uri: gs://bucket/x\n", "storage.uri", "s3://"),
    ("constitutions:\n  mode: random\n  num_principles: 2\n  n: 5\n", "constitutions", "at most 4"),
])
def test_errors_name_file_and_field(tmp_path, text, field, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and words in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["trainer.lr"])
    with pytest.raises(ConfigError, match="trainer.lr"):
        load_config(None, ["trainer.lr.x=1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["trainer.lr=1", "trainer.lr.x=1"])


def test_antithesis_must_differ(tmp_path):
    p = write(tmp_path, "constitutions:\n  principles:\n    - {name: a, text: Be brief., antithesis: Be brief.}\n")
    with pytest.raises(ConfigError, match="antithesis equals"):
        load_config(p)


def test_credentials_are_redacted():
    cfg = load_config(None, ["storage.uri=s3://bucket/runs", "storage.access_key_id=AKIAEXAMPLE",
                             "storage.secret_access_key=s3cr3t-value"])
    text = cfg.to_yaml()
    assert "s3cr3t-value" not in text and "AKIAEXAMPLE" not in text and "***" in text
    assert "s3cr3t-value" not in repr(cfg)
