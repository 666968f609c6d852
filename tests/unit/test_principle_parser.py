"""The principle parser on the kind of output small writer models really give."""

from sami_ray.sami.principle_parser import normalise, parse_principles, parse_rewrite, validate_principles


def test_labelled_pairs_in_prose_and_lists():
    text = """Sure! Here are some principles for your assistant:

1. Principle: Be concise. | Antithesis: Be verbose.
2) **Principle:** Use bullet points.
   **Opposite:** Write in plain paragraphs.
- Principle: Be kind to the user.
3. Be honest. Negation: Be dishonest.
Principle:
Avoid jargon.
Anti:
Use jargon freely.

I hope these help you build a great assistant!"""
    assert parse_principles(text) == [
        ("Be concise.", "Be verbose."),
        ("Use bullet points.", "Write in plain paragraphs."),
        ("Be honest.", "Be dishonest."),
        ("Avoid jargon.", "Use jargon freely."),
    ]  # 'Be kind to the user.' has no antithesis: dropped


def test_missing_antitheses_are_dropped():
    text = "Principle: Be brief.\nPrinciple: Be polite.\nAntithesis: Be rude.\n1. Be clear.\n2. Be exact."
    assert parse_principles(text) == [("Be polite.", "Be rude.")]


def test_duplicated_lines_give_one_pair():
    line = "Principle: Answer in short bullet points. | Antithesis: Answer in long paragraphs."
    assert parse_principles("\n".join([line, line, line.upper()])) == [
        ("Answer in short bullet points.", "Answer in long paragraphs.")]


def test_json_in_a_code_fence_with_prose_around():
    text = """Here you go:
```json
[
  {"principle": "Keep answers short.", "antithesis": "Make answers long."},
  {"text": "Use lists.", "opposite": "Never use lists."},
  {"principle": "No antithesis here."}
]
```
Let me know if you need more."""
    assert parse_principles(text) == [("Keep answers short.", "Make answers long."),
                                      ("Use lists.", "Never use lists.")]


def test_json_object_with_principles_key_and_pairs():
    assert parse_principles('Result: {"principles": [{"Principle": "Be calm", "Negation": "Be anxious"}]} ok') == [
        ("Be calm", "Be anxious")]
    assert parse_principles('[["Be calm", "Be anxious"], ["Be calm", "Panic"]]') == [("Be calm", "Be anxious")]


def test_broken_json_falls_back_to_lines():
    text = '[{"principle": "Be short", "antithesis": \nPrinciple: Be short. | Opposite: Be long.'
    assert parse_principles(text) == [("Be short.", "Be long.")]


def test_nothing_usable():
    assert parse_principles("") == []
    assert parse_principles("I am a helpful assistant. How can I help you today?") == []
    assert parse_principles("x7 ]]} {{ ,, Principle:") == []


def test_validate_refuses_with_reasons():
    pairs = [
        ("Be concise.", "Be verbose."),
        ("", "Something."),
        ("Be clear. " * 40, "Be vague."),
        ("Use lists!", "use LISTS"),
        ("be concise", "Ramble on."),
        ("<one sentence>", "<one sentence>"),
        ("Be polite.", "Be rude."),
    ]
    kept, problems = validate_principles(pairs, existing=["Be polite"])
    assert kept == [("Be concise.", "Be verbose.")]
    assert len(problems) == 6
    joined = "\n".join(problems)
    for why in ("empty", "longer than 300", "repeats the principle", "duplicate", "placeholder"):
        assert why in joined
    assert problems[0].startswith("pair 2")


def test_validate_max_chars_and_normalise():
    kept, problems = validate_principles([("Answer briefly.", "Answer at great length.")], max_chars=10)
    assert kept == [] and "longer than 10" in problems[0]
    assert normalise("  Be CONCISE!! ") == normalise("be concise")


def test_parse_rewrite_takes_the_first_sentence_without_labels_or_quotes():
    assert parse_rewrite(" Keep every answer under 40 words.") == "Keep every answer under 40 words."
    assert parse_rewrite("\n\n**Rewritten:** \"Use bullet points.\"\nInstruction: more") == "Use bullet points."
    assert parse_rewrite("1. Principle: Be brief.") == "Be brief."
    assert parse_rewrite("Answer as a list: each line starts with '- '.") == "Answer as a list: each line starts with '- '."
    assert parse_rewrite("  \n ") == "" and parse_rewrite("") == ""
