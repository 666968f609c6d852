"""Verifiable principles, GSM8K scoring and the degeneration measures on hand-made cases with known answers."""

import math

import pytest

from sami_ray.errors import ConfigError, UserError
from sami_ray.evaluate import degeneration as deg
from sami_ray.evaluate import gsm8k, verifiable
from sami_ray.evaluate.text import content_stems, ngram_repetition, stem, word_count
from sami_ray.sami.constitutions import Principle

LIST = "Here is how:\n- Preheat the oven.\n- Mix flour and water.\n- Bake for 30 minutes."
NUMBERED = "1. Preheat the oven.\n2. Mix flour and water.\n3) Bake."
PROSE = ("To bake bread, mix flour, water, yeast and salt, knead the dough, let it rise for an hour, "
         "shape it and bake it in a hot oven until the crust is brown.")
LONG = " ".join(["word"] * 85)


@pytest.mark.parametrize("name,true_case,false_case", [
    ("bullets", LIST, PROSE),
    ("bullets", NUMBERED, "Intro line.\n- one item\nA closing paragraph here.\nAnother paragraph."),
    ("bullets", "• first\n• second", "- " ),  # a bare marker is not a list line
    ("concise", "Mix, knead, rise, bake.", LONG),
    ("concise", PROSE, ""),
    ("final_answer_line", "2 + 3 = 5\n#### 5", "The answer is 5."),
    ("final_answer_line", "Work...\nFinal answer: $12", "#### 5\nThen I double-checked it."),
    ("step_by_step", "First, add 2 and 3. Then, double it. Finally, report 10.", "It is 10."),
    ("step_by_step", "Step 1: add.\nStep 2: double.", "Just add them first."),
    ("lowercase", "mix the flour, then bake.", "Mix the flour, then bake."),
    ("lowercase", "all lower 123", "1234 !!"),
    ("no_questions", "Bake it for an hour.", "Bake it. Do you have an oven?"),
    ("closing_phrase", "Bake it for an hour. Hope this helps!", "Bake it for an hour."),
    ("closing_phrase", "Bake it.\n\n**Hope this helps.**", "Hope this helps! Bake it."),
    ("plain_text", PROSE, "**Bake** it.\n# Steps"),
])
def test_checkers_true_and_false(name, true_case, false_case):
    p = verifiable.get_principle(name)
    assert p.follows(true_case, "How do I bake bread?") is True
    assert p.follows(false_case, "How do I bake bread?") is False


def test_bullets_rule_is_a_strict_majority():
    two_of_four = "Intro.\n- a thing\n- another thing\nOutro."
    assert not verifiable.is_bulleted(two_of_four)
    assert verifiable.is_bulleted("Intro.\n- a thing\n- another thing")
    assert verifiable.is_bulleted("  - indented item\n  - another")
    assert not verifiable.is_bulleted("-no space after the dash\n-again")


def test_antitheses():
    concise = verifiable.get_principle("concise")
    assert concise.follows_antithesis(LONG) and not concise.follows_antithesis(PROSE)  # 40..79 words: neither
    bullets = verifiable.get_principle("bullets")
    assert bullets.follows_antithesis(PROSE) and not bullets.follows_antithesis(LIST)
    nq = verifiable.get_principle("no_questions")
    assert nq.follows_antithesis("Bake it. Shall I list the steps?") and not nq.follows_antithesis("Is it? Yes.")


def test_library_converts_to_core_principles_and_names_unknown_ones():
    p = verifiable.get_principle("bullets").to_principle()
    assert isinstance(p, Principle) and p.name == "bullets"
    assert p.text == "Answer as a bulleted list: each line starts with '- '."
    assert p.antithesis == "Answer in plain prose paragraphs, with no lists or bullet points."
    assert verifiable.get_principle("concise").text == "Answer in under 40 words."
    assert {"bullets", "concise", "final_answer_line", "step_by_step", "lowercase", "no_questions",
            "closing_phrase"} <= set(verifiable.LIBRARY)
    with pytest.raises(ConfigError, match=r"constitutions\.builtin: unknown verifiable principle 'bulets'") as e:
        verifiable.get_principle("bulets")
    assert isinstance(e.value, UserError) and "bullets" in str(e.value)
    assert verifiable.checker_for(Principle("mine", "x", "y")) is None


def test_principle_rates():
    ps = [verifiable.get_principle("bullets").to_principle(), verifiable.get_principle("concise").to_principle(),
          Principle("unchecked", "Be kind.", "Be rude.")]
    pos, neg = {"bullets": True, "concise": True}, {"bullets": False, "concise": False}
    items = [(pos, "q", LIST), (pos, "q", PROSE), (neg, "q", PROSE), (neg, "q", LONG)]
    rates = verifiable.principle_rates(items, ps)
    assert set(rates) == {"bullets", "concise"}
    b, c = rates["bullets"], rates["concise"]
    assert (b["positive_n"], b["antithesis_n"]) == (2, 2)
    assert b["positive_follows"] == 0.5 and b["antithesis_follows"] == 1.0 and b["antithesis_follows_principle"] == 0
    assert c["positive_follows"] == 1.0  # LIST and PROSE are both under 40 words
    assert c["antithesis_follows"] == 0.5  # only LONG reaches 80 words
    assert c["positive_mean_words"] == (word_count(LIST) + word_count(PROSE)) / 2


