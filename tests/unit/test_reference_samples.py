"""The SAMI reference's generated training data as iteration 1's samples (sampler.samples_file): the file read as
it is, bad layouts named, the samples stage importing it instead of sampling (fake roles, a real local run store),
and the trainer's own data path reading the committed stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_ray.config import config_from_dict
from sami_ray.errors import DataError
from sami_ray.sami.data import load_examples
from sami_ray.sami.datasets.reference_samples import read_reference_samples
from sami_ray.stages import StageLoop
from sami_ray.storage.run import RunStore, stage_key
from tests.support.fake_roles import FakeRoles

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "reference" / "generated_training_data.json"


def test_the_reference_layout_is_read_as_it_is():
    raw = json.loads(FIXTURE.read_text())
    examples = read_reference_samples(FIXTURE)
    assert [e.query.id for e in examples] == ["0", "2", "5"]  # the file's ids, gaps where its filters dropped
    for e in examples:
        entries = raw[e.query.id]
        assert e.n == 2
        assert e.prompts == [x["prompt"] for x in entries] and e.responses == [x["response"] for x in entries]
        assert [c.principles for c in e.constitutions] == [(), ()]  # signs are not in the file
        assert len({c.id for c in e.constitutions}) == 2


@pytest.mark.parametrize("content, needle", [
    ([{"prompt": "p", "response": "r"}], "expected one JSON object keyed by example id"),
    ({"7": {"prompt": "p", "response": "r"}}, "example '7': expected a list"),
    ({"7": [{"prompt": "p", "response": "r"}]}, "example '7': has 1 entries; SAMI needs at least 2"),
    ({"7": [{"prompt": "p", "response": "r"}, {"prompt": "q", "completion": "s"}]},
     "example '7': entry 1 has the fields ['completion', 'prompt'], but reference samples need "
     "['prompt', 'response']"),
    ({"7": [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": 3}]}, "entry 1 has the fields"),
    ({"7": [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": "  "}]}, "entry 1: 'response' is empty"),
    ({"7": [{"prompt": "p", "response": "r"}] * 2, "8": [{"prompt": "p", "response": "r"}] * 3},
     "example '8' has 3 entries, but example '7' has 2"),
    ({}, "no examples"),
])
def test_a_bad_layout_is_one_error_naming_file_example_and_fields(tmp_path, content, needle):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as e:
        read_reference_samples(path)
    assert str(e.value).startswith(str(path)) and needle in str(e.value)


def test_not_json_and_missing_files_are_named(tmp_path):
    (tmp_path / "x.json").write_text('{"0": [')
    with pytest.raises(DataError, match=r"x\.json: not a JSON file"):
        read_reference_samples(tmp_path / "x.json")
    with pytest.raises(DataError, match=r"nope\.json: no such file \(sampler\.samples_file\)"):
        read_reference_samples(tmp_path / "nope.json")


# ---------------------------------------------------------------- the samples stage

def make_cfg(tmp_path, iterations=2, **sampler):
    return config_from_dict({
        "run": {"name": "imp", "iterations": iterations, "seed": 1},
        "models": {"policy": {"path": "fake-policy"}},
        "task": {"queries": {"source": "builtin:howto", "held_out": 4, "limit": 12}},
        "constitutions": {"builtin": ["bullets", "concise"], "write_with_writer": False, "n": 2,
                          "mode": "all_or_none"},
        "sampler": sampler,
        "evaluation": {"plots": False, "on_degeneration": "warn"},
        "storage": {"uri": str(tmp_path / "runs")},
    })


def test_iteration_one_imports_the_file_and_later_iterations_sample(tmp_path):
    cfg = make_cfg(tmp_path, samples_file=str(FIXTURE))
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "cache")
    roles, said = FakeRoles(tmp_path), []
    StageLoop(cfg, store, roles, say=said.append).execute()
    assert roles.trained == [1, 2]
    first = load_examples(store.fetch(stage_key(1, "samples")) / "examples.jsonl")
    assert [e.query.id for e in first] == ["0", "2", "5"]
    assert first[0].prompts == [x["prompt"] for x in json.loads(FIXTURE.read_text())["0"]]
    assert store.store.read_manifest(stage_key(1, "samples")).meta["sampled_with"] == str(FIXTURE)
    assert any("3 examples (N = 2) imported from" in line and "sampling skipped (sampler.samples_file)" in line
               for line in said), said
    second = load_examples(store.fetch(stage_key(2, "samples")) / "examples.jsonl")
    assert second and all(e.query.id not in {"0", "2", "5"} for e in second)  # sampled from the run's queries
    assert sum(1 for line in said if "queries kept" in line) == 1


def test_a_resumed_run_keeps_the_imported_stage(tmp_path):
    cfg = make_cfg(tmp_path, iterations=1, samples_file=str(FIXTURE))
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c1")
    StageLoop(cfg, store, FakeRoles(tmp_path), say=lambda _m: None).execute()
    again, said = FakeRoles(tmp_path), []
    StageLoop(cfg, RunStore.open(store.uri, cache_dir=tmp_path / "c2"), again, say=said.append).execute()
    assert again.trained == [] and not any("imported" in line for line in said)


def test_a_bad_samples_file_fails_the_stage_naming_it(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"4": [{"prompt": "p"}, {"prompt": "q", "response": "r"}]}))
    cfg = make_cfg(tmp_path, iterations=1, samples_file=str(bad))
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"bad\.json: example '4': entry 0 has the fields \['prompt'\]"):
        StageLoop(cfg, store, FakeRoles(tmp_path), say=lambda _m: None).execute()
    assert not store.is_committed(stage_key(1, "samples"))


def test_the_trainers_data_path_reads_the_imported_stage(tmp_path):
    """What the trainer does with a samples stage: check it on the driver, tokenise each worker's rows anew from
    their text with the policy's tokenizer (so the tokenizer that sampled them does not matter)."""
    from sami_ray.sami.data import read_jsonl
    from sami_ray.sami.tokens import encode_prompt, encode_response
    from sami_ray.train.trainer import _check_examples
    from sami_ray.train.worker import _tokenize
    from tests.support.tiny_models import tiny_model

    cfg = make_cfg(tmp_path, iterations=1, samples_file=str(FIXTURE))
    store = RunStore.create(cfg, "r", cache_dir=tmp_path / "c")
    seen = {}

    class Recording(FakeRoles):
        def train(self, examples_path, *args):
            seen["path"] = Path(examples_path)
            return super().train(examples_path, *args)

    StageLoop(cfg, store, Recording(tmp_path), say=lambda _m: None).execute()
    assert _check_examples(str(seen["path"])) == 3
    model = tiny_model(kind="llama", add_bos=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = list(read_jsonl(seen["path"]))
    _pad, tokenized, ids = _tokenize(str(model), rows, "sami", max_prompt_tokens=None)
    assert ids == ["0", "2", "5"]
    raw = json.loads(FIXTURE.read_text())["2"]
    assert tokenized[1].prompt_ids == [encode_prompt(tok, x["prompt"]) for x in raw]
    assert tokenized[1].response_ids == [encode_response(tok, x["response"]) + [tok.eos_token_id] for x in raw]
