"""The principle writer's logic: an instruct model phrases principles and their antitheses for the task.

`PrincipleWriterCore` works over any engine with `generate(prompts, spec, seeds)` returning, per prompt, a list of
`Generation`s (sami_ray/engines implements it; tests script it); the Ray actor that hosts it is
sami_ray/actors/writer.py.

With seed principles (the usual case) the writer rewords each seed for the task: the principle and its antithesis
each as a one-sentence rewording of the configured phrasing (a 135M model paraphrases one sentence well, but mixes
up the two sides when asked for both at once). The seed's *name* is kept because checkers and reports find a
principle by name. For every side, `candidates` rewordings are sampled in one batched call and the first that
passes `judge_side` is kept (the next ones, up to `paraphrases`, become `Principle.paraphrases`); a side with none
keeps its configured phrasing, and a principle with neither side reworded is kept as configured (when allowed) or
stops the run with what the model said. Refusals are deliberately strict: a small writer often writes a sentence
that drops the number, flips the meaning with a 'no', or copies an example, and keeping the configured phrasing
costs nothing.

Without seeds the writer writes k principles with their antitheses from the task description alone, then (with
`paraphrases`) rewords each of them as above.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from .constitutions import Principle, PrincipleSet
from .principle_parser import Pair, normalise, parse_principles, parse_rewrite, validate_principles
from .prompts import has_chat_template
from .sampling import Generation, SamplingSpec
from .seeds import derive_seed
from .text import STOP_WORDS, content_stems, stem, words

log = logging.getLogger(__name__)

REWORD_PROMPT = """Say this instruction in other words, for an AI assistant whose task is: {description}
Keep its exact meaning, and keep any numbers.

Instruction: {text}"""
REWORD_PREFILL = "Rewritten:"  # starting the answer for the model keeps small models on the format
# Worked examples, given as earlier turns of the chat: small models follow shown answers far better than a described
# format. They show a negation and a number bound kept, on topics far from the library's principles; a rewording
# that copies one is refused.
REWORD_EXAMPLES = (
    ("Be polite.", "Speak to the user kindly and with respect."),
    ("Give at least 10 examples.", "List 10 or more examples."),
    ("Never mention any sources.", "Do not say where your information comes from."),
    ("Keep each title under 8 words.", "Keep every title shorter than 8 words."),
    ("Give at most 3 examples.", "Give 3 examples or fewer."),
)

FREE_PROMPT = """Write {k} different principles for an AI assistant whose task is: {description}
Give each principle in one sentence with its exact opposite (its antithesis), as a numbered list of lines \
"Principle: ... | Antithesis: ..."."""
FREE_EXAMPLE = ("Help users plan trips.", [
    ("Suggest a realistic schedule with time to rest.", "Suggest an overpacked schedule with no time to rest."),
    ("Mention the total cost of the plan.", "Never mention what the plan costs."),
])
FREE_PREFILL = "1. Principle:"

# ------------------------------------------------------------------ what a sentence says

# Words any principle uses; sharing only these does not keep a rewrite on the seed's topic.
_GENERIC = content_stems("answer answers response responses respond reply write writing user users question "
                         "task principle antithesis opposite always never assistant")
# Small synonym groups (disjoint) so 'short' counts for 'concise' and 'list' for 'bullets'.
_SYNONYMS = [content_stems(g) for g in (
    "concise short shorter brief succinct terse few fewer less",
    "long longer lengthy detailed verbose elaborate thorough least",
    "bullet bulleted list lists item items",
    "prose paragraph paragraphs plain sentences",
    "lowercase lower",
    "capital capitals capitalize capitalization uppercase upper",
    "question questions ask asking",
    "step steps reasoning reason intermediate",
)]
# Words that carry no topic in an instruction: a rewording may add them freely.
_NEUTRAL = content_stems("provide give keep present describe express format text content information include "
                         "say state tell anything something everything manner sentence sentences words word")
# Pairs of groups that are each other's opposite: 'Be concise' / 'Be verbose' share no word but are opposites.
_OPPOSITE_GROUPS = [(0, 1), (2, 3), (4, 5)]

# A negation covers the words after it up to a clause break: 'with no lists or bullet points' negates both.
_NEGATIONS = frozenset("no not never without avoid don't dont doesn't nor none neither cannot can't instead "
                       "nothing".split())
_SCOPE_END = frozenset([*".,;:!?", "but", "and", "then", "so"])
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?|[.,;:!?]")
# Number bounds: 'under 40', 'at most 40', '40 or fewer' cap; 'at least 80', 'more than 80', '80 or more' floor.
_CAP_BEFORE = ("under", "below", "within", "max", "maximum", "less than", "fewer than", "at most", "up to",
               "shorter than")
_FLOOR_BEFORE = ("over", "above", "exceed", "exceeding", "min", "minimum", "more than", "at least",
                 "longer than")
_CAP_AFTER = ("or less", "or fewer", "at most", "max", "maximum")
_FLOOR_AFTER = ("or more", "at least", "plus", "minimum")
_QUOTED = re.compile(r"(?<![A-Za-z])['\"“‘]([^'\"”’]{1,60})['\"”’](?![A-Za-z])")

Stance = tuple[str, bool]  # (stem, asserted): 'no lists' gives ('list', False)


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def stances(text: str) -> list[Stance]:
    """The text's content stems (less generic words), each asserted or negated ('no lists' -> ('list', False))."""
    out: list[Stance] = []
    negated = False
    for t in _tokens(text):
        if t in _SCOPE_END:
            negated = False
        elif t in _NEGATIONS or t.endswith("n't"):
            negated = True
        elif len(t) >= 3 and not t.isdigit() and t not in STOP_WORDS and stem(t) not in _GENERIC:
            out.append((stem(t), not negated))
    return out


