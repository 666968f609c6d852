"""Small text measures shared by the principle writer and the evaluation checks: words, content words, crude stems."""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")

# Function words plus words every how-to question or answer uses; sharing only these says nothing about the topic.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing done down during each either else etc even ever every few for from further get
gets getting got had has have having he her here hers herself him himself his how however i if in into is it its
itself just know let like made make makes many may me might more most much must my myself need needs no nor not now
of off often on once one only or other our ours ourselves out over own please really same shall she should so some
such than that the their theirs them themselves then there these they thing things this those through to too
under until up upon us use used using very want was way ways we well were what when where whether which while who
whom why will with within without would yes yet you your yours yourself yourselves best better good tips tip step
steps help helps
""".split())

_SUFFIXES = ("ational", "ization", "fulness", "ousness", "iveness", "ments", "ment", "ings", "ing", "edly", "ed",
             "ers", "er", "est", "ly", "es", "s")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def stem(word: str) -> str:
    """A crude suffix stripper: 'baking', 'baked', 'bakes' -> 'bak'. Enough to match a query's words in an answer."""
    w = word.lower()
    if len(w) > 4 and w.endswith(("ies", "ied")):  # batteries, tried -> battery, try
        return w[:-3] + "y"
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[: -len(suf)]
            if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":  # running -> runn -> run
                w = w[:-1]
            break
    if len(w) > 3 and w.endswith("e"):  # bake / baking / baked all -> bak
        w = w[:-1]
    return w


def content_stems(text: str) -> set[str]:
    """Stems of the words that carry topic: no stop words, no numbers, at least three letters."""
    return {stem(w) for w in words(text) if len(w) >= 3 and not w.isdigit() and w.lower() not in STOP_WORDS}
