"""Import and export the files users of the SAMI reference code already have.

- constitution pair files: {"positive": "1. ...\\n2. ...", "negative": "...",
  "identifiers": {"positive": ["pos concise", ...], "negative": ["neg concise", ...]}}
- generated training data: {example_id: [{"prompt": ..., "response": ..., "example_id": ...}, ...]}
  (entry i is the response sampled under the i-th constitution's prompt)
- multi-task principles: {name: {"weak": ..., "strong": ..., "antithesis": ..., "relevant_for": [categories]}}
- sami-extension's math principles: {name: {"definition": ..., "paraphrases": [...],
  "paraphrases_antithesis": [...]}}
- a folder of constitution pair files (the reference's constitutions_mistral/, constitutions_opus/): the
  principles they state, each wording found in any file kept as a paraphrase
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import DataError
from .constitutions import Constitution, Principle, SignedPrinciple, pattern_id
from .data import SamiExample

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
    if not is_reference_constitution(d):
        have = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: a constitution pair file needs the keys 'positive', 'negative' and "
                        f"'identifiers'; it has {have}")
    out = []
    for side in ("positive", "negative"):
        if not isinstance(d[side], str) or not isinstance(d["identifiers"], dict):
            raise DataError(f"{path}: '{side}' must be numbered principle lines and 'identifiers' an object of "
                            "'positive' and 'negative' lists")
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
    """Recover principles and antitheses from constitutions that state each principle both ways somewhere; every
    other wording of a principle (or of its antithesis) becomes a paraphrase, in the order first seen."""
    wordings: dict[tuple[str, bool], list[str]] = {}
    order: list[str] = []
    for c in constitutions:
        for p in c.principles:
            if p.name not in order:
                order.append(p.name)
            seen = wordings.setdefault((p.name, p.positive), [])
            if p.text not in seen:
                seen.append(p.text)
    missing = [n for n in order if (n, True) not in wordings or (n, False) not in wordings]
    if missing:
        raise DataError(f"principles {missing} never appear both as written and negated, so their antithesis "
                        "is unknown")
    return [Principle(n, wordings[n, True][0], wordings[n, False][0], paraphrases=tuple(wordings[n, True][1:]),
                      antithesis_paraphrases=tuple(wordings[n, False][1:])) for n in order]


def is_reference_constitution(data: object) -> bool:
    return isinstance(data, dict) and {"positive", "negative", "identifiers"} <= set(data)


def read_reference_constitution_folder(folder: str | Path) -> list[Principle]:
    """The principles of a folder of reference constitution pair files (every *.json in it, in name order)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"), key=lambda f: (len(f.stem), f.stem))  # 2.json before 10.json
    if not files:
        raise DataError(f"{folder}: no constitution files (*.json with 'positive', 'negative' and 'identifiers')")
    pairs = [c for f in files for c in read_reference_constitution(f)]
    try:
        return principles_from_constitutions(pairs)
    except DataError as e:
        raise DataError(f"{folder}: {e}") from None


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
            have = sorted(v) if isinstance(v, dict) else type(v).__name__
            raise DataError(f"{path}: principle {name!r} has {have}; a multi-task principle needs 'antithesis' "
                            "and 'weak' or 'strong' (and may have 'relevant_for')")
        out.append(Principle(name=name, text=v.get("strong") or v["weak"], antithesis=v["antithesis"],
                             weak=v.get("weak"), strong=v.get("strong"),
                             categories=tuple(v.get("relevant_for") or ())))
    return out


def is_math_principles(data: object) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "paraphrases_antithesis" in v for v in data.values()))


def read_math_principles(path: str | Path) -> list[Principle]:
    """sami-extension's math principle file. Its generation draws each principle from `paraphrases` (the first
    becomes the text, the rest paraphrases) and each antithesis from `paraphrases_antithesis`; the short
    `definition` is kept as the weak phrasing. No categories: every principle applies to every problem."""
    d = _load_json(path)
    if not isinstance(d, dict) or not d:
        raise DataError(f"{path}: expected an object of principles keyed by name")
    out = []
    for name, v in d.items():
        pos = v.get("paraphrases") if isinstance(v, dict) else None
        neg = v.get("paraphrases_antithesis") if isinstance(v, dict) else None
        ok = all(isinstance(x, list) and x and all(isinstance(t, str) and t.strip() for t in x) for x in (pos, neg))
        if not ok:
            have = sorted(v) if isinstance(v, dict) else type(v).__name__
            raise DataError(f"{path}: principle {name!r} has {have}; a math principle needs non-empty lists "
                            "'paraphrases' and 'paraphrases_antithesis' (and may have 'definition')")
        definition = v.get("definition")
        out.append(Principle(name=name, text=pos[0].strip(), antithesis=neg[0].strip(),
                             weak=definition.strip() if isinstance(definition, str) and definition.strip() else None,
                             categories=tuple(v.get("relevant_for") or ()),
                             paraphrases=tuple(t.strip() for t in pos[1:]),
                             antithesis_paraphrases=tuple(t.strip() for t in neg[1:])))
    return out


def write_multitask_principles(path: str | Path, principles: Sequence[Principle]) -> None:
    Path(path).write_text(json.dumps({
        p.name: {"weak": p.weak or p.text, "strong": p.strong or p.text, "antithesis": p.antithesis,
                 "relevant_for": list(p.categories)} for p in principles
    }, indent=2), encoding="utf-8")


def read_reference_training_data(path: str | Path) -> list[SamiExample]:
    """The reference's generated data; the constitutions are known only through the prompts they produced
    (read and checked by `datasets.reference_samples`, which a run's sampler.samples_file uses too)."""
    from .datasets.reference_samples import read_reference_samples

    return read_reference_samples(path)


def write_reference_training_data(path: str | Path, examples: Iterable[SamiExample]) -> None:
    Path(path).write_text(json.dumps({
        e.query.id: [{"prompt": p, "response": r, "example_id": e.query.id}
                     for p, r in zip(e.prompts, e.responses, strict=True)]
        for e in examples
    }, indent=2), encoding="utf-8")
