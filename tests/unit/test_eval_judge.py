"""Win-rate arithmetic: both orders, ties, garbage verdicts, failed requests, length control, categories."""

import re

import pytest

from sami_ray.evaluate.judge import PairItem, judge_pairs, judge_prompt, parse_verdict

_ANSWERS = re.compile(r"\[Answer A\]\n(.*?)\n\[End of Answer A\].*?\[Answer B\]\n(.*?)\n\[End of Answer B\]", re.S)


class RuleJudge:
    """A judge whose reply is a rule applied to the two answers it sees (a test stand-in for a model)."""

    def __init__(self, rule):
        self.rule = rule
        self.prompts = []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.rule(*_ANSWERS.search(p).groups()) for p in prompts]


def items(*pairs, category=None):
    return [PairItem("How do I bake bread?", "1. Be brief.", c, b, category) for c, b in pairs]


def test_parse_verdict():
    assert parse_verdict("A is better. [[A]]") == "A"
    assert parse_verdict("[[a]]") == "A"
    assert parse_verdict("first [[A]] then on reflection [[B]]") == "B"
    assert parse_verdict("[[C]]") == parse_verdict("[[ tie ]]") == "tie"
    assert parse_verdict("I like both") is None
    assert parse_verdict("A") is None  # never guessed from a bare letter
    assert parse_verdict(None) is None and parse_verdict("") is None


def test_both_orders_are_judged_with_swapped_positions():
    judge = RuleJudge(lambda a, b: "[[A]]")
    it = items(("CAND", "BASE"))[0]
    judge_pairs(judge, [it])
    assert judge.prompts == [judge_prompt(it, True), judge_prompt(it, False)]
    assert _ANSWERS.search(judge.prompts[0]).groups() == ("CAND", "BASE")
    assert _ANSWERS.search(judge.prompts[1]).groups() == ("BASE", "CAND")


def test_position_bias_cancels():
    out = judge_pairs(RuleJudge(lambda a, b: "[[A]]"), items(("x1", "y1"), ("x2", "y2")))
    assert out["wins"] == 2 and out["losses"] == 2 and out["win_rate"] == 0.5
    assert out["position_consistency"] == 0.0 and out["first_position_chosen"] == 1.0


def test_consistent_preference_and_ties():
    prefer_cand = RuleJudge(lambda a, b: "[[A]]" if a.startswith("good") else "[[B]]")
    out = judge_pairs(prefer_cand, items(("good one", "meh"), ("good two", "meh")))
    assert out["win_rate"] == 1.0 and out["position_consistency"] == 1.0 and out["first_position_chosen"] == 0.5
    ties = judge_pairs(RuleJudge(lambda a, b: "Equal. [[C]]"), items(("a", "b")))
    assert ties["ties"] == 2 and ties["win_rate"] == 0.5


def test_garbage_and_errors_are_counted_not_guessed():
    replies = iter(["[[A]]", "[[C]]", "[[B]]", "no verdict here", None, None])

    class Scripted:
        def complete(self, prompts):
            return [next(replies) for _ in prompts]

    # each pair is judged candidate-first, then baseline-first
    # pair 1: A (win), C (tie); pair 2: B with the candidate first (loss), garbage; pair 3: two failed requests
    out = judge_pairs(Scripted(), items(("c1", "b1"), ("c2", "b2"), ("c3", "b3")))
    assert (out["wins"], out["ties"], out["losses"], out["unparseable"], out["errors"]) == (1, 1, 1, 1, 2)
    assert out["verdicts"] == 6 and out["pairs"] == 3
    assert out["win_rate"] == pytest.approx((1 + 0.5) / 3)
    assert out["position_consistency"] == 0.0  # only pair 1 has both verdicts, and they differ (win vs tie)
    assert out["unparseable_examples"] == ["no verdict here"]


def test_nothing_decided_gives_no_win_rate():
    out = judge_pairs(RuleJudge(lambda a, b: "?"), items(("a", "b")))
    assert out["win_rate"] is None and out["unparseable"] == 2


def test_length_controlled_view_and_categories():
    longer_wins = RuleJudge(lambda a, b: "[[A]]" if len(a.split()) > len(b.split()) else
                            ("[[B]]" if len(b.split()) > len(a.split()) else "[[C]]"))
    long_cand = "one two three four five six seven eight nine ten"
    pairs = items((long_cand, "one two"), category="writing") + items(("one two three", "four five six"),
                                                                       category="math")
    out = judge_pairs(longer_wins, pairs, length_tolerance=0.2)
    assert out["win_rate"] == pytest.approx(0.75)
    lc = out["length_controlled"]
    assert lc["pairs"] == 1 and lc["ties"] == 2 and lc["win_rate"] == 0.5
    assert out["by_category"]["writing"]["win_rate"] == 1.0
    assert out["by_category"]["math"]["win_rate"] == 0.5
