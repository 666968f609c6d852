"""Principles, antitheses and constitutions: which principles a prompt states, each either as written or negated.

A constitution picks, for every principle of a set, the principle or its antithesis, and lists them numbered in a
shuffled order (the order carries no signal, so training sees many orders). SAMI needs N *distinct* constitutions
per query: response j is sampled under constitution j, and the loss asks the model to tell them apart.

Mode 'subset' samples as the multi-task paper's code does: each constitution states a random subset of the
relevant principles (its size drawn from a range), each principle as written or, with a set probability, as its
antithesis, in random order. A principle may carry paraphrases; each query uses one phrasing of each principle
and one of its antithesis (drawn with the run's seed), the same in all N constitutions of that query, so they
differ by what they ask, never by wording alone.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..errors import ConfigError
from .seeds import derive_rng

Phrasing = Literal["text", "weak", "strong"]
SamplingMode = Literal["random", "flip_one", "all_or_none", "subset"]


@dataclass(frozen=True)
class Principle:
    """One principle with its antithesis; `weak`/`strong` are the multi-task paper's short and long phrasings."""

    name: str
    text: str
    antithesis: str
    weak: str | None = None
    strong: str | None = None
    categories: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()  # other wordings of `text`
    antithesis_paraphrases: tuple[str, ...] = ()  # other wordings of `antithesis`

    def phrase(self, positive: bool, phrasing: Phrasing = "text") -> str:
        return self.phrasings(positive, phrasing)[0]

    def phrasings(self, positive: bool, phrasing: Phrasing = "text") -> tuple[str, ...]:
        """Every wording of the principle (or its antithesis) in this phrasing; the first is the canonical one."""
        if not positive:
            return (self.antithesis, *self.antithesis_paraphrases)
        if phrasing == "weak" and self.weak:
            return (self.weak,)
        if phrasing == "strong" and self.strong:
            return (self.strong,)
        return (self.text, *self.paraphrases)

    def relevant_for(self, category: str | None) -> bool:
        """A principle without categories applies to every query."""
        return not self.categories or category is None or category in self.categories

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("categories", "paraphrases", "antithesis_paraphrases"):
            d[key] = list(d[key])
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
            paraphrases=tuple(str(x) for x in d.get("paraphrases") or ()),
            antithesis_paraphrases=tuple(str(x) for x in d.get("antithesis_paraphrases") or ()),
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


# (principle name, as written?) -> the words a query's constitutions use for it
Wording = dict[tuple[str, bool], str]


def render(principles: Sequence[Principle], signs: dict[str, bool], order: Sequence[int],
           phrasing: Phrasing = "text", wording: Wording | None = None) -> Constitution:
    """The principles at `order`, each with its sign from `signs`, numbered; `wording` overrides the canonical
    phrasing where it names one."""
    def words(p: Principle, positive: bool) -> str:
        return (wording or {}).get((p.name, positive)) or p.phrase(positive, phrasing)

    signed = tuple(
        SignedPrinciple(principles[k].name, signs[principles[k].name],
                        words(principles[k], signs[principles[k].name]))
        for k in order
    )
    text = "\n".join(f"{i + 1}. {p.text}" for i, p in enumerate(signed))
    return Constitution(id=pattern_id({p.name: p.positive for p in signed}), principles=signed, text=text)


def choose_wording(principles: Sequence[Principle], phrasing: Phrasing, rng: random.Random) -> Wording:
    """One wording of each principle and of its antithesis, for all constitutions of one query."""
    return {(p.name, positive): rng.choice(p.phrasings(positive, phrasing))
            for p in principles for positive in (True, False)}


def _subset_sizes(k: int, lo: int, hi: int | None) -> range:
    """How many principles a 'subset' constitution states: the configured range clipped to the k there are."""
    top = min(hi or k, k)
    return range(min(lo, top), top + 1)


