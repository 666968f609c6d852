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
