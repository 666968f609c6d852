import pytest

from sami_ray.sami.constitutions import Principle, relevant_principles, sample_constitutions

P = [
    Principle("concise", "Be brief.", "Be long-winded."),
    Principle("bullets", "Use bullets.", "Use prose.", categories=("writing",)),
    Principle("polite", "Be polite.", "Be rude.", categories=("roleplay",)),
]


@pytest.mark.parametrize("mode,n", [("random", 2), ("random", 8), ("flip_one", 4), ("all_or_none", 2)])
def test_sampling_is_deterministic_and_distinct(mode, n):
    a = sample_constitutions(P, n, seed=3, key="q1", mode=mode)
    b = sample_constitutions(P, n, seed=3, key="q1", mode=mode)
    assert [c.text for c in a] == [c.text for c in b]
    assert len({c.id for c in a}) == n  # distinct sign patterns
    assert a[0].all_positive


def test_different_queries_get_different_orders():
    texts = {sample_constitutions(P, 2, seed=0, key=f"q{i}")[0].text for i in range(20)}
    assert len(texts) > 1  # shuffled principle order varies


def test_numbered_text_and_signs():
    c = sample_constitutions(P[:2], 2, seed=0, key="x", mode="all_or_none", shuffle=False)
    assert c[0].text == "1. Be brief.\n2. Use bullets."
    assert c[1].text == "1. Be long-winded.\n2. Use prose."
    assert c[1].signs == {"concise": False, "bullets": False}


