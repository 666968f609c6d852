import json

import pytest
import torch

from sami_ray.errors import DataError
from sami_ray.sami.constitutions import Principle, sample_constitutions
from sami_ray.sami.data import (
    Query,
    ResponseFilter,
    SamiExample,
    collate_pairs,
    load_examples,
    load_queries,
    save_examples,
    tokenize_example,
)
from sami_ray.sami.formats import (
    principles_from_constitutions,
    read_multitask_principles,
    read_reference_constitution,
    read_reference_training_data,
    write_multitask_principles,
    write_reference_constitution,
    write_reference_training_data,
)
from sami_ray.sami.loss import IGNORE_INDEX
from sami_ray.sami.prompts import render_prompt


def test_query_sources(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": "a", "text": "How?"}\n\n{"id": "b", "prompt": "Why?"}\n')
    assert [q.text for q in load_queries(tmp_path / "q.jsonl")] == ["How?", "Why?"]
    (tmp_path / "q.json").write_text(json.dumps([{"question": "What?"}]))
    assert load_queries(tmp_path / "q.json")[0].text == "What?"
    (tmp_path / "mt.jsonl").write_text(json.dumps({"question_id": 81, "category": "writing",
                                                   "turns": ["Write a poem.", "Shorter."]}) + "\n")
    q = load_queries(tmp_path / "mt.jsonl", "mtbench")[0]
    assert (q.id, q.text, q.category) == ("81", "Write a poem.", "writing")
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "2+2?", "answer": "... #### 4"}) + "\n")
    q = load_queries(tmp_path / "gsm.jsonl", "gsm8k")[0]
    assert q.reference.endswith("#### 4") and q.category == "math"


def test_hf_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"id": "x", "text": "Hello?"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_queries(tmp_path / "ds")[0].text == "Hello?"


@pytest.mark.parametrize("content,words", [
    (b"", "no queries"),
    (b'{"text": "ok"}\n{bad json\n', ", line 2: malformed JSON"),
    (b"\xff\xfe\n", ", line 1: not UTF-8"),
    (b'[1, 2]\n', "expected a JSON object"),
    (b'{"other": 1}\n', "none of the text fields"),
    (b'{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', "more than once"),
])
def test_bad_query_files_name_the_file(tmp_path, content, words):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_queries(p)
    assert str(p) in str(e.value) and words in str(e.value)


def test_response_filter():
    f = ResponseFilter(require_terminal_punctuation=True, forbidden_substrings=("[insert",), max_chars=50)
    assert f.reason("") == "empty"
    assert f.reason("No end") == "unfinished"
    assert f.reason("Fill [insert name].") == "contains:[insert"
    assert f.reason("x" * 60 + ".") == "too_long"
    assert f.reason("Fine.") is None
    assert f.example_reason(["Same.", "Same."]) == "identical"
    assert f.example_reason(["A.", "B."]) is None
    assert ResponseFilter(drop_truncated=True).example_reason(["A.", "B."], [False, True]) == "truncated"


class WordTokenizer:
    """A real-enough tokenizer for layout tests: one id per whitespace word."""
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + len(w) for w in text.split()]}


def _example(n=2):
    principles = [Principle("c", "Be brief.", "Be long."), Principle("b", "Use bullets.", "Use prose.")]
    cons = sample_constitutions(principles, n, seed=0, key="q", mode="random")
    prompts = [render_prompt("instruction", c.text, "How to bake?") for c in cons]
    return SamiExample(Query("q", "How to bake?"), cons, [f"answer {i} words" * (i + 1) for i in range(n)], prompts)


def test_tokenize_and_collate_mask_prompt_and_padding():
    tok = WordTokenizer()
    ex = tokenize_example(tok, _example(3))
    batch = collate_pairs([ex, ex], pad_token_id=0)
    assert batch.input_ids.shape[0] == 2 * 3 * 3
    # row (b=0, i=1, j=2): labels cover exactly response 2 plus EOS, shifted by one
    row = 1 * 3 + 2
    p, r = ex.prompt_ids[1], ex.response_ids[2]
    labels = batch.labels[row]
    assert labels[: len(p) - 1].eq(IGNORE_INDEX).all()
    assert labels[len(p) - 1: len(p) - 1 + len(r)].tolist() == r
    assert labels[len(p) - 1 + len(r):].eq(IGNORE_INDEX).all()
    assert batch.attention_mask[row].sum().item() == len(p) + len(r)
    assert batch.num_response_tokens() == 2 * 3 * sum(len(x) for x in ex.response_ids)
    assert torch.equal(batch.input_ids[row, : len(p)], torch.tensor(p))


def test_examples_round_trip(tmp_path):
    ex = _example(2)
    save_examples(tmp_path / "e.jsonl", [ex, ex])
    back = load_examples(tmp_path / "e.jsonl")
    assert back[0].to_dict() == ex.to_dict()


def test_reference_constitution_round_trip(tmp_path):
    src = tmp_path / "0.json"
    src.write_text(json.dumps({
        "positive": "1. Be brief. \n2. Be thorough.",
        "negative": "1. Be lengthy. \n2. Be thorough.",
        "identifiers": {"positive": ["pos concise", "pos comprehensive"],
                        "negative": ["neg concise", "pos comprehensive"]},
    }))
    pos, neg = read_reference_constitution(src)
    assert pos.all_positive and neg.signs == {"concise": False, "comprehensive": True}
    write_reference_constitution(tmp_path / "1.json", pos, neg)
    assert read_reference_constitution(tmp_path / "1.json") == (pos, neg)
    with pytest.raises(DataError, match="antithesis is unknown"):
        principles_from_constitutions([pos, neg])


def test_multitask_principles_round_trip(tmp_path):
    src = tmp_path / "p.json"
    src.write_text(json.dumps({"helpful": {"weak": "Help.", "strong": "Be very helpful.",
                                           "antithesis": "Be unhelpful.", "relevant_for": ["writing"]}}))
    ps = read_multitask_principles(src)
    assert ps[0].categories == ("writing",) and ps[0].weak == "Help."
    write_multitask_principles(tmp_path / "q.json", ps)
    assert read_multitask_principles(tmp_path / "q.json") == ps


def test_reference_training_data_round_trip(tmp_path):
    src = tmp_path / "train.json"
    src.write_text(json.dumps({"7": [{"prompt": "P1", "response": "R1", "example_id": "7"},
                                     {"prompt": "P2", "response": "R2", "example_id": "7"}]}))
    exs = read_reference_training_data(src)
    assert exs[0].prompts == ["P1", "P2"] and exs[0].responses == ["R1", "R2"]
    write_reference_training_data(tmp_path / "out.json", exs)
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(src.read_text())
