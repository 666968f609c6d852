"""The principle writer's logic: an instruct model phrases principles and their antitheses for the task.

`PrincipleWriterCore` works over any engine with `generate(prompts, spec, seeds)` returning, per prompt, a list of
`Generation`s (sami_ray/engines implements it; tests script it); the Ray actor that hosts it is
sami_ray/actors/writer.py.

With seed principles (the usual case) the writer only rephrases each seed for the task and writes its opposite;
the seed's *name* is kept because checkers and reports find a principle by name. A rewrite is accepted when it
parses, passes `validate_principles` and `judge_rewrite` (on the seed's topic, not inverted, an antithesis that
says what only the seed's antithesis says); otherwise another sampling seed is tried, and in the end the seed's own
phrasing is kept (when allowed) or the run stops with what the model said. Refusals are deliberately strict: a
135M writer often writes an "opposite" that is not one, and keeping the configured phrasing costs nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from .constitutions import Principle, PrincipleSet
from .principle_parser import Pair, parse_principles, validate_principles
from .prompts import has_chat_template
from .sampling import SamplingSpec
from .seeds import derive_seed
from .text import STOP_WORDS, content_stems

log = logging.getLogger(__name__)

SEED_PROMPT = """Rewrite this principle for an AI assistant whose task is: {description}
Keep its meaning in one sentence, then write its exact opposite in one sentence.

Original: {text}"""
# One worked example, given as an earlier turn of the chat: small models follow a shown answer far better than a
# described format. A pair that merely copies the example is refused as a duplicate of it.
EXAMPLE = ("Use simple words.", "Explain everything in simple, everyday words.",
           "Explain everything in technical jargon.")

FREE_PROMPT = """Write {k} different principles for an AI assistant whose task is: {description}
Give each principle in one sentence with its exact opposite (its antithesis), as a numbered list of lines \
"Principle: ... | Antithesis: ..."."""
FREE_EXAMPLE = ("Help users plan trips.", [
    ("Suggest a realistic schedule with time to rest.", "Suggest an overpacked schedule with no time to rest."),
    ("Mention the total cost of the plan.", "Never mention what the plan costs."),
])

SEED_PREFILL = "Principle:"  # starting the answer for the model keeps small models on the format
FREE_PREFILL = "1. Principle:"

# Words any principle uses; sharing only these does not keep a rewrite on the seed's topic.
_GENERIC = content_stems("answer answers response responses respond reply write writing user users question "
                         "task principle antithesis opposite always never assistant")
# Small synonym groups (disjoint) so 'short' counts for 'concise' and 'list' for 'bullets'.
_SYNONYMS = [content_stems(g) for g in (
    "concise short brief succinct terse few fewer under",
    "long lengthy detailed verbose elaborate thorough least",
    "bullet bulleted list lists item items",
    "prose paragraph paragraphs plain sentences",
    "lowercase lower capital capitals capitalization uppercase case letters",
    "question questions ask asking",
    "step steps reasoning reason intermediate",
)]


def _expand(stems: set[str]) -> set[str]:
    return stems.union(*(g for g in _SYNONYMS if stems & g))


def topic_stems(name: str, *texts: str) -> set[str]:
    """The name's words, the texts' content stems (less generic words), and the synonym groups they touch."""
    return _expand(content_stems(name.replace("_", " ")) | (set().union(*map(content_stems, texts)) - _GENERIC))


def _match(w: str, t: str) -> bool:
    return w == t or (min(len(w), len(t)) >= 4 and (w.startswith(t) or t.startswith(w)))


def on_topic(text: str, topic: set[str]) -> bool:
    """Shares a stem with the topic, or a long prefix ('bullet' / 'bulletpoint')."""
    return any(_match(w, t) for w in content_stems(text) for t in topic)


def overlap(text: str, stems: set[str]) -> int:
    """How many of the text's content stems match one of `stems`: which of two phrasings a text leans to."""
    return sum(any(_match(w, t) for t in stems) for w in content_stems(text))


