"""A library of principles whose satisfaction code can check, each with an antithesis.

`check(response, query)` says whether a response follows the principle; `antithesis_check` whether it follows the
antithesis (by default: it does not follow the principle). For a run using these principles, evaluation reports
the share of answers under the positive constitution that follow the principle and the share of answers under
the antithesis that follow the antithesis: judge-free and deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..sami.constitutions import Principle
from .text import word_count

Check = Callable[[str, str], bool]

# A list line: '- x', '* x', '• x', '1. x' or '1) x' (after optional indentation).
_LIST_LINE = re.compile(r"^\s*(?:[-*•]\s+|\d{1,2}[.)]\s+)\S")
_FINAL_LINE = re.compile(r"^\s*(?:####\s*\S+|(?:\*\*)?final answer(?:\*\*)?\s*:\s*\S+)", re.IGNORECASE)
_STEP_MARKERS = re.compile(
    r"\b(?:step\s*\d+|first(?:ly)?,|second(?:ly)?,|third(?:ly)?,|then,?|next,|after that|finally,|lastly,)"
    r"|^\s*\d{1,2}[.)]\s", re.IGNORECASE | re.MULTILINE)
_MARKDOWN = re.compile(r"\*\*[^*\n]+\*\*|^\s*#{1,6}\s|```|`[^`\n]+`|^\s*[-*]\s", re.MULTILINE)
CLOSING_PHRASE = "Hope this helps!"


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def is_bulleted(response: str, query: str = "") -> bool:
    """At least one list line, and list lines are more than half of the non-empty lines (an intro line is fine)."""
    lines = _lines(response)
    listed = sum(bool(_LIST_LINE.match(ln)) for ln in lines)
    return listed >= 1 and listed * 2 > len(lines)


def is_short(response: str, query: str = "") -> bool:
    return 0 < word_count(response) < 40


def is_long(response: str, query: str = "") -> bool:
    return word_count(response) >= 80


def has_final_answer_line(response: str, query: str = "") -> bool:
    lines = _lines(response)
    return bool(lines) and bool(_FINAL_LINE.match(lines[-1]))


def has_step_markers(response: str, query: str = "") -> bool:
    """Two or more distinct reasoning markers ('First,', 'Then', 'Step 2', a numbered line, ...)."""
    found = {m.group(0).strip().lower().rstrip(",") for m in _STEP_MARKERS.finditer(response)}
    return len(found) >= 2


def is_lowercase(response: str, query: str = "") -> bool:
    return any(c.isalpha() for c in response) and not any(c.isupper() for c in response)


def has_no_question(response: str, query: str = "") -> bool:
    return bool(response.strip()) and "?" not in response


def ends_with_question(response: str, query: str = "") -> bool:
    return response.strip().rstrip("\"')*_ ").endswith("?")


def _normalise_end(text: str) -> str:
    return re.sub(r"[\s\"'*_.!]+$", "", text.strip().lower())


def ends_with_closing_phrase(response: str, query: str = "") -> bool:
    return _normalise_end(response).endswith(_normalise_end(CLOSING_PHRASE))


def is_plain_text(response: str, query: str = "") -> bool:
    return bool(response.strip()) and not _MARKDOWN.search(response)


@dataclass(frozen=True)
class VerifiablePrinciple:
    name: str
    text: str
    antithesis: str
    check: Check
    categories: tuple[str, ...] = ()
    antithesis_check: Check | None = field(default=None)
    note: str = ""  # what exactly the checker counts

    def follows(self, response: str, query: str = "") -> bool:
        return bool(self.check(response, query))

    def follows_antithesis(self, response: str, query: str = "") -> bool:
        if self.antithesis_check is not None:
            return bool(self.antithesis_check(response, query))
        return not self.follows(response, query)

    def to_principle(self) -> Principle:
        return Principle(self.name, self.text, self.antithesis, categories=self.categories)


LIBRARY: dict[str, VerifiablePrinciple] = {p.name: p for p in (
    VerifiablePrinciple(
        "bullets", "Answer as a bulleted list: each line starts with '- '.",
        "Answer in plain prose paragraphs, with no lists or bullet points.", is_bulleted,
        note="list lines ('- ', '* ', '• ', '1. ', '1) ') are at least one and more than half the non-empty lines"),
    VerifiablePrinciple(
        "concise", "Answer in under 40 words.", "Answer in at least 80 words.", is_short,
        antithesis_check=is_long,
        note="under 40 words (antithesis: at least 80); answers capped by max_tokens rarely reach 80 words, "
             "so compare the mean word counts per constitution too"),
    VerifiablePrinciple(
        "final_answer_line", "End with a final line of the form '#### N', where N is the final answer.",
        "Do not end with a separate final answer line; state the answer inside a sentence.",
        has_final_answer_line, categories=("math", "reasoning"),
        note="the last non-empty line starts with '####' or 'Final answer:'"),
    VerifiablePrinciple(
        "step_by_step", "Reason step by step, marking the steps (First, Then, Finally, or Step 1, Step 2, ...).",
        "Give only the result, with no intermediate steps or reasoning.", has_step_markers,
        note="two or more distinct step markers ('First,', 'Then', 'Step 2', numbered lines, ...)"),
    VerifiablePrinciple(
        "lowercase", "Write entirely in lowercase letters, with no capital letters at all.",
        "Use standard capitalization, starting every sentence with a capital letter.", is_lowercase,
        note="has letters and no uppercase letter"),
    VerifiablePrinciple(
        "no_questions", "Do not ask the user any questions; never end with a question.",
        "End your answer with a question back to the user.", has_no_question,
        antithesis_check=ends_with_question,
        note="no '?' anywhere (antithesis: the answer ends with '?')"),
    VerifiablePrinciple(
        "closing_phrase", f"End your answer with the exact phrase '{CLOSING_PHRASE}'",
        "Do not add any closing phrase or sign-off; stop right after the content.", ends_with_closing_phrase,
        note=f"the answer ends with '{CLOSING_PHRASE}' (case, quotes and final punctuation ignored)"),
    VerifiablePrinciple(
        "plain_text", "Use plain text only: no Markdown such as **bold**, headings, code or list markers.",
        "Format your answer with Markdown: **bold** key terms and '#' headings.", is_plain_text,
        note="no '**bold**', '#' headings, backticks or '-'/'*' list markers"),
)}


def get_principle(name: str, field_name: str = "constitutions.builtin") -> VerifiablePrinciple:
    """The library principle `name`; an unknown name is a config mistake named with its field."""
    try:
        return LIBRARY[name]
    except KeyError:
        raise ConfigError(f"{field_name}: unknown verifiable principle {name!r} "
                          f"(known: {', '.join(sorted(LIBRARY))})") from None


def checker_for(principle: Principle | str) -> VerifiablePrinciple | None:
    """The checker of a run's principle, found by name (a writer may rephrase a principle; its name stays)."""
    name = principle if isinstance(principle, str) else principle.name
    return LIBRARY.get(name)


