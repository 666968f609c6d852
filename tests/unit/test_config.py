from pathlib import Path

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


# ---------------------------------------------------------------- per-role engines and resources

W2S = Path(__file__).resolve().parents[2] / "jobs" / "weak_to_strong_mixtral.yaml"


def test_each_role_gets_its_own_engine_with_tensor_parallel_over_its_gpus():
    cfg = load_config(W2S)
    # The 7B writer on its one GPU, not the Mixtral sampler's tensor parallel 4.
    assert cfg.role_engine("writer").tensor_parallel_size == 1 == cfg.resources.writer.num_gpus
    assert cfg.role_engine("policy").tensor_parallel_size == 4 == cfg.resources.sampler.num_gpus
    # dtype and max_model_len come from the model spec where the engine leaves them at their defaults.
    assert cfg.models.writer.engine.dtype == "bfloat16" and cfg.models.writer.engine.max_model_len == 4096
    # tensor_parallel_size left unset follows the role's GPUs.
    judged = load_config(None, ["models.judge.path=judge-model", "resources.judge.num_gpus=2",
                                "resources.sampler.num_gpus=2", "models.policy.path=p", "models.policy.max_model_len=2048"])
    assert judged.role_engine("judge").tensor_parallel_size == 2
    assert judged.sampler.engine.tensor_parallel_size == 2 and judged.sampler.engine.max_model_len == 2048
    assert judged.role_engine("judge").max_model_len is None  # the judge's spec, not the policy's


@pytest.mark.parametrize("overrides,words", [
    (["models.writer.engine.tensor_parallel_size=4"],
     "models.writer.engine.tensor_parallel_size = 4 but resources.writer.num_gpus = 1"),
    (["sampler.engine.tensor_parallel_size=2"],
     "sampler.engine.tensor_parallel_size = 2 but resources.sampler.num_gpus = 4"),
    (["models.writer.dtype=float16", "models.writer.engine.dtype=bfloat16"],
     "models.writer.dtype = float16 but models.writer.engine.dtype = bfloat16"),
    (["models.writer.engine.max_model_len=2048"],
     "models.writer.max_model_len = 4096 but models.writer.engine.max_model_len = 2048"),
    (["models.policy.engine.dtype=float16"], "models.policy.engine: the policy's engine options are sampler.engine"),
    (["resources.writer.num_gpus=1.5"], "resources.writer.num_gpus = 1.5"),
    (["resources.sampler.custom={GPU: 1}"], "resources.sampler.custom"),
    (["resources.trainer.custom={sami_trainer: 0}"], "resources.trainer.custom"),
    (["constitutions.principles=[{name: a, text: Be brief., antithesis: Be long., check: concise}]"],
     "constitutions.principles.0.check: unknown key"),
])
def test_role_engine_and_resource_mistakes_are_refused_naming_the_field(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(W2S, overrides)
    assert words in str(e.value)


def test_resolved_config_reloads_as_itself():
    from sami_ray.config import config_from_dict

    for cfg in (load_config(W2S), load_config(None, ["resources.sampler.num_gpus=2", "models.writer.path=w"])):
        again = config_from_dict(cfg.redacted_dict())
        assert again == cfg


def test_custom_resources_per_role():
    cfg = load_config(W2S, ["resources.judge.custom={sami_judge: 1}"])
    assert cfg.resources.sampler.custom == {"sami_sampler": 4} and cfg.resources.judge.custom == {"sami_judge": 1}
    assert load_config(None).resources.trainer.custom == {}


def test_num_principles_counts_free_principles_only():
    # A principles file: its size is known when it is read, not from num_principles.
    cfg = load_config(None, ["constitutions.file=p.json", "constitutions.mode=random", "constitutions.n=5"])
    assert cfg.constitutions.n == 5
    with pytest.raises(ConfigError, match="from 2 principle"):
        load_config(None, ["constitutions.mode=random", "constitutions.n=5", "constitutions.builtin=[a]",
                           "constitutions.principles=[{name: b, text: x., antithesis: y.}]"])