def max_distinct(num_principles: int, mode: SamplingMode, *, subset_min: int = 1, subset_max: int | None = None,
                 antithesis_ratio: float = 0.5, first_all_positive: bool = True) -> int:
    """How many distinct constitutions `mode` can make from `num_principles` principles."""
    k = num_principles
    if mode == "all_or_none":
        return 2
    if mode == "flip_one":
        return k + 1
    if mode == "random":
        return 2 ** k
    sizes = _subset_sizes(k, subset_min, subset_max)
    if 0 < antithesis_ratio < 1:
        return sum(math.comb(k, s) * 2 ** s for s in sizes)
    # ratio 0 or 1: every principle of a subset has the same sign, so only the subsets differ (and, at ratio 1,
    # the all-positive first constitution from all the negated ones)
    return sum(math.comb(k, s) for s in sizes) + (1 if antithesis_ratio == 1 and first_all_positive else 0)


def sign_patterns(names: Sequence[str], n: int, mode: SamplingMode, rng: random.Random,
                  first_all_positive: bool) -> list[dict[str, bool]]:
    """N distinct sign patterns over the principles, drawn per `mode` (not 'subset': see subset_patterns)."""
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


def _all_subset_patterns(names: Sequence[str], sizes: range, ratio: float,
                         all_positive: bool) -> list[tuple[list[str], dict[str, bool]]]:
    """Every (principles in order, signs) a 'subset' draw can give; only used when random draws keep repeating."""
    out = []
    for s in sizes:
        for combo in itertools.combinations(names, s):
            if all_positive or ratio == 0:
                sign_sets: Iterable[tuple[bool, ...]] = [(True,) * s]
            elif ratio == 1:
                sign_sets = [(False,) * s]
            else:
                sign_sets = itertools.product([True, False], repeat=s)
            out += [(list(combo), dict(zip(combo, signs, strict=True))) for signs in sign_sets]
    return out


def subset_patterns(names: Sequence[str], n: int, rng: random.Random, *, subset_min: int = 1,
                    subset_max: int | None = None, antithesis_ratio: float = 0.5, first_all_positive: bool = True,
                    shuffle: bool = True) -> list[tuple[list[str], dict[str, bool]]]:
    """N distinct (principles in the order shown, their signs): each a random subset of `names` whose size is drawn
    uniformly from the range, each principle negated with probability `antithesis_ratio` (never in the first
    constitution when `first_all_positive`)."""
    k = len(names)
    if k == 0:
        raise ValueError("a constitution needs at least one principle")
    if n < 2:
        raise ValueError(f"SAMI needs at least 2 constitutions per query, got {n}")
    limit = max_distinct(k, "subset", subset_min=subset_min, subset_max=subset_max,
                         antithesis_ratio=antithesis_ratio, first_all_positive=first_all_positive)
    if n > limit:
        raise ValueError(f"mode 'subset' allows at most {limit} distinct constitutions from {k} principle(s), "
                         f"but {n} were asked for")
    sizes = _subset_sizes(k, subset_min, subset_max)
    out: list[tuple[list[str], dict[str, bool]]] = []
    used: set[str] = set()
    for j in range(n):
        all_positive = first_all_positive and j == 0
        for _ in range(100):
            picked = rng.sample(list(names), rng.choice(sizes))
            signs = {m: all_positive or rng.random() >= antithesis_ratio for m in picked}
            if pattern_id(signs) not in used:
                break
        else:  # the space is nearly used up: draw from what is left
            left = [(o, s) for o, s in _all_subset_patterns(names, sizes, antithesis_ratio, all_positive)
                    if pattern_id(s) not in used]
            picked, signs = rng.choice(left)
        if not shuffle:
            picked = [m for m in names if m in signs]
        used.add(pattern_id(signs))
        out.append((picked, signs))
    return out