def bounds(text: str) -> set[tuple[str, str | None]]:
    """Each number with its bound: 'max' ('under 40', 'no more than 40'), 'min' ('at least 80') or None."""
    toks = _tokens(text)
    out: set[tuple[str, str | None]] = set()
    for i, t in enumerate(toks):
        if not t.isdigit():
            continue
        before, after = f" {' '.join(toks[max(0, i - 3): i])} ", f" {' '.join(toks[i + 1: i + 4])} "
        kind = next((k for phrases, k, near in ((_CAP_BEFORE, "max", before), (_FLOOR_BEFORE, "min", before),
                                                 (_CAP_AFTER, "max", after), (_FLOOR_AFTER, "min", after))
                     if any(f" {p} " in near for p in phrases)), None)
        clause: list[str] = []  # the words of this clause before the number: a negation there flips the bound
        for w in toks[:i]:
            clause = [] if w in _SCOPE_END else clause + [w]
        if kind and any(w in _NEGATIONS or w.endswith("n't") for w in clause):
            kind = {"max": "min", "min": "max"}[kind]  # 'no more than 40' caps, 'never fewer than 80' floors
        out.add((t, kind))
    return out


def quoted(text: str) -> set[str]:
    """The quoted strings of a text ('- ', 'Hope this helps!'), stripped; an apostrophe in a word is no quote."""
    return {q.strip() or " " for q in _QUOTED.findall(text)}  # "' '" stays a quoted space


def _group(s: str) -> int | None:
    return next((i for i, g in enumerate(_SYNONYMS) if s in g), None)


def _match(w: str, t: str) -> bool:
    return w == t or (min(len(w), len(t)) >= 4 and (w.startswith(t) or t.startswith(w)))


def _alike(w: str, t: str) -> bool:
    """The same stem, a long shared prefix ('bullet' / 'bulletpoint'), or the same synonym group."""
    g = _group(w)
    return _match(w, t) or (g is not None and g == _group(t))


