"""Text measures of the checkers and the degeneration guard; words, stop words and stems come from sami/text.py."""

from __future__ import annotations

from ..sami.text import STOP_WORDS, content_stems, stem, words

__all__ = ["STOP_WORDS", "content_stems", "ngram_repetition", "shares_content", "stem", "word_count", "words"]


def word_count(text: str) -> int:
    return len(words(text))


def _related(a: str, b: str) -> bool:
    """Same stem, a long shared prefix ('procrastinat' / 'procrastination', 'stres' / 'stressful'), or a compound
    holding the other word ('houseplant' / 'plant')."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    if len(short) >= 5 and short in long_:
        return True
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k >= 5 and k >= 0.75 * min(len(a), len(b))


def shares_content(query: str, response: str) -> bool | None:
    """Whether the response shares a content word (stem) with the query; None when the query has none."""
    q = content_stems(query)
    if not q:
        return None
    r = content_stems(response)
    return bool(q & r) or any(_related(a, b) for a in q for b in r)


def ngram_repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: no repetition; near 1: a loop)."""
    toks = [w.lower() for w in words(text)]
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
