"""Import and export the files users of the SAMI reference code already have.

- constitution pair files: {"positive": "1. ...\\n2. ...", "negative": "...",
  "identifiers": {"positive": ["pos concise", ...], "negative": ["neg concise", ...]}}
- generated training data: {example_id: [{"prompt": ..., "response": ..., "example_id": ...}, ...]}
  (entry i is the response sampled under the i-th constitution's prompt)
- multi-task principles: {name: {"weak": ..., "strong": ..., "antithesis": ..., "relevant_for": [categories]}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import DataError
from .constitutions import Constitution, Principle, SignedPrinciple, pattern_id
from .data import Query, SamiExample

_NUMBERED = re.compile(r"^\s*\d+[.)]\s*")


def _load_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None


def _numbered_lines(text: str) -> list[str]:
    return [_NUMBERED.sub("", line).strip() for line in text.strip().splitlines() if line.strip()]


def _parse_ident(ident: str, where: str) -> tuple[str, bool]:
    sign, _, name = ident.strip().partition(" ")
    if sign not in ("pos", "neg") or not name:
        raise DataError(f"{where}: identifier {ident!r} is not 'pos NAME' or 'neg NAME'")
    return name.strip(), sign == "pos"


def read_reference_constitution(path: str | Path) -> tuple[Constitution, Constitution]:
    """One reference file: its 'positive' and 'negative' constitutions."""
    d = _load_json(path)
    if not isinstance(d, dict) or not {"positive", "negative", "identifiers"} <= set(d):
        raise DataError(f"{path}: expected keys 'positive', 'negative' and 'identifiers'")
    out = []
    for side in ("positive", "negative"):
        lines = _numbered_lines(d[side])
        idents = d["identifiers"].get(side, [])
        if len(lines) != len(idents):
            raise DataError(f"{path}: '{side}' has {len(lines)} principle lines but {len(idents)} identifiers")
        signed = tuple(SignedPrinciple(*_parse_ident(i, f"{path}: identifiers.{side}"), text=t)
                       for i, t in zip(idents, lines, strict=True))
        text = "\n".join(f"{k + 1}. {p.text}" for k, p in enumerate(signed))
        out.append(Constitution(pattern_id({p.name: p.positive for p in signed}), signed, text))
    return out[0], out[1]


def principles_from_constitutions(constitutions: Iterable[Constitution]) -> list[Principle]:
    """Recover principles and antitheses from constitutions that state each principle both ways somewhere."""
    pos: dict[str, str] = {}
    neg: dict[str, str] = {}
    order: list[str] = []
    for c in constitutions:
        for p in c.principles:
            if p.name not in order:
                order.append(p.name)
            (pos if p.positive else neg).setdefault(p.name, p.text)
    missing = [n for n in order if n not in pos or n not in neg]
    if missing:
        raise DataError(f"principles {missing} never appear both as written and negated, so their antithesis "
                        "is unknown")
    return [Principle(n, pos[n], neg[n]) for n in order]


def write_reference_constitution(path: str | Path, positive: Constitution, negative: Constitution) -> None:
    def ident(c: Constitution) -> list[str]:
        return [("pos " if p.positive else "neg ") + p.name for p in c.principles]

    Path(path).write_text(json.dumps({
        "positive": positive.text, "negative": negative.text,
        "identifiers": {"positive": ident(positive), "negative": ident(negative)},
    }, indent=4), encoding="utf-8")


def read_multitask_principles(path: str | Path) -> list[Principle]:
    d = _load_json(path)
    if not isinstance(d, dict) or not d:
        raise DataError(f"{path}: expected an object of principles keyed by name")
    out = []
    for name, v in d.items():
        if not isinstance(v, dict) or "antithesis" not in v or not (v.get("strong") or v.get("weak")):
            raise DataError(f"{path}: principle {name!r} needs 'antithesis' and 'weak' or 'strong'")
        out.append(Principle(name=name, text=v.get("strong") or v["weak"], antithesis=v["antithesis"],
                             weak=v.get("weak"), strong=v.get("strong"),
                             categories=tuple(v.get("relevant_for") or ())))
    return out


def write_multitask_principles(path: str | Path, principles: Sequence[Principle]) -> None:
    Path(path).write_text(json.dumps({
        p.name: {"weak": p.weak or p.text, "strong": p.strong or p.text, "antithesis": p.antithesis,
                 "relevant_for": list(p.categories)} for p in principles
    }, indent=2), encoding="utf-8")


def read_reference_training_data(path: str | Path) -> list[SamiExample]:
    """The reference's generated data; the constitutions are known only through the prompts they produced."""
    d = _load_json(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected an object keyed by example id")
    out = []
    for ex_id, items in d.items():
        if not isinstance(items, list) or len(items) < 2:
            raise DataError(f"{path}: example {ex_id!r} needs a list of at least 2 prompt/response pairs")
        try:
            prompts = [str(it["prompt"]) for it in items]
            responses = [str(it["response"]) for it in items]
        except (KeyError, TypeError):
            raise DataError(f"{path}: example {ex_id!r} has an item without 'prompt' and 'response'") from None
        constitutions = [Constitution(f"reference-{i}", (), "") for i in range(len(items))]
        out.append(SamiExample(Query(str(ex_id), ""), constitutions, responses, prompts))
    return out


def write_reference_training_data(path: str | Path, examples: Iterable[SamiExample]) -> None:
    Path(path).write_text(json.dumps({
        e.query.id: [{"prompt": p, "response": r, "example_id": e.query.id}
                     for p, r in zip(e.prompts, e.responses, strict=True)]
        for e in examples
    }, indent=2), encoding="utf-8")
