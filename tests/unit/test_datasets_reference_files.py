"""The reference repositories' principle files, read as they are (constitutions.file): a folder of the SAMI
reference's constitution pair files, sami-extension's multi-task principles and its math principles. Fixtures in
tests/fixtures/datasets/principles/ follow the public layouts (their README names the source files)."""

import json
from pathlib import Path

import pytest

from sami_ray.config import load_config
from sami_ray.errors import ConfigError, DataError
from sami_ray.inputs import check_constitutions, seed_principles
from sami_ray.sami.constitutions import sample_constitutions
from sami_ray.sami.data import Query
from sami_ray.sami.formats import read_math_principles

PRINCIPLES = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "principles"
SAMI = PRINCIPLES / "sami_constitutions"
EXT = PRINCIPLES / "sami_extension"


def _principles(*overrides: str):
    return seed_principles(load_config(None, list(overrides)).constitutions)


def test_a_folder_of_sami_constitution_pairs_gives_its_principles_and_antitheses():
    ps = _principles(f"constitutions.file={SAMI}")
    assert [p.name for p in ps] == ["concise", "comprehensive"]
    assert ps[0].text == "Summaries should be short and skip minor details."
    assert ps[0].antithesis == "Summaries should be long and dwell on minor details."
    assert ps[1].antithesis == "Summaries should leave out the main points of the post."
    assert ps[0].paraphrases == ()  # the six files share one wording per principle


def test_reference_pairs_are_drawn_as_the_reference_does_with_mode_random():
    """The six files pair all-positive with each non-empty negation (one, the other, both) in both orders; mode
    random with first_all_positive and N = 2 draws the same pairs, each negation about equally often."""
    ps = _principles(f"constitutions.file={SAMI}")
    seconds = [sample_constitutions(ps, 2, seed=0, key=i, mode="random")[1].id for i in range(300)]
    counts = {k: seconds.count(k) for k in set(seconds)}
    assert set(counts) == {"+comprehensive,-concise", "-comprehensive,+concise", "-comprehensive,-concise"}
    assert min(counts.values()) > 70


def test_differing_wordings_across_pair_files_become_paraphrases(tmp_path):
    for f in SAMI.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    other = json.loads((SAMI / "0.json").read_text())
    other["positive"] = other["positive"].replace("short and skip minor details", "brief, leaving out small points")
    (tmp_path / "10.json").write_text(json.dumps(other))
    concise = _principles(f"constitutions.file={tmp_path}")[0]
    assert concise.paraphrases == ("Summaries should be brief, leaving out small points.",)


def test_one_pair_file_or_a_folder_without_them_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="one constitution pair file, which negates only some principles"):
        _principles(f"constitutions.file={SAMI / '0.json'}")
    (tmp_path / "notes.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="is a folder holding no SAMI reference constitution files"):
        _principles(f"constitutions.file={tmp_path}")
    only_one_way = tmp_path / "pairs"
    only_one_way.mkdir()
    (only_one_way / "0.json").write_text((SAMI / "0.json").read_text())  # never negates 'comprehensive'
    with pytest.raises(DataError, match=r"\['comprehensive'\] never appear both as written and negated"):
        _principles(f"constitutions.file={only_one_way}")


def test_a_broken_pair_file_names_its_keys(tmp_path):
    (tmp_path / "0.json").write_text((SAMI / "0.json").read_text())
    (tmp_path / "1.json").write_text(json.dumps({"positive": "1. x", "negative": "1. y", "identifiers": ["pos x"]}))
    with pytest.raises(DataError, match="1.json: 'positive' must be numbered principle lines and 'identifiers' an"):
        _principles(f"constitutions.file={tmp_path}")


def test_sami_extension_math_principles_with_their_paraphrases():
    ps = _principles(f"constitutions.file={EXT / 'math_constitution.json'}")
    step, latex = ps
    assert step.name == "math.1" and step.weak == "Reason step by step before answering."
    assert step.text.startswith("Work through the problem one step at a time")
    assert step.paraphrases == ("Lay out your reasoning in numbered steps and state the answer last.",)
    assert latex.antithesis_paraphrases == ("Avoid LaTeX; use ordinary characters for all math.",)
    assert step.categories == ()  # the file names none: every problem
    used = {p.text for i in range(40) for c in sample_constitutions(ps, 2, seed=0, key=i, mode="all_or_none")
            for p in c.principles if p.name == "math.1" and p.positive}
    assert used == {step.text, *step.paraphrases}  # the run's seed picks among the phrasings


def test_math_principles_in_another_layout_name_their_fields(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"math.1": {"definition": "d", "paraphrases": [], "paraphrases_antithesis": ["a"]}}))
    with pytest.raises(DataError, match=r"principle 'math.1' has \['definition', 'paraphrases', "
                                        r"'paraphrases_antithesis'\]; a math principle needs non-empty lists"):
        read_math_principles(bad)


def test_sami_extension_multitask_principles_and_their_categories():
    ps = _principles(f"constitutions.file={EXT / 'mt_bench_constitution.json'}")
    by_name = {p.name: p for p in ps}
    assert by_name["math.1"].categories == ("math", "reasoning") and by_name["math.1"].weak == "Show your steps."
    assert by_name["math.1"].strong.startswith("Explain each step") and by_name["math.1"].antithesis


def test_too_few_principles_for_a_category_is_refused_when_the_file_loads():
    with pytest.raises(ConfigError) as e:
        _principles(f"constitutions.file={EXT / 'mt_bench_constitution.json'}", "constitutions.mode=random",
                    "constitutions.n=4")
    msg = str(e.value)
    assert msg.startswith("constitutions.n: ") and "category 'coding': 1 relevant principle(s) (coding.1)" in msg
    assert "at most 2 distinct constitutions in mode 'random', but N = 4" in msg
    assert "category 'math'" not in msg  # math has two: 4 sign patterns


def test_check_constitutions_looks_at_the_categories_the_queries_have():
    ps = _principles(f"constitutions.file={EXT / 'mt_bench_constitution.json'}")
    cfg = load_config(None, ["constitutions.mode=random", "constitutions.num_principles=2",
                             "constitutions.n=4"]).constitutions
    check_constitutions(ps, [Query("1", "2+2?", "math"), Query("2", "List the cities.", "extraction")], cfg)
    with pytest.raises(ConfigError, match="constitutions.n: .*category 'coding'"):
        check_constitutions(ps, [Query("1", "2+2?", "math"), Query("3", "Sort a list.", "coding")], cfg)
    with pytest.raises(ConfigError, match="evaluation.n: .*category 'math'.*at most 4.*N = 5"):
        check_constitutions(ps, [Query("1", "2+2?", "math")], cfg, n=5, field="evaluation.n")