# ---------------------------------------------------------------- GSM8K

@pytest.mark.parametrize("text,expected", [
    ("She pays $1,234.50 in total.", "1234.5"),
    ("The temperature is -5 degrees.", "-5"),
    ("It falls by −3.", "-3"),
    ("He lost -$12 on the deal.", "-12"),
    ("He has 12kg of apples.", "12"),
    ("So the answer is 42.", "42"),
    ("Total: 1,000,000 people", "1000000"),
    ("18 eggs - 3 - 4 = 11 eggs. She sells 11 * 2 = $22\n#### 22", "22"),
    ("#### 72\nThen some text with 5 numbers 6.", "72"),
    ("We get 3.50 then 7.00", "7"),
    ("0.5 of 10 is 5.0", "5"),
    ("45% of them", "45"),
    ("5-3=2", "2"),
    ("no number here", None),
    ("", None),
    ("#### \nbut 9 later", "9"),
])
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_exact_match_against_gsm8k_references():
    ref = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gsm8k.is_correct("She sold 72 clips altogether.", ref)
    assert gsm8k.is_correct("#### 72.00", ref)
    assert not gsm8k.is_correct("She sold 72 clips, then 24 more.", ref)  # the last number is 24
    assert not gsm8k.is_correct("no idea", ref)
    assert gsm8k.is_correct("$1,234.50", "1234.5")


def test_pass_at_k_unbiased_estimator():
    assert gsm8k.pass_at_k(10, 0, 1) == 0.0
    assert gsm8k.pass_at_k(10, 10, 10) == 1.0
    assert gsm8k.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert gsm8k.pass_at_k(10, 3, 10) == 1.0
    assert gsm8k.pass_at_k(10, 1, 5) == pytest.approx(0.5)
    assert gsm8k.pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        gsm8k.pass_at_k(3, 1, 4)


def test_score_samples():
    samples = [["#### 4", "#### 5", "#### 4", "x", "#### 3"], ["#### 9"] * 5]
    out = gsm8k.score_samples(samples, ["#### 4", "#### 1"])
    assert out["problems"] == 2 and out["samples"] == 5
    assert out["pass_at"]["1"] == pytest.approx((2 / 5 + 0) / 2)
    assert out["pass_at"]["5"] == pytest.approx(0.5)
    assert set(out["pass_at"]) == {"1", "2", "5"}
    assert out["extracted"] == pytest.approx(9 / 10)


# ---------------------------------------------------------------- degeneration measures

def test_text_helpers():
    assert stem("baking") == stem("bakes") == stem("baked") == "bak"
    assert content_stems("How do I bake bread at home?") == {"bak", "bread", "hom"}
    assert stem("running") == stem("run") == "run" and stem("stopped") == "stop"
    assert ngram_repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert ngram_repetition("one two") == 0.0


def test_on_topic_and_evasive():
    q = "How do I bake sourdough bread?"
    assert deg.is_on_topic("Feed the starter, then bake the loaf at 230 C.", q)
    assert deg.is_on_topic("Sourdough needs a starter.", q)
    assert not deg.is_on_topic("I understand these instructions clearly.", q)
    assert deg.is_evasive("I understand these instructions clearly.")
    assert deg.is_evasive("As an AI, I cannot help with that.")
    assert deg.is_evasive("Okay.") and deg.is_evasive("")
    assert not deg.is_evasive("Feed the starter, then bake the loaf at 230 C.")
    assert not deg.is_evasive("I understand the question. " + "Mix flour and water, knead well, " * 10)


def test_degeneration_flag_and_actions():
    q = "How do I bake sourdough bread?"
    good = [(q, "Feed the starter, mix the dough and bake the bread.")] * 10
    base = deg.degeneration_report({"+a": good, "-a": good}, None, 5.0, "rollback")
    assert not base["flagged"] and base["action"] == "none" and not base["compared_to_base"]
    same = deg.degeneration_report({"+a": good, "-a": good}, base, 5.0, "rollback")
    assert not same["flagged"] and same["compared_to_base"]
    # 1 of 10 answers off topic: a 10-point drop, but on 10 answers that is within sampling noise
    worse = good[:9] + [(q, "I understand these instructions clearly.")]
    assert not deg.degeneration_report({"+a": worse, "-a": good}, base, 5.0, "stop")["flagged"]
    stats = deg.degeneration_report({"+a": worse, "-a": good}, base, 5.0, "stop")["per_constitution"]["+a"]
    assert stats["on_topic"] == pytest.approx(0.9) and stats["evasive"] == pytest.approx(0.1)
    assert stats["n"] == 10 and stats["empty"] == 0
    # the same 10-point drop on 100 answers is real: it trips a 5-point guard but not a 15-point one
    base100 = deg.degeneration_report({"+a": good * 10}, None, 5.0, "stop")
    tripped = deg.degeneration_report({"+a": worse * 10}, base100, 5.0, "stop")
    assert tripped["flagged"] and tripped["action"] == "stop"
    assert any(r.startswith("+a: on-topic share 0.90 vs base 1.00") for r in tripped["reasons"])
    assert any(r.startswith("+a: evasive share 0.10 vs base 0.00") for r in tripped["reasons"])
    assert deg.degeneration_report({"+a": worse * 10}, base100, 15.0, "stop")["action"] == "none"
    # a collapse on few answers is beyond noise
    collapsed = [(q, "I understand these instructions clearly.")] * 4
    small_base = deg.degeneration_report({"+a": good[:4]}, None, 5.0, "warn")
    assert deg.degeneration_report({"+a": collapsed}, small_base, 5.0, "warn")["action"] == "warn"