def sides(seed: Principle) -> tuple[set[Stance], set[Stance]]:
    """What asserting the principle says and what asserting its antithesis says, as stances: the principle's own
    (and its name's), plus the antithesis's negated ('no lists' in the antithesis speaks for lists); a stance
    found on both sides says nothing about which one a sentence leans to."""
    flip = {(s, not a) for t in seed.phrasings(False) for s, a in stances(t)}
    own = {x for t in (seed.name.replace("_", " "), *seed.phrasings(True)) for x in stances(t)}
    pro = own | flip
    anti = {(s, not a) for s, a in own} | {(s, not a) for s, a in flip}
    return pro - anti, anti - pro


def _hits(text_stances: list[Stance], side: set[Stance]) -> int:
    return sum(any(a == b and _alike(s, t) for t, b in side) for s, a in text_stances)


def judge_side(seed: Principle, positive: bool, text: str, examples: Sequence[str] = ()) -> str | None:
    """Why `text` is refused as a rewording of the seed's principle (`positive`) or of its antithesis, or None.

    Refused: empty or overlong; a copy of the configured wording, of the other side, or of a worked example; a
    number of the configured wording dropped or its bound changed ('under 40' -> '40', 'more than 40'); a quoted
    string changed, or an exact phrase dropped; a sentence that leans to the other side (negations counted:
    'with no lists' speaks for prose), or to neither (off topic)."""
    own, other = seed.phrasings(positive), seed.phrasings(not positive)
    key, what = normalise(text), ("principle" if positive else "antithesis")
    if not re.search(r"[A-Za-z]", text):
        return "empty"
    if len(text) > 300:
        return "longer than 300 characters"
    if key in {normalise(t) for t in own}:
        return f"copies the configured {what}"
    if key in {normalise(t) for t in other}:
        return f"inverted (it is the configured {'antithesis' if positive else 'principle'})"
    if key in {normalise(t) for t in examples}:
        return "copies a worked example"
    kept = bounds(text)
    lost = sorted(f"{n}" + (f" ({b})" if b else "") for n, b in bounds(own[0]) - kept)
    if lost:
        return f"drops or changes the number bound(s) {', '.join(lost)} of {own[0]!r}"
    allowed = set().union(*map(quoted, own))
    if quoted(text) - allowed:
        return f"quotes {sorted(quoted(text) - allowed)} where {own[0]!r} quotes {sorted(allowed) or 'nothing'}"
    phrases = {q for q in quoted(own[0]) if re.search(r"[A-Za-z]{3}", q)} - quoted(text)
    if phrases:
        return f"drops the exact phrase(s) {sorted(phrases)}"
    pro, anti = sides(seed)
    mine, theirs = (pro, anti) if positive else (anti, pro)
    st = stances(text)
    # New content changes the meaning: another principle's topic ('concise' in a list principle) or words the seed
    # does not say ('with an underscore at the end'); one new word is let pass ('a bulleted list with spaces').
    known = {s for t in (seed.name.replace("_", " "), *own, *other) for s, _ in stances(t)}
    touched = {_group(s) for s in known} - {None}
    alien = sorted({s for s, _ in st if _group(s) is not None and _group(s) not in touched})
    if alien:
        return f"adds another topic ({', '.join(alien)})"
    novel = sorted({s for s, _ in st if s not in _NEUTRAL and not any(_alike(s, t) for t in known)})
    if len(novel) > 1:
        return f"adds what {own[0]!r} does not say ({', '.join(novel)})"
    yes = _hits(st, mine) + len(bounds(own[0]) & kept)
    no = _hits(st, theirs)
    if not yes and not no:
        return f"off topic (nothing of {own[0]!r})"
    if yes <= no:
        return f"inverted (reads like the {'antithesis' if positive else 'principle'}: {no} against {yes})"
    if no:  # 'plain prose paragraphs or bullet points': a sentence that also asks for the other side
        return f"asks for both sides ({no} word(s) of the {'antithesis' if positive else 'principle'})"
    return None


