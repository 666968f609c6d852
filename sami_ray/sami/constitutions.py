"""Principles, antitheses and constitutions: which principles a prompt states, each either as written or negated.

A constitution picks, for every principle of a set, the principle or its antithesis, and lists them numbered in a
shuffled order (the order carries no signal, so training sees many orders). SAMI needs N *distinct* constitutions
per query: response j is sampled under constitution j, and the loss asks the model to tell them apart.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from .seeds import derive_rng

Phrasing = Literal["text", "weak", "strong"]
SamplingMode = Literal["random", "flip_one", "all_or_none"]


@dataclass(frozen=True)
class Principle:
    """One principle with its antithesis; `weak`/`strong` are the multi-task paper's short and long phrasings."""

    name: str
    text: str
    antithesis: str
    weak: str | None = None
    strong: str | None = None
    categories: tuple[str, ...] = ()

    def phrase(self, positive: bool, phrasing: Phrasing = "text") -> str:
        if not positive:
            return self.antithesis
        if phrasing == "weak" and self.weak:
            return self.weak
        if phrasing == "strong" and self.strong:
            return self.strong
        return self.text

    def relevant_for(self, category: str | None) -> bool:
        """A principle without categories applies to every query."""
        return not self.categories or category is None or category in self.categories

    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Principle:
        return cls(
            name=str(d["name"]),
            text=str(d["text"]),
            antithesis=str(d["antithesis"]),
            weak=d.get("weak"),
            strong=d.get("strong"),
            categories=tuple(d.get("categories") or ()),
        )


@dataclass(frozen=True)
class SignedPrinciple:
    name: str
    positive: bool
    text: str


@dataclass(frozen=True)
class Constitution:
    """`principles` are in the order shown in `text`; `id` names the sign pattern, not the order."""

    id: str
    principles: tuple[SignedPrinciple, ...]
    text: str

    @property
    def signs(self) -> dict[str, bool]:
        return {p.name: p.positive for p in self.principles}

    @property
    def all_positive(self) -> bool:
        return all(p.positive for p in self.principles)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "principles": [asdict(p) for p in self.principles]}

    @classmethod
    def from_dict(cls, d: dict) -> Constitution:
        return cls(
            id=str(d["id"]),
            text=str(d["text"]),
            principles=tuple(SignedPrinciple(**p) for p in d["principles"]),
        )


def pattern_id(signs: dict[str, bool]) -> str:
    """A stable name for a sign pattern: '+concise,-comprehensive' (sorted by principle name)."""
    return ",".join(("+" if signs[n] else "-") + n for n in sorted(signs))


def render(principles: Sequence[Principle], signs: dict[str, bool], order: Sequence[int],
           phrasing: Phrasing = "text") -> Constitution:
    signed = tuple(
        SignedPrinciple(principles[k].name, signs[principles[k].name],
                        principles[k].phrase(signs[principles[k].name], phrasing))
        for k in order
    )
    text = "\n".join(f"{i + 1}. {p.text}" for i, p in enumerate(signed))
    return Constitution(id=pattern_id(signs), principles=signed, text=text)


def max_distinct(num_principles: int, mode: SamplingMode) -> int:
    if mode == "all_or_none":
        return 2
    if mode == "flip_one":
        return num_principles + 1
    return 2 ** num_principles


def sign_patterns(names: Sequence[str], n: int, mode: SamplingMode, rng: random.Random,
                  first_all_positive: bool) -> list[dict[str, bool]]:
    """N distinct sign patterns over the principles, drawn per `mode`."""
    k = len(names)
    if k == 0:
        raise ValueError("a constitution needs at least one principle")
    if n < 2:
        raise ValueError(f"SAMI needs at least 2 constitutions per query, got {n}")
    limit = max_distinct(k, mode)
    if n > limit:
        raise ValueError(f"mode {mode!r} allows at most {limit} distinct constitutions from {k} principle(s), "
                         f"but {n} were asked for")
    positive = dict.fromkeys(names, True)
    if mode == "all_or_none":
        return [positive, dict.fromkeys(names, False)]
    if mode == "flip_one":
        flips = rng.sample(list(names), n - 1)
        return [positive] + [{m: m != f for m in names} for f in flips]
    # random: every pattern equally likely, without repeats; the all-positive one first if asked.
    all_codes = list(range(2 ** k))
    full = 2 ** k - 1  # bit set = positive
    chosen: list[int] = []
    if first_all_positive:
        chosen.append(full)
        all_codes.remove(full)
    chosen += rng.sample(all_codes, n - len(chosen))
    return [{name: bool(code >> (k - 1 - b) & 1) for b, name in enumerate(names)} for code in chosen]


def sample_constitutions(principles: Sequence[Principle], n: int, *, seed: int, key: object = "",
                         mode: SamplingMode = "random", first_all_positive: bool = True,
                         shuffle: bool = True, phrasing: Phrasing = "text") -> list[Constitution]:
    """N distinct constitutions for one query; deterministic in (seed, key), where key is usually the query id."""
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        raise ValueError(f"principle names must be unique, got {names}")
    rng = derive_rng(seed, key)
    patterns = sign_patterns(names, n, mode, rng, first_all_positive)
    out = []
    for signs in patterns:
        order = list(range(len(principles)))
        if shuffle:
            rng.shuffle(order)
        out.append(render(principles, signs, order, phrasing))
    return out


def relevant_principles(principles: Iterable[Principle], category: str | None) -> list[Principle]:
    return [p for p in principles if p.relevant_for(category)]


def constitutions_per_query(queries: Iterable, principles: Sequence[Principle], options: object, n: int, *,
                            seed: int, tag: object) -> list[tuple[object, list[Constitution]]]:
    """(query, its N constitutions) for every query that has a relevant principle.

    `options` carries the constitutions config (mode, first_all_positive, shuffle, phrasing, filter_by_category);
    the constitutions depend only on (seed, tag, query id), so the same query gets the same ones on every resume.
    """
    out = []
    for q in queries:
        ps = relevant_principles(principles, q.category) if options.filter_by_category else list(principles)
        if not ps:
            continue
        out.append((q, sample_constitutions(ps, n, seed=seed, key=(tag, q.id), mode=options.mode,
                                            first_all_positive=options.first_all_positive, shuffle=options.shuffle,
                                            phrasing=options.phrasing)))
    return out


def all_sign_patterns(names: Sequence[str]) -> list[dict[str, bool]]:
    return [dict(zip(names, bits, strict=True)) for bits in itertools.product([True, False], repeat=len(names))]


@dataclass
class PrincipleSet:
    """The principles of a run, as written once by the principle writer and reused by every iteration."""

    principles: list[Principle] = field(default_factory=list)
    source: str = "config"  # "config", "writer", "writer-fallback", or a file name
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"principles": [p.to_dict() for p in self.principles], "source": self.source, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> PrincipleSet:
        return cls([Principle.from_dict(p) for p in d["principles"]], d.get("source", "config"),
                   list(d.get("notes", [])))
