"""Reading (principle, antithesis) pairs, or one reworded sentence, out of what a principle writer said; checks.

Writer models are small and sloppy: they add prose around the answer, number or bullet the items, write JSON
(sometimes in a code fence), repeat lines, or forget an antithesis. The parser takes what it can and drops the
rest; `validate_principles` says in words why a pair was refused, so a failure can be shown to the user.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

Pair = tuple[str, str]

_PRINCIPLE_KEYS = ("principle", "text", "statement", "rule")
_ANTITHESIS_KEYS = ("antithesis", "opposite", "negation", "anti", "antithesis_text")

# 'Principle:', 'Principle 2:', 'Antithesis:', 'Opposite:', 'Opposite principle:', 'Negation:', 'Anti:'.
_LABEL = re.compile(
    r"\b(?:(?P<pro>principle)|(?P<anti>antithesis|opposite|negation|anti))(?:\s+principle)?(?:\s*\d+)?\s*[:：]",
    re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)]|\(\d{1,2}\))\s+")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)


def normalise(text: str) -> str:
    """Case and punctuation do not make two principles different."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _clean(text: str) -> str:
    text = text.replace("**", "").replace("__", "")
    text = " ".join(text.split()).strip(" \t|;,-–—")
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":  # a quoted sentence: drop the quotes
        text = text[1:-1].strip()
    return text


def _dedup(pairs: Iterable[Pair]) -> list[Pair]:
    seen: set[str] = set()
    out = []
    for p, a in pairs:
        key = normalise(p)
        if key and key not in seen:
            seen.add(key)
            out.append((p, a))
    return out


# ------------------------------------------------------------------ JSON

def _pairs_from_json(obj: object) -> list[Pair]:
    if isinstance(obj, dict):
        for key in ("principles", "items", "pairs"):
            if isinstance(obj.get(key), list):
                return _pairs_from_json(obj[key])
        low = {str(k).lower(): v for k, v in obj.items()}
        p = next((low[k] for k in _PRINCIPLE_KEYS if isinstance(low.get(k), str)), None)
        a = next((low[k] for k in _ANTITHESIS_KEYS if isinstance(low.get(k), str)), None)
        return [(_clean(p), _clean(a))] if p and a else []
    if isinstance(obj, list):
        out: list[Pair] = []
        for item in obj:
            if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
                out.append((_clean(item[0]), _clean(item[1])))
            elif isinstance(item, dict):
                out += _pairs_from_json(item)
        return out
    return []


def _json_candidates(text: str) -> Iterable[object]:
    """Every JSON value in the text: code-fence bodies first, then any '[' or '{' that starts a valid value."""
    decoder = json.JSONDecoder()
    for body in _FENCE.findall(text):
        try:
            yield json.loads(body)
        except ValueError:
            pass
    i = 0
    while True:
        starts = [j for j in (text.find("[", i), text.find("{", i)) if j >= 0]
        if not starts:
            return
        j = min(starts)
        try:
            value, end = decoder.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        yield value
        i = end


# ------------------------------------------------------------------ labelled lines and lists

def _pairs_from_lines(text: str) -> list[Pair]:
    pairs: list[Pair] = []
    pending: str | None = None  # a principle waiting for its antithesis
    waiting: str | None = None  # a label ("pro"/"anti") whose text is on the next line
    for raw in text.splitlines():
        line = raw.replace("**", "").replace("__", "")
        listed = bool(_LIST_MARKER.match(line))
        line = _LIST_MARKER.sub("", line).strip()
        if not line or line.startswith("```"):
            continue
        labels = list(_LABEL.finditer(line))
        if not labels:
            if waiting == "pro" or (listed and waiting is None):  # an unlabelled list item reads as a principle
                pending, waiting = _clean(line), None
            elif waiting == "anti" and pending:
                pairs.append((pending, _clean(line)))
                pending = waiting = None
            continue
        waiting = None
        if labels[0].start() > 0 and listed:  # '1. Be brief. Opposite: Be long.'
            pending = _clean(line[: labels[0].start()])
        for k, m in enumerate(labels):
            value = _clean(line[m.end(): labels[k + 1].start() if k + 1 < len(labels) else len(line)])
            kind = "pro" if m.group("pro") else "anti"
            if not value:
                waiting = kind
            elif kind == "pro":
                pending = value
            elif pending:
                pairs.append((pending, value))
                pending = None
    return pairs


def parse_principles(text: str) -> list[Pair]:
    """(principle, antithesis) pairs found in a writer's output, in order, without repeats.

    JSON (bare or in a code fence) wins when it holds any pair; otherwise labelled lines ('Principle: X |
    Antithesis: Y', on one line or on following lines) and list items followed by an antithesis. Items without
    an antithesis are dropped.
    """
    for value in _json_candidates(text):
        pairs = _pairs_from_json(value)
        if pairs:
            return _dedup(pairs)
    return _dedup(_pairs_from_lines(text))


_REWRITE_LABEL = re.compile(r"^(?:rewritten|rewrite|instruction|principle|antithesis|answer)\s*[:：]\s*", re.IGNORECASE)


def parse_rewrite(text: str) -> str:
    """The one sentence a writer gave as a rewording: its first non-empty line, without a list marker, a leading
    label ('Rewritten:') or quotes around it."""
    for raw in text.splitlines():
        line = _REWRITE_LABEL.sub("", _LIST_MARKER.sub("", raw.replace("**", "").strip()))
        if line.strip():
            return _clean(line)
    return ""


def validate_principles(pairs: Iterable[Pair], *, max_chars: int = 300,
                        existing: Iterable[str] = ()) -> tuple[list[Pair], list[str]]:
    """The usable pairs, and one line per refused pair saying why.

    Refused: empty or letter-less sides, sides over `max_chars`, template placeholders left in ('<sentence>'),
    an antithesis that only repeats its principle, and principles already in `existing` or earlier in `pairs`.
    """
    seen = {normalise(t) for t in existing}
    kept: list[Pair] = []
    problems: list[str] = []
    for i, (p, a) in enumerate(pairs, 1):
        p, a = _clean(p), _clean(a)
        why = None
        if not re.search(r"[A-Za-z]", p) or not re.search(r"[A-Za-z]", a):
            why = "empty principle or antithesis"
        elif len(p) > max_chars or len(a) > max_chars:
            why = f"longer than {max_chars} characters"
        elif re.search(r"<[^<>]{1,40}>", p + a):
            why = "a template placeholder was copied instead of filled in"
        elif normalise(p) == normalise(a):
            why = "the antithesis repeats the principle"
        elif normalise(p) in seen:
            why = "duplicate principle"
        if why:
            problems.append(f"pair {i} ({_short(p)!r} / {_short(a)!r}): {why}")
            continue
        seen.add(normalise(p))
        kept.append((p, a))
    return kept, problems


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