def judge_pair(principle: str, antithesis: str) -> str | None:
    """Why a freely written (principle, antithesis) is refused, or None: each side an instruction (two words or more),
    the antithesis about the same thing and stating its opposite: it flips a word ('mention' / 'never mention'),
    swaps one ('formal language' / 'casual language'), or uses an opposite synonym group ('concise' / 'verbose').
    With no seed to compare with, these checks see the form, not the sense: a weak writer's free principles can
    pass them and still say little (see the run's principles before training on them)."""
    if min(len(words(t)) for t in (principle, antithesis)) < 2:  # 'Realism.', 'Kudos!'
        return "not an instruction (a single word)"
    p, a = stances(principle), stances(antithesis)
    ps, as_ = {s for s, _ in p}, {s for s, _ in a}
    groups = ({_group(s) for s in ps} - {None}, {_group(s) for s in as_} - {None})
    if any((x in groups[0] and y in groups[1]) or (y in groups[0] and x in groups[1]) for x, y in _OPPOSITE_GROUPS):
        return None
    if not any(_match(s, t) for s in ps for t in as_):
        return "the antithesis is about something else (no word in common, no opposite word)"
    flipped = any(_match(s, t) and x != y for s, x in p for t, y in a)
    swapped = any(not any(_match(s, t) for t in as_) for s in ps) and any(
        not any(_match(t, s) for s in ps) for t in as_)
    if not (flipped or swapped):
        return "the antithesis does not state the opposite (it negates nothing and replaces nothing)"
    return None


def slug(text: str, taken: set[str]) -> str:
    """A short unique name from a principle's first content words ('polite_user', 'polite_user_2')."""
    found = re.findall(r"[a-z0-9]+", text.lower())
    base = "_".join(([w for w in found if w not in STOP_WORDS] or found)[:3]) or "principle"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _quote(text: str, n: int = 240) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")


class WriterError(UserError):
    """The writer model gave no usable principles; the message quotes what it said."""