def sample_constitutions(principles: Sequence[Principle], n: int, *, seed: int, key: object = "",
                         mode: SamplingMode = "random", first_all_positive: bool = True,
                         shuffle: bool = True, phrasing: Phrasing = "text", subset_min: int = 1,
                         subset_max: int | None = None, antithesis_ratio: float = 0.5,
                         paraphrases: bool = True) -> list[Constitution]:
    """N distinct constitutions for one query; deterministic in (seed, key), where key is usually the query id."""
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        raise ValueError(f"principle names must be unique, got {names}")
    rng = derive_rng(seed, key)
    # a stream of its own, so paraphrases change no other draw
    wording = choose_wording(principles, phrasing, derive_rng(seed, key, "wording")) if paraphrases else None
    if mode == "subset":
        index = {m: i for i, m in enumerate(names)}
        drawn = subset_patterns(names, n, rng, subset_min=subset_min, subset_max=subset_max,
                                antithesis_ratio=antithesis_ratio, first_all_positive=first_all_positive,
                                shuffle=shuffle)
        return [render(principles, signs, [index[m] for m in order], phrasing, wording) for order, signs in drawn]
    patterns = sign_patterns(names, n, mode, rng, first_all_positive)
    out = []
    for signs in patterns:
        order = list(range(len(principles)))
        if shuffle:
            rng.shuffle(order)
        out.append(render(principles, signs, order, phrasing, wording))
    return out


def relevant_principles(principles: Iterable[Principle], category: str | None) -> list[Principle]:
    return [p for p in principles if p.relevant_for(category)]


class ConstitutionPlanError(ConfigError, ValueError):
    """N constitutions cannot be drawn for some queries: a user's setting, found before any query is sampled."""


def plan_problems(principles: Sequence[Principle], categories: Iterable[str | None], options: object,
                  n: int) -> list[str]:
    """Why N distinct constitutions cannot be drawn for the queries of some category (empty when they can).

    `options` is the constitutions config; a category without any relevant principle is no problem (its queries
    are skipped)."""
    problems = []
    by_category = options.filter_by_category
    for cat in sorted(set(categories) if by_category else {None}, key=str):
        ps = relevant_principles(principles, cat) if by_category else list(principles)
        if not ps:
            continue
        limit = max_distinct(len(ps), options.mode, subset_min=options.subset_min, subset_max=options.subset_max,
                             antithesis_ratio=options.antithesis_ratio,
                             first_all_positive=options.first_all_positive)
        if n > limit:
            where = f"category {cat!r}" if cat is not None else "every query"
            problems.append(f"{where}: {len(ps)} relevant principle(s) ({', '.join(p.name for p in ps)}) give at "
                            f"most {limit} distinct constitutions in mode {options.mode!r}, but N = {n}")
    return problems


def check_plan(principles: Sequence[Principle], categories: Iterable[str | None], options: object, n: int) -> None:
    problems = plan_problems(principles, categories, options, n)
    if problems:
        raise ConstitutionPlanError("constitutions: N distinct constitutions per query cannot be drawn for "
                                    + "; ".join(problems) + ". Give these categories more relevant principles "
                                    "(categories / relevant_for), or lower N, or choose another constitutions.mode")


def constitutions_per_query(queries: Iterable, principles: Sequence[Principle], options: object, n: int, *,
                            seed: int, tag: object) -> list[tuple[object, list[Constitution]]]:
    """(query, its N constitutions) for every query that has a relevant principle.

    `options` carries the constitutions config (mode, first_all_positive, shuffle, phrasing, filter_by_category,
    subset_min, subset_max, antithesis_ratio, paraphrases); the constitutions depend only on (seed, tag, query id),
    so the same query gets the same ones on every resume. Every category is checked before any query is drawn.
    """
    queries = list(queries)
    check_plan(principles, (q.category for q in queries), options, n)
    out = []
    for q in queries:
        ps = relevant_principles(principles, q.category) if options.filter_by_category else list(principles)
        if not ps:
            continue
        out.append((q, sample_constitutions(ps, n, seed=seed, key=(tag, q.id), mode=options.mode,
                                            first_all_positive=options.first_all_positive, shuffle=options.shuffle,
                                            phrasing=options.phrasing, subset_min=options.subset_min,
                                            subset_max=options.subset_max,
                                            antithesis_ratio=options.antithesis_ratio,
                                            paraphrases=options.paraphrases)))
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