def test_noise_test_arithmetic():
    assert not deg.worse_beyond_noise(1.0, 12, 11 / 12, 12, 0.05)  # one miss in 12
    assert not deg.worse_beyond_noise(1.0, 12, 10 / 12, 12, 0.05)  # two misses: z = 1.48
    assert deg.worse_beyond_noise(1.0, 12, 9 / 12, 12, 0.05)  # three misses: z = 1.85
    assert deg.worse_beyond_noise(0.88, 16, 0.38, 16, 0.05)
    assert not deg.worse_beyond_noise(0.9, 1000, 0.86, 1000, 0.05)  # significant but under 5 points
    assert deg.worse_beyond_noise(1.0, 5, 0.0, 5, 0.05)


def test_word_matching_survives_inflection():
    assert stem("batteries") == stem("battery") == "battery"
    assert deg.is_on_topic("Set a timer to beat procrastination.", "How can I stop procrastinating?")
    assert deg.is_on_topic("Exercise helps; stressful weeks pass.", "How can I reduce stress?")
    assert not deg.is_on_topic("Informal chats are fun.", "How do I bake bread?")
    assert deg.is_on_topic("Water your home's plants weekly.", "How can I keep my houseplants alive?")
    assert deg.is_on_topic("Anything at all.", "How do I do it?")  # no content words in the query: not judged


def test_eval_constitutions_are_stable_and_bad_n_names_the_field():
    from sami_ray.config import ConstitutionsConfig
    from sami_ray.evaluate.runner import eval_constitutions
    from sami_ray.sami.data import Query

    ps = [verifiable.get_principle(n).to_principle() for n in ("bullets", "concise", "final_answer_line")]
    qs = [Query("a", "How do I bake bread?", "howto"), Query("b", "What is 2 + 2?", "math")]
    plan = eval_constitutions(qs, ps, 2, 0, ConstitutionsConfig())
    assert plan == eval_constitutions(qs, ps, 2, 0, ConstitutionsConfig())  # the same at every iteration
    assert [c.id for c in plan[0][1]] == ["+bullets,+concise", "-bullets,-concise"]  # final_answer_line: math only
    assert "+final_answer_line" in plan[1][1][0].id
    with pytest.raises(ConfigError, match=r"evaluation\.n = 3"):
        eval_constitutions(qs, ps, 3, 0, ConstitutionsConfig())


def test_report_json_has_no_nan(tmp_path):
    import json

    from sami_ray.evaluate.report import format_summary, read_report, write_report

    rep = {"iteration": 2, "mi_bound": {"mi_bound": float("nan"), "per_seed": [{"loss": float("inf")}]}}
    path = write_report(rep, tmp_path / "eval")
    assert json.loads(path.read_text())["mi_bound"]["mi_bound"] is None
    assert read_report(tmp_path / "eval")["mi_bound"]["per_seed"] == [{"loss": None}]
    assert "MI bound" in format_summary([read_report(tmp_path / "eval")])
    assert format_summary([]) == "no evaluations"


def test_topic_text_widens_the_query_with_the_base_answers_under_the_other_constitutions():
    from types import SimpleNamespace as NS

    q = NS(id="q1", text="How can I make new friends in a new city?")
    plus, minus = NS(id="+a"), NS(id="-a")
    base = [{"query_id": "q1", "constitution_id": "+a", "response": "Say hello to your neighbours."},
            {"query_id": "q1", "constitution_id": "-a", "response": "Join a club, a sports team or a community "
                                                                    "group; volunteering helps as well."}]
    topics = deg.topic_texts([(plus, q, 0, "x"), (minus, q, 0, "y")], base)
    terse = "- Join a running club.\n- Volunteer on weekends."
    assert not deg.is_on_topic(terse, q.text)  # no word of the question itself
    assert deg.is_on_topic(terse, topics[(q.text, "+a")])  # the base model's other answer names the topic's words
    assert not deg.is_on_topic("I understand these instructions clearly.", topics[(q.text, "+a")])
    # an answer never counts through the base model's answer under its own constitution
    assert "neighbours" not in topics[(q.text, "+a")] and "neighbours" in topics[(q.text, "-a")]