class PrincipleWriterCore:
    """The writer's logic over an engine with `generate(prompts, spec, seeds)` and the model's tokenizer.

    `candidates`: rewordings sampled per side and round, all in one generate call; `retries`: further rounds for
    what is still missing; `paraphrases`: accepted rewordings kept beyond the first, as `Principle.paraphrases`
    and `antithesis_paraphrases`."""

    def __init__(self, engine: Any, tokenizer: Any = None, *, temperature: float = 1.0, top_p: float = 0.95,
                 max_tokens: int = 64, candidates: int = 8, retries: int = 1, paraphrases: int = 0) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.candidates, self.retries, self.paraphrases = max(1, candidates), max(0, retries), max(0, paraphrases)

    def render(self, turns: Sequence[str], prefill: str) -> str:
        """User and assistant turns alternating (the last one the user's), then the start of the answer."""
        if self.tokenizer is not None and has_chat_template(self.tokenizer):
            messages = [{"role": "assistant" if i % 2 else "user", "content": t} for i, t in enumerate(turns)]
            head = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            head = "".join(t + "\n\n" for t in turns)
        return head + prefill

    def _generate(self, prompts: list[str], max_tokens: int, seeds: list[int], stop: list[str]) -> list[Generation]:
        spec = SamplingSpec(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=max_tokens,
                            stop=stop, seed=seeds[0])
        return [gens[0] for gens in self.engine.generate(prompts, spec, seeds=seeds)]

    def write(self, description: str, seeds: Sequence[Principle], k: int, *, fallback_to_seeds: bool = False,
              retries: int | None = None, seed: int = 0) -> PrincipleSet:
        """k principles for the task: the seeds reworded (names kept), plus freely written ones beyond them."""
        retries = self.retries if retries is None else max(0, retries)
        seeds = list(seeds)[:k]
        notes: list[str] = []
        principles, fell_back = self._rewrite_seeds(description, seeds, retries, seed, fallback_to_seeds, notes)
        if k > len(principles):
            free = self._write_free(description, k - len(principles), retries, seed, principles)
            principles += self._paraphrase(description, free, retries, seed, notes)
        source = "writer-fallback" if fell_back else "writer"
        return PrincipleSet(principles, source, notes)

    # ------------------------------------------------------------ rewording, side by side

    def _reword_prompt(self, description: str, text: str) -> str:
        turns: list[str] = []
        for original, reworded in REWORD_EXAMPLES:
            turns += [REWORD_PROMPT.format(description=description, text=original), f"{REWORD_PREFILL} {reworded}"]
        return self.render([*turns, REWORD_PROMPT.format(description=description, text=text)], REWORD_PREFILL)

    def _reword(self, description: str, principles: list[Principle], want: int, retries: int, seed: int
                ) -> tuple[dict[tuple[int, bool], list[str]], dict[tuple[int, bool], list[str]]]:
        """Per (principle, side): up to `want` accepted rewordings, in candidate order, and the refusals."""
        keys = [(i, positive) for i in range(len(principles)) for positive in (True, False)]
        found: dict[tuple[int, bool], list[str]] = {key: [] for key in keys}
        said: dict[tuple[int, bool], list[str]] = {key: [] for key in keys}
        examples = [t for pair in REWORD_EXAMPLES for t in pair]
        for attempt in range(1 + retries):
            todo = [key for key in keys if len(found[key]) < want]
            if not todo:
                break
            # Every missing side's candidates in one batch: the shared few-shot prefix is computed once.
            asked = [key for key in todo for _ in range(self.candidates)]
            prompts = [self._reword_prompt(description, principles[i].phrase(positive)) for i, positive in asked]
            seeds = [derive_seed(seed, "writer", "reword", attempt, i, positive, c)
                     for (i, positive) in todo for c in range(self.candidates)]
            # A call lasts as many steps as its longest candidate, and a faithful rewording is about as long as
            # its original (about 4 characters a token): half as long again plus a little is enough.
            limit = min(self.max_tokens, 8 + max(len(principles[i].phrase(positive)) for i, positive in todo) // 3)
            for (i, positive), gen in zip(asked, self._generate(prompts, limit, seeds, ["\n"]), strict=True):
                got = found[(i, positive)]
                if len(got) >= want:
                    continue
                text = parse_rewrite(gen.text)
                why = ("cut off at max_tokens" if gen.truncated else
                       "repeats an accepted candidate" if normalise(text) in {normalise(t) for t in got} else
                       judge_side(principles[i], positive, text, examples))
                if why:
                    said[(i, positive)].append(f"attempt {attempt + 1}: {why}: {_quote(text, 120)}")
                else:
                    got.append(text)
            log.info("principle writer: round %d, %d of %d phrasings reworded", attempt + 1,
                     sum(len(v) >= want for v in found.values()), len(keys))
        return found, said

    def _rewrite_seeds(self, description: str, seeds: list[Principle], retries: int, seed: int,
                       fallback: bool, notes: list[str]) -> tuple[list[Principle], bool]:
        if not seeds:
            return [], False
        found, said = self._reword(description, seeds, 1 + self.paraphrases, retries, seed)
        out: list[Principle] = []
        failed: list[int] = []
        for i, s in enumerate(seeds):
            pro, anti = found[(i, True)], found[(i, False)]
            if not pro and not anti:
                failed.append(i)
                out.append(s)
                continue
            # A side with no accepted rewording keeps its configured phrasing (and that phrasing's paraphrases).
            out.append(dataclasses.replace(
                s, text=pro[0] if pro else s.text, antithesis=anti[0] if anti else s.antithesis,
                paraphrases=tuple(pro[1:]) if pro else s.paraphrases,
                antithesis_paraphrases=tuple(anti[1:]) if anti else s.antithesis_paraphrases))
            for positive, got in ((True, pro), (False, anti)):
                if not got:
                    notes.append(f"{s.name}: kept the configured {'principle' if positive else 'antithesis'}; "
                                 f"the writer's rewordings were refused ({_last(said[(i, positive)])})")
                elif len(got) < 1 + self.paraphrases:
                    notes.append(f"{s.name}: {len(got) - 1} of {self.paraphrases} paraphrase(s) of the "
                                 f"{'principle' if positive else 'antithesis'}")
        if failed and not fallback:
            lines = [f"principle writer: no usable rewording of principle {seeds[i].name!r} ({seeds[i].text!r} / "
                     f"{seeds[i].antithesis!r}) after {1 + retries} round(s) of {self.candidates} candidate(s):\n  "
                     + "\n  ".join(said[(i, True)][-4:] + said[(i, False)][-4:]) for i in failed]
            raise WriterError("\n".join(lines) + "\nUse a stronger writer model (models.writer), or keep the "
                              "configured phrasing with constitutions.write_with_writer=false.")
        for i in failed:
            notes.append(f"{seeds[i].name}: kept the configured phrasing; every rewording was refused "
                         f"(principle: {_last(said[(i, True)])}; antithesis: {_last(said[(i, False)])})")
        return out, bool(failed)

    def _paraphrase(self, description: str, principles: list[Principle], retries: int, seed: int,
                    notes: list[str]) -> list[Principle]:
        """The principles with up to `paraphrases` rewordings of each side (fewer, with a note, where refused)."""
        if not self.paraphrases or not principles:
            return principles
        found, _said = self._reword(description, principles, self.paraphrases, retries, derive_seed(seed, "para"))
        out = []
        for i, p in enumerate(principles):
            out.append(dataclasses.replace(p, paraphrases=tuple(found[(i, True)]),
                                           antithesis_paraphrases=tuple(found[(i, False)])))
            got = min(len(found[(i, True)]), len(found[(i, False)]))
            if got < self.paraphrases:
                notes.append(f"{p.name}: {len(found[(i, True)])} principle and {len(found[(i, False)])} antithesis "
                             f"paraphrase(s) of {self.paraphrases}")
        return out

    # ------------------------------------------------------------ no seeds: write k principles

    def _write_free(self, description: str, k: int, retries: int, seed: int,
                    existing: Sequence[Principle]) -> list[Principle]:
        got: list[Pair] = []
        said: list[str] = []
        taken = {p.text for p in existing} | {p for p, _ in FREE_EXAMPLE[1]}
        prompt = self.render([FREE_PROMPT.format(description=FREE_EXAMPLE[0], k=len(FREE_EXAMPLE[1])),
                              "\n".join(f"{i}. Principle: {p} | Antithesis: {a}"
                                        for i, (p, a) in enumerate(FREE_EXAMPLE[1], 1)),
                              FREE_PROMPT.format(description=description, k=k)], FREE_PREFILL)
        for attempt in range(1 + retries):
            # Several lists in one batch; pairs are taken from them in order until k are usable.
            seeds = [derive_seed(seed, "writer", "free", attempt, c) for c in range(self.candidates)]
            for c, gen in enumerate(self._generate([prompt] * self.candidates, min(1024, 40 + 50 * k), seeds,
                                                   ["\n\n"])):
                pairs = parse_principles(FREE_PREFILL + gen.text)
                kept, problems = validate_principles(pairs, existing=taken | {p for p, _ in got})
                for p, a in kept:
                    why = judge_pair(p, a)
                    if why:
                        problems.append(f"({p!r} / {a!r}): {why}")
                    elif len(got) < k and normalise(p) not in {normalise(q) for q, _ in got}:
                        got.append((p, a))
                if problems or not pairs:
                    said.append(f"attempt {attempt + 1}.{c + 1}: "
                                + ("; ".join(problems) if pairs else "no 'Principle: ... | Antithesis: ...' pair")
                                + f"; the model said {_quote(gen.text, 300)}")
            log.info("principle writer: round %d, %d of %d principles written", attempt + 1, len(got), k)
            if len(got) >= k:
                break
        if len(got) < k:
            raise WriterError(f"principle writer: wrote {len(got)} of {k} usable principle(s) after "
                              f"{1 + retries} round(s) of {self.candidates} candidate(s):\n  "
                              + "\n  ".join(said[-6:])
                              + "\nUse a stronger writer model (models.writer), or give the principles in the "
                              "config (constitutions.principles, constitutions.file or constitutions.builtin).")
        names = {p.name for p in existing}
        return [Principle(slug(p, names), p, a) for p, a in got[:k]]


def _last(said: list[str]) -> str:
    return said[-1] if said else "no candidate"
