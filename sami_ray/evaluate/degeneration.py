"""The degeneration guard: a higher MI bound is not success when answers stop answering.

A policy can separate constitutions by answering one of them with evasive one-liners ("I understand these
instructions clearly."). Per constitution we measure:
- on-topic share: the answer shares at least one content word with the query's topic text: the query and the base
  model's answers to the same query under the other constitutions (stop words removed; words match on a crude
  stem or a long common prefix). The base answers widen the query's few words to the topic's vocabulary, so a
  terse on-topic answer ("Join a club or community." to "How can I make new friends in a new city?") counts, while a
  non-answer still shares nothing; they come from the other constitutions for the base model too, so both sides
  are measured the same way. Cheap, deterministic and model-free; it tracked the failure seen on
  these machines (0.88 -> 0.38 -> 0.03), while a measure scored by the policy itself could be gamed by that same
  policy. It misses on-topic answers that use none of the query's words (about 1 in 24 base SmolLM2 answers),
  which is why the flag compares with the base model's share rather than with 100%;
- evasive share: empty or under 3 words, or an answer under 30 words that opens with a stock non-answer
  ("I understand", "I cannot", "As an AI", "I'm sorry", ...);
- repetition: mean share of repeated word 3-grams; mean length in words.
An iteration is flagged when, for any constitution, the on-topic share falls more than `drop_points` percentage
points below the base model's, or the evasive share rises by more than that, AND the change is larger than
sampling noise (one-sided two-proportion z-test at 95%). Without the noise test, 12 held-out queries make every
single off-topic answer an 8-point drop: a real demo run tripped the guard on two lexical misses
("houseplants" answered with "home's plants"). A collapse like 1.00 -> 0.00 on 4 queries, or 0.88 -> 0.38 on 16,
is far beyond noise. The action is then the config's `on_degeneration` ("warn" | "stop" | "rollback"), else "none".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from .text import ngram_repetition, shares_content, word_count

EVASIVE_OPENINGS = re.compile(
    r"^\W*(?:i understand|i cannot|i can't|i can not|i'm sorry|i am sorry|sorry\b|as an ai|as a language model|"
    r"i'm not able|i am not able|i'm unable|i am unable|i apologi[sz]e|i will follow|i'll follow|understood|"
    r"thank you for|noted\b|i'm here to help|i am here to help|of course[.!]?$|sure[.!]?$|okay[.!]?$)",
    re.IGNORECASE)


def is_on_topic(response: str, query: str) -> bool:
    """Shares a content word stem with the query; a query with no content words cannot be judged and counts as met."""
    shared = shares_content(query, response)
    return shared is None or shared


def topic_texts(answers: Sequence[tuple], base_records: Sequence[Mapping]) -> dict[tuple[str, str], str]:
    """(query text, constitution id) -> the query followed by the base model's answers to that query under the
    other constitutions. `answers`: (constitution, query, seed, response) as the runner has them; `base_records`:
    the base model's report's responses (query_id, constitution_id, response)."""
    by_query: dict[str, list[tuple[str, str]]] = {}
    for r in base_records:
        by_query.setdefault(r["query_id"], []).append((r["constitution_id"], r["response"]))
    out = {}
    for c, q, _, _ in answers:
        others = [text for cid, text in by_query.get(q.id, []) if cid != c.id]
        out[(q.text, c.id)] = "\n".join([q.text, *others])
    return out


def is_evasive(response: str) -> bool:
    n = word_count(response)
    return n < 3 or (n < 30 and bool(EVASIVE_OPENINGS.match(response.strip())))


def answer_stats(pairs: Sequence[tuple[str, str]]) -> dict:
    """Stats of (query, response) pairs."""
    if not pairs:
        return {"n": 0, "on_topic": None, "evasive": None, "empty": None, "repetition": None, "mean_words": None}
    k = len(pairs)
    return {
        "n": k,
        "on_topic": sum(is_on_topic(r, q) for q, r in pairs) / k,
        "evasive": sum(is_evasive(r) for _, r in pairs) / k,
        "empty": sum(not r.strip() for _, r in pairs) / k,
        "repetition": sum(ngram_repetition(r) for _, r in pairs) / k,
        "mean_words": sum(word_count(r) for _, r in pairs) / k,
    }


Z_ONE_SIDED_95 = 1.645


def worse_beyond_noise(base_share: float, base_n: int, share: float, n: int, drop: float) -> bool:
    """`share` is more than `drop` below `base_share`, and a two-proportion z-test says that is not chance."""
    if base_share - share <= drop or n == 0 or base_n == 0:
        return False
    pooled = (base_share * base_n + share * n) / (base_n + n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / base_n + 1 / n))
    return se == 0 or (base_share - share) / se > Z_ONE_SIDED_95


def degeneration_report(groups: Mapping[str, Sequence[tuple[str, str]]], base: Mapping | None,
                        drop_points: float, on_degeneration: str) -> dict:
    """`groups`: constitution id -> (query, response) pairs; `base`: the base model's degeneration report."""
    per = {cid: answer_stats(pairs) for cid, pairs in groups.items()}
    overall = answer_stats([pr for pairs in groups.values() for pr in pairs])
    reasons: list[str] = []
    base_per = (base or {}).get("per_constitution") or {}
    limit = drop_points / 100.0
    for cid, stats in per.items():
        ref = base_per.get(cid)
        if not ref or stats["n"] == 0:
            continue
        n, base_n = stats["n"], ref.get("n") or 0
        if ref.get("on_topic") is not None and worse_beyond_noise(ref["on_topic"], base_n, stats["on_topic"], n,
                                                                  limit):
            reasons.append(f"{cid}: on-topic share {stats['on_topic']:.2f} vs base {ref['on_topic']:.2f}")
        if ref.get("evasive") is not None and worse_beyond_noise(1 - ref["evasive"], base_n, 1 - stats["evasive"],
                                                                 n, limit):
            reasons.append(f"{cid}: evasive share {stats['evasive']:.2f} vs base {ref['evasive']:.2f}")
    flagged = bool(reasons)
    return {"per_constitution": per, "overall": overall, "flagged": flagged, "reasons": reasons,
            "action": on_degeneration if flagged else "none", "drop_points": drop_points,
            "compared_to_base": bool(base_per)}