def principle_rates(items: Sequence[tuple[dict[str, bool], str, str]],
                    principles: Sequence[Principle]) -> dict[str, dict]:
    """Per checkable principle, from (constitution signs, query, response) triples:

    - `positive_follows`: share of answers under the principle that follow it;
    - `antithesis_follows`: share of answers under the antithesis that follow the antithesis;
    - `antithesis_follows_principle`: share of answers under the antithesis that still follow the principle
      (the contrast with `positive_follows` is what SAMI should widen).
    """
    out: dict[str, dict] = {}
    for p in principles:
        vp = checker_for(p)
        if vp is None:
            continue
        pos = [(q, r) for signs, q, r in items if signs.get(p.name) is True]
        neg = [(q, r) for signs, q, r in items if signs.get(p.name) is False]
        out[p.name] = {
            "positive_n": len(pos),
            "antithesis_n": len(neg),
            "positive_follows": _share(vp.follows(r, q) for q, r in pos),
            "antithesis_follows": _share(vp.follows_antithesis(r, q) for q, r in neg),
            "antithesis_follows_principle": _share(vp.follows(r, q) for q, r in neg),
            "positive_mean_words": _mean(word_count(r) for _, r in pos),
            "antithesis_mean_words": _mean(word_count(r) for _, r in neg),
            "check": vp.note,
        }
    return out


def _share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