def judge_rewrite(seed: Principle, principle: str, antithesis: str) -> str | None:
    """Why a rewrite of `seed` is refused, or None. Refusing is cheap (the seed's own phrasing stays), accepting a
    wrong one is not: a principle checked by name would be measured against the wrong text."""
    if not (on_topic(principle, topic_stems(seed.name, seed.text))
            and on_topic(antithesis, topic_stems(seed.name, seed.text, seed.antithesis))):
        return f"off topic (shares no word with {seed.text!r} / {seed.antithesis!r})"
    # Words only one side of the seed uses ('lowercase' vs 'standard'): leaning clearly to the other side is inverted.
    pro = content_stems(seed.name.replace("_", " ")) | (content_stems(seed.text) - _GENERIC)
    anti = content_stems(seed.antithesis) - _GENERIC
    pro, anti = ({w for w in pro if not any(_match(w, t) for t in anti)},
                 {w for w in anti if not any(_match(w, t) for t in pro)})
    if (overlap(principle, anti) >= overlap(principle, pro) + 2
            or overlap(antithesis, pro) >= overlap(antithesis, anti) + 2):
        return "inverted (the principle reads like the seed's antithesis, or the antithesis like the seed)"
    # The antithesis must say something only the seed's antithesis says ('paragraphs', 'long'), not just restate
    # the principle with a twist ('a bulleted list without special formatting').
    anti = _expand(anti)
    if anti and not on_topic(antithesis, anti):
        return f"the antithesis does not state the opposite (it uses none of: {', '.join(sorted(anti))})"
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
    """The writer's logic over an engine with `generate(prompts, spec, seeds)` and the model's tokenizer."""

    def __init__(self, engine: Any, tokenizer: Any = None, *, temperature: float = 0.7, top_p: float = 0.95,
                 max_tokens: int = 120) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens

    def render(self, turns: Sequence[str], prefill: str) -> str:
        """User and assistant turns alternating (the last one the user's), then the start of the answer."""
        if self.tokenizer is not None and has_chat_template(self.tokenizer):
            messages = [{"role": "assistant" if i % 2 else "user", "content": t} for i, t in enumerate(turns)]
            head = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            head = "".join(t + "\n\n" for t in turns)
        return head + prefill

    def _generate(self, prompts: list[str], max_tokens: int, seeds: list[int]) -> list[str]:
        spec = SamplingSpec(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=max_tokens,
                            stop=[], seed=seeds[0])
        return [gens[0].text for gens in self.engine.generate(prompts, spec, seeds=seeds)]

    def write(self, description: str, seeds: Sequence[Principle], k: int, *, fallback_to_seeds: bool = False,
              retries: int = 3, seed: int = 0) -> PrincipleSet:
        """k principles for the task: the seeds rephrased (names kept), plus freely written ones beyond them.

        Each piece gets 1 + `retries` attempts with different sampling seeds.
        """
        seeds = list(seeds)[:k]
        notes: list[str] = []
        principles, fell_back = self._rewrite_seeds(description, seeds, retries, seed, fallback_to_seeds, notes)
        if k > len(principles):
            principles += self._write_free(description, k - len(principles), retries, seed, principles)
        source = "writer-fallback" if fell_back else "writer"
        return PrincipleSet(principles, source, notes)

    # ------------------------------------------------------------ seeds: rephrase each one

    def _rewrite_seeds(self, description: str, seeds: list[Principle], retries: int, seed: int,
                       fallback: bool, notes: list[str]) -> tuple[list[Principle], bool]:
        done: dict[int, Principle] = {}
        said: dict[int, list[str]] = {i: [] for i in range(len(seeds))}  # per seed: 'attempt n: why; output'
        for attempt in range(1 + max(0, retries)):
            todo = [i for i in range(len(seeds)) if i not in done]
            if not todo:
                break
            prompts = [self.render([SEED_PROMPT.format(description=description, text=EXAMPLE[0]),
                                    f"Principle: {EXAMPLE[1]}\nAntithesis: {EXAMPLE[2]}",
                                    SEED_PROMPT.format(description=description, text=seeds[i].text)], SEED_PREFILL)
                       for i in todo]
            outs = self._generate(prompts, self.max_tokens,
                                  [derive_seed(seed, "writer", "rewrite", attempt, i) for i in todo])
            for i, out in zip(todo, outs, strict=True):
                pair, why = self._accept(seeds[i], SEED_PREFILL + out)
                if pair:
                    s = seeds[i]
                    done[i] = Principle(s.name, pair[0], pair[1], s.weak, s.strong, s.categories)
                else:
                    said[i].append(f"attempt {attempt + 1}: {why}; the model said {_quote(out)}")
            log.info("principle writer: attempt %d, %d of %d seed principles rephrased", attempt + 1, len(done),
                     len(seeds))
        failed = [i for i in range(len(seeds)) if i not in done]
        if failed and not fallback:
            lines = [f"principle writer: no usable rephrasing of principle {seeds[i].name!r} "
                     f"({seeds[i].text!r}) after {1 + max(0, retries)} attempt(s):\n  " + "\n  ".join(said[i])
                     for i in failed]
            raise WriterError("\n".join(lines) + "\nUse a stronger writer model (models.writer), or keep the "
                              "configured phrasing with constitutions.write_with_writer=false.")
        for i in failed:
            notes.append(f"{seeds[i].name}: kept the configured phrasing; the writer's last try was refused "
                         f"({said[i][-1]})")
        return [done.get(i, s) for i, s in enumerate(seeds)], bool(failed)

    def _accept(self, s: Principle, text: str) -> tuple[Pair | None, str]:
        """The first parsed pair that is valid and passes `judge_rewrite`, else why none was."""
        pairs = parse_principles(text)
        if not pairs:
            return None, "no 'Principle: ... Antithesis: ...' pair found"
        kept, problems = validate_principles(pairs, existing=[EXAMPLE[0], EXAMPLE[1]])
        why = "; ".join(problems)
        for p, a in kept:
            why = judge_rewrite(s, p, a) or ""
            if not why:
                return (p, a), ""
        return None, why

    # ------------------------------------------------------------ no seeds: write k principles

    def _write_free(self, description: str, k: int, retries: int, seed: int,
                    existing: Sequence[Principle]) -> list[Principle]:
        got: list[Pair] = []
        said: list[str] = []
        taken = {p.text for p in existing}
        for attempt in range(1 + max(0, retries)):
            prompt = self.render([FREE_PROMPT.format(description=FREE_EXAMPLE[0], k=len(FREE_EXAMPLE[1])),
                                  "\n".join(f"{i}. Principle: {p} | Antithesis: {a}"
                                            for i, (p, a) in enumerate(FREE_EXAMPLE[1], 1)),
                                  FREE_PROMPT.format(description=description, k=k)], FREE_PREFILL)
            out = self._generate([prompt], min(1024, 60 + 90 * k), [derive_seed(seed, "writer", "free", attempt)])[0]
            pairs = parse_principles(FREE_PREFILL + out)
            kept, problems = validate_principles(
                pairs, existing=taken | {p for p, _ in got} | {p for p, _ in FREE_EXAMPLE[1]})
            got += kept
            log.info("principle writer: attempt %d, %d of %d principles written", attempt + 1, len(got), k)
            if len(got) >= k:
                break
            why = "; ".join(problems) if pairs else "no 'Principle: ... | Antithesis: ...' pair found"
            said.append(f"attempt {attempt + 1}: {len(kept)} usable" + (f" ({why})" if why else "")
                        + f"; the model said {_quote(out, 400)}")
        if len(got) < k:
            raise WriterError(f"principle writer: wrote {len(got)} of {k} usable principle(s) after "
                              f"{1 + max(0, retries)} attempt(s):\n  " + "\n  ".join(said)
                              + "\nUse a stronger writer model (models.writer), or give the principles in the "
                              "config (constitutions.principles, constitutions.file or constitutions.builtin).")
        names = {p.name for p in existing}
        return [Principle(slug(p, names), p, a) for p, a in got[:k]]