def test_too_many_constitutions_is_an_error():
    with pytest.raises(ValueError, match="at most 4"):
        sample_constitutions(P[:2], 5, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        sample_constitutions(P, 1, seed=0)


def test_weak_and_strong_phrasing():
    p = Principle("x", "mid", "anti", weak="short", strong="long")
    assert p.phrase(True, "weak") == "short" and p.phrase(True, "strong") == "long"
    assert p.phrase(False, "strong") == "anti"


def test_filter_by_category():
    assert [p.name for p in relevant_principles(P, "writing")] == ["concise", "bullets"]
    assert [p.name for p in relevant_principles(P, None)] == ["concise", "bullets", "polite"]


# ---------------------------------------------------------------- draws stay put

@pytest.mark.parametrize("mode,n,ids,second", [
    ("random", 2, ["+bullets,+concise,+polite", "+bullets,-concise,-polite"],
     "1. Be long-winded.\n2. Use bullets.\n3. Be rude."),
    ("flip_one", 4, ["+bullets,+concise,+polite", "-bullets,+concise,+polite", "+bullets,-concise,+polite",
                     "+bullets,+concise,-polite"], "1. Be polite.\n2. Use prose.\n3. Be brief."),
    ("all_or_none", 2, ["+bullets,+concise,+polite", "-bullets,-concise,-polite"],
     "1. Be long-winded.\n2. Use prose.\n3. Be rude."),
])
def test_existing_modes_draw_what_they_drew_before_subsets_and_paraphrases(mode, n, ids, second):
    """Pinned draws (seed 3, key q1): the demo's and every earlier run's constitutions do not change."""
    c = sample_constitutions(P, n, seed=3, key="q1", mode=mode)
    assert [x.id for x in c] == ids and c[1].text == second


# ---------------------------------------------------------------- paraphrases

PARA = [
    Principle("concise", "Be brief.", "Be long-winded.", paraphrases=("Keep it short.", "Use few words."),
              antithesis_paraphrases=("Ramble on.",)),
    Principle("bullets", "Use bullets.", "Use prose."),
]


def test_a_query_uses_one_wording_per_principle_in_all_its_constitutions():
    for i in range(30):
        cons = sample_constitutions(PARA, 4, seed=1, key=f"q{i}", mode="random")
        worded = {(p.name, p.positive): set() for c in cons for p in c.principles}
        for c in cons:
            for p in c.principles:
                worded[p.name, p.positive].add(p.text)
        assert all(len(v) == 1 for v in worded.values())  # constitutions differ by what they ask, not by wording


def test_paraphrases_are_drawn_with_the_seed_and_vary_across_queries():
    def wordings(seed):
        return [sample_constitutions(PARA, 2, seed=seed, key=f"q{i}", mode="all_or_none") for i in range(40)]

    first = wordings(0)
    assert [[c.text for c in cs] for cs in first] == [[c.text for c in cs] for cs in wordings(0)]
    used = {p.text for cs in first for c in cs for p in c.principles if p.name == "concise"}
    assert used == {"Be brief.", "Keep it short.", "Use few words.", "Be long-winded.", "Ramble on."}
    # the sign patterns and orders do not depend on paraphrases: the same draws as without them
    plain = [Principle(p.name, p.text, p.antithesis) for p in PARA]
    for i, cs in enumerate(first):
        assert [c.id for c in cs] == [c.id for c in sample_constitutions(plain, 2, seed=0, key=f"q{i}",
                                                                          mode="all_or_none")]


def test_paraphrases_off_keeps_the_first_wording():
    cons = [c for i in range(20) for c in sample_constitutions(PARA, 2, seed=0, key=i, mode="all_or_none",
                                                                 paraphrases=False)]
    assert {p.text for c in cons for p in c.principles if p.name == "concise"} == {"Be brief.", "Be long-winded."}


def test_principle_round_trips_with_paraphrases():
    assert Principle.from_dict(PARA[0].to_dict()) == PARA[0]
    assert Principle.from_dict({"name": "x", "text": "a", "antithesis": "b"}).paraphrases == ()  # older stores


# ---------------------------------------------------------------- mode subset (the multi-task paper's sampling)

MANY = [Principle(f"p{i}", f"Do {i}.", f"Never do {i}.") for i in range(5)]


def test_subset_draws_distinct_subsets_of_the_sizes_asked_for():
    for i in range(40):
        cons = sample_constitutions(MANY, 4, seed=2, key=i, mode="subset", subset_min=2, subset_max=3)
        assert len({c.id for c in cons}) == 4
        assert all(2 <= len(c.principles) <= 3 for c in cons)
        assert cons[0].all_positive  # first_all_positive
        assert len({p.name for p in cons[0].principles}) == len(cons[0].principles)
    again = sample_constitutions(MANY, 4, seed=2, key=7, mode="subset", subset_min=2, subset_max=3)
    assert [c.text for c in again] == [c.text for c in sample_constitutions(MANY, 4, seed=2, key=7, mode="subset",
                                                                            subset_min=2, subset_max=3)]


def test_subset_antithesis_ratio():
    def signs(ratio):
        return [p.positive for i in range(200)
                for c in sample_constitutions(MANY, 3, seed=0, key=i, mode="subset", antithesis_ratio=ratio)[1:]
                for p in c.principles]

    assert all(signs(0.0)) and not any(signs(1.0))
    negated = signs(0.25).count(False) / len(signs(0.25))
    assert 0.18 < negated < 0.32


def test_subset_order_is_shuffled_or_kept():
    orders = {tuple(p.name for p in c.principles)
              for i in range(30) for c in sample_constitutions(MANY, 2, seed=0, key=i, mode="subset", subset_min=5)}
    assert len(orders) > 1
    kept = sample_constitutions(MANY, 2, seed=0, key=0, mode="subset", subset_min=5, shuffle=False)
    assert [p.name for p in kept[1].principles] == [p.name for p in MANY]


def test_subset_uses_up_a_small_space_without_repeats():
    # 2 principles, sizes 1..2: 2*2 + 1*4 = 8 distinct constitutions; asking for all 8 must find all 8
    cons = sample_constitutions(MANY[:2], 8, seed=0, key="x", mode="subset")
    assert len({c.id for c in cons}) == 8
    with pytest.raises(ValueError, match="at most 8"):
        sample_constitutions(MANY[:2], 9, seed=0, key="x", mode="subset")


def test_max_distinct_for_subsets():
    from sami_ray.sami.constitutions import max_distinct

    assert max_distinct(3, "subset") == 3 * 2 + 3 * 4 + 1 * 8
    assert max_distinct(3, "subset", subset_min=3) == 8
    assert max_distinct(3, "subset", subset_min=5) == 8  # clipped to the principles there are
    assert max_distinct(3, "subset", antithesis_ratio=0.0) == 7  # only the subsets differ
    assert max_distinct(3, "subset", antithesis_ratio=1.0) == 8  # ... and the all-positive first


# ---------------------------------------------------------------- too few principles for N: refused up front

def test_a_category_with_too_few_principles_is_refused_before_any_query_is_drawn():
    from types import SimpleNamespace

    from sami_ray.config import ConstitutionsConfig
    from sami_ray.errors import ConfigError
    from sami_ray.sami.constitutions import constitutions_per_query

    # principles the config cannot see (a writer's, a file's): the plan is checked when the queries meet them
    opts = ConstitutionsConfig(mode="flip_one", n=3, num_principles=3)
    principles = [Principle("a", "A.", "not A.", categories=("writing",)),
                  Principle("b", "B.", "not B.", categories=("writing",)),
                  Principle("c", "C.", "not C.", categories=("math",))]
    qs = [SimpleNamespace(id=str(i), category=c) for i, c in enumerate(["writing", "math", "coding"])]
    with pytest.raises(ConfigError) as e:
        constitutions_per_query(qs, principles, opts, 3, seed=0, tag=1)
    assert "category 'math': 1 relevant principle(s) (c)" in str(e.value) and "at most 2" in str(e.value)
    assert isinstance(e.value, ValueError)  # evaluation turns it into its own message, naming evaluation.n
    plan = constitutions_per_query(qs[:1] + qs[2:], principles, opts, 3, seed=0, tag=1)
    assert [q.id for q, _ in plan] == ["0"]  # 'coding' has no relevant principle: skipped, as before


def test_inline_principles_too_few_for_a_category_are_refused_when_the_config_loads(tmp_path):
    from sami_ray.config import load_config
    from sami_ray.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("constitutions:\n  mode: flip_one\n  n: 3\n  principles:\n"
                 "    - {name: a, text: A., antithesis: not A., categories: [writing]}\n"
                 "    - {name: b, text: B., antithesis: not B., categories: [writing]}\n"
                 "    - {name: c, text: C., antithesis: not C., categories: [math]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "relevant to category 'math'" in str(e.value)


@pytest.mark.parametrize("overrides,words", [
    (["constitutions.antithesis_ratio=0.25"], "antithesis_ratio only apply to mode 'subset', not 'all_or_none'"),
    (["constitutions.mode=subset", "constitutions.subset_min=3", "constitutions.subset_max=2"],
     "subset_min = 3 is above subset_max = 2"),
    (["constitutions.mode=subset", "constitutions.num_principles=2", "constitutions.antithesis_ratio=0",
      "constitutions.n=4"], "at most 3"),
    (["constitutions.antithesis_ratio=1.5", "constitutions.mode=subset"], "less than or equal to 1"),
])
def test_subset_settings_are_checked_when_the_config_loads(overrides, words):
    from sami_ray.config import load_config
    from sami_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_the_multitask_papers_sampling_as_config():
    from sami_ray.config import load_config

    c = load_config(None, ["constitutions.mode=subset", "constitutions.subset_max=5", "constitutions.n=2",
                           "constitutions.antithesis_ratio=0.25", "constitutions.num_principles=4"]).constitutions
    assert (c.mode, c.subset_min, c.subset_max, c.antithesis_ratio, c.paraphrases) == ("subset", 1, 5, 0.25, True)
