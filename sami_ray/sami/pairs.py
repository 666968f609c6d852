"""Training rows for the baselines: a prompt with one response (SFT) or a chosen and a rejected one (DPO).

Where the rows come from:
- a user's preference file: `prompt`, `chosen`, `rejected` (TRL's standard layout), or HH-RLHF's `chosen` and
  `rejected` whole transcripts, whose shared beginning is the prompt;
- a user's demonstrations file: `prompt`, `completion` (TRL's prompt-completion layout);
- a run's own SAMI samples: constitution-contrast pairs (the answer under the all-positive constitution against
  each answer under a constitution with antitheses, same query) and context distillation (the all-positive
  answer after a prompt rendered without any constitution).

The JSON-lines layout the samples stage writes and the trainer reads is the users' own: one object per line with
`id`, `prompt` and either `chosen` + `rejected` or `completion`. So a user's file, once checked, and the derived
rows travel the same way, and the worker parses each line with `TextPair.from_dict`.

Bad rows (a missing field, an empty response, identical chosen and rejected, a prompt over the token limit) raise
one DataError naming the file and line, or, with `skip_bad`, are counted and left out. A reader returns everything
or raises: nothing is trained on half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError
from .data import SamiExample, write_jsonl
from .datasets.rows import Row, read_rows
from .prompts import get_template
from .tokens import encode_prompt, encode_response, truncate_prompt

PairKind = Literal["preference", "demonstration"]
PlainRenderer = Callable[[str], str]  # query text -> a prompt with no constitution in it

# HH-RLHF's turn marker: the prompt of a transcript pair ends with the last Assistant label they share.
_ASSISTANT = "\n\nAssistant:"
_KEEP_PROBLEMS = 20  # skipped rows named in a PairSet (the count covers all of them)
_NEEDS = {"preference": "'prompt', 'chosen' and 'rejected' (or HH-RLHF's 'chosen' and 'rejected' transcripts)",
          "demonstration": "'prompt' and 'completion'"}


@dataclass(frozen=True)
class TextPair:
    """A prompt and the response to learn (SFT: `chosen` is the completion), or to prefer over `rejected` (DPO)."""

    id: str
    prompt: str
    chosen: str
    rejected: str | None = None

    @property
    def kind(self) -> PairKind:
        return "demonstration" if self.rejected is None else "preference"

    def to_dict(self) -> dict:
        if self.rejected is None:
            return {"id": self.id, "prompt": self.prompt, "completion": self.chosen}
        return {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, d: dict, where: str = "pair row") -> TextPair:
        """A row of the layout above (`completion` or `chosen` + `rejected`); DataError naming `where` if not."""
        kind: PairKind = "demonstration" if "completion" in d else "preference"
        return _parse(d, kind, where, index=0)


@dataclass
class PairSet:
    """The rows read or derived, and how many were left out (with the first few reasons, for the log)."""

    pairs: list[TextPair]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def _skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < _KEEP_PROBLEMS:
            self.problems.append(why)


class _BadRow(ValueError):
    """A row that cannot be used; caught per row so `skip_bad` can count it."""


# ---------------------------------------------------------------- one row

def _text(d: dict, name: str, kind: PairKind) -> str:
    if name not in d or d[name] is None:
        raise _BadRow(f"missing field {name!r} (a {kind} row needs {_NEEDS[kind]})")
    value = d[name]
    if not isinstance(value, str):
        # TRL's conversational layout (lists of messages) would need the policy's chat template here.
        raise _BadRow(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of two transcripts that differ only at their end.

    The prompt ends with the last "\\n\\nAssistant:" both share (HH-RLHF), else at the last whitespace they share,
    so no word is cut in two; each reply keeps its leading space, so prompt + reply is the transcript again."""
    common = os.path.commonprefix([chosen, rejected])
    n = len(common)
    marker = common.rfind(_ASSISTANT)
    if marker >= 0:
        cut = marker + len(_ASSISTANT)
    else:
        cut = max(common.rfind(" "), common.rfind("\n"))
        cut = cut if cut > 0 else n
    if not common[:cut].strip():
        raise _BadRow("missing field 'prompt', and chosen and rejected share no beginning to take it from")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _nonempty(**responses: str | None) -> None:
    for name, value in responses.items():
        if value is not None and not value.strip():
            raise _BadRow(f"{name} is empty")


def _parse(d: dict, kind: PairKind, where: str, index: int) -> TextPair:
    try:
        if kind == "demonstration":
            prompt, chosen, rejected = _text(d, "prompt", kind), _text(d, "completion", kind), None
            _nonempty(completion=chosen)
        else:
            chosen, rejected = _text(d, "chosen", kind), _text(d, "rejected", kind)
            _nonempty(chosen=chosen, rejected=rejected)
            if chosen.strip() == rejected.strip():
                raise _BadRow("chosen and rejected are identical")
            if d.get("prompt") is not None:
                prompt = _text(d, "prompt", kind)
            else:
                prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
                _nonempty(chosen=chosen, rejected=rejected)  # one transcript may end where the other goes on
        if not prompt.strip():
            raise _BadRow("the prompt is empty")
    except _BadRow as e:
        raise DataError(f"{where}: {e}") from None
    return TextPair(str(d.get("id", index)), prompt, chosen, rejected)


# ---------------------------------------------------------------- users' files

def read_pair_file(path: str | Path, kind: PairKind, *, tokenizer: Any = None, max_prompt_tokens: int | None = None,
                   skip_bad: bool = False, split: str | None = None) -> PairSet:
    """Every row of a preference or demonstrations file (JSON lines, gzipped JSON lines, a JSON list, Parquet or a
    saved dataset folder), checked; with `tokenizer` and `max_prompt_tokens`, prompts over the limit (tokenised by
    the project's rule) are bad rows too. Malformed JSON ends the read whatever `skip_bad` says: that is a
    damaged file, not a bad row."""
    if max_prompt_tokens and tokenizer is None:
        raise ValueError("checking prompts against max_prompt_tokens needs the tokenizer")
    out = PairSet([])
    for row in read_rows(path, split):
        try:
            pair = _parse(row.data, kind, row.where, row.index)
            _check_prompt_length(pair, row, tokenizer, max_prompt_tokens)
        except DataError as e:
            if not skip_bad:
                raise
            out._skip(str(e))
            continue
        out.pairs.append(pair)
    if not out.pairs:
        why = f"; {out.skipped} bad row(s) skipped, the first: {out.problems[0]}" if out.skipped else ""
        raise DataError(f"{path}: no usable {kind} rows{why}")
    return out


def _check_prompt_length(pair: TextPair, row: Row, tokenizer: Any, max_prompt_tokens: int | None) -> None:
    if not max_prompt_tokens:
        return
    count = len(encode_prompt(tokenizer, pair.prompt))
    if count > max_prompt_tokens:
        raise DataError(f"{row.where}: the prompt is {count} tokens, over max_prompt_tokens = {max_prompt_tokens}")


def read_preferences(path: str | Path, **kw: Any) -> PairSet:
    """A preference file; see `read_pair_file` for the keywords."""
    return read_pair_file(path, "preference", **kw)


def read_demonstrations(path: str | Path, **kw: Any) -> PairSet:
    """A demonstrations file (prompt/completion); see `read_pair_file` for the keywords."""
    return read_pair_file(path, "demonstration", **kw)


def write_pairs(path: str | Path, pairs: Iterable[TextPair]) -> int:
    """The pair JSON-lines file the trainer reads line by line (`TextPair.from_dict` per line)."""
    return write_jsonl(path, (p.to_dict() for p in pairs))


# ---------------------------------------------------------------- pairs from a run's own samples

def principles_index(example: SamiExample) -> int | None:
    """The position of the constitution that states every principle as written, or None.

    A constitution without any principle (read from a reference file, where only the prompts are known) is not
    one: its signs are unknown."""
    for i, c in enumerate(example.constitutions):
        if c.principles and c.all_positive:
            return i
    return None


def contrast_pairs(examples: Iterable[SamiExample], render: PlainRenderer | None = None) -> PairSet:
    """DPO pairs from SAMI samples: chosen = the answer under the all-positive constitution, rejected = the answer
    under each constitution that states some antithesis (with mode all_or_none exactly one: all antitheses).

    The prompt is the one the chosen answer was sampled under, or `render(query text)` when given (e.g. a prompt
    without any constitution). Examples with no all-positive constitution, and pairs whose answers are empty or
    identical, are counted as skipped."""
    out = PairSet([])
    for ex in examples:
        pos = _usable_positive(ex, out, need_prompt=render is None)
        if pos is None:
            continue
        prompt = render(ex.query.text) if render else ex.prompts[pos]
        negatives = [j for j, c in enumerate(ex.constitutions) if any(not p.positive for p in c.principles)]
        if not negatives:
            out._skip(f"example {ex.query.id}: no constitution with an antithesis")
        for j in negatives:
            rejected = ex.responses[j]
            if not rejected.strip() or rejected.strip() == ex.responses[pos].strip():
                out._skip(f"example {ex.query.id}: the answer under {ex.constitutions[j].id} is empty or the same "
                          "as under the principles")
                continue
            out.pairs.append(TextPair(f"{ex.query.id}:{ex.constitutions[j].id}", prompt, ex.responses[pos], rejected))
    return out


def distillation_pairs(examples: Iterable[SamiExample], render: PlainRenderer) -> PairSet:
    """SFT rows for context distillation: the answer sampled under the all-positive constitution, after the prompt
    `render(query text)`, which leaves the constitution out (see `plain_renderer`): the model learns to act on the
    principles without being told them."""
    out = PairSet([])
    for ex in examples:
        pos = _usable_positive(ex, out, need_prompt=False)
        if pos is not None:
            out.pairs.append(TextPair(str(ex.query.id), render(ex.query.text), ex.responses[pos]))
    return out


def _usable_positive(ex: SamiExample, out: PairSet, *, need_prompt: bool) -> int | None:
    pos = principles_index(ex)
    if pos is None:
        out._skip(f"example {ex.query.id}: no constitution states every principle as written")
        return None
    if not ex.responses[pos].strip():
        out._skip(f"example {ex.query.id}: the answer under the principles is empty")
        return None
    if need_prompt and len(ex.prompts) != ex.n:
        out._skip(f"example {ex.query.id}: no rendered prompts")
        return None
    return pos


def plain_renderer(task_kind: str, tokenizer: Any = None) -> PlainRenderer:
    """Prompts of a task with the system turn left out (the constitution lives there): through the tokenizer's
    chat template as a lone user message when given one, else the task's base frame without its System paragraph.

    The same user wording and frame as `prompts.render_prompt`, so the rest of the prompt is what sampling saw."""
    template = get_template(task_kind)
    frame = "\n\n".join(part for part in template.base_frame.split("\n\n") if "{system}" not in part)

    def render(query_text: str) -> str:
        user = template.user.format(query=query_text)
        if tokenizer is None:
            return frame.format(user=user)
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)

    return render


# ---------------------------------------------------------------- tokens

@dataclass
class TokenizedPair:
    """Token ids of one prompt and its one (SFT) or two (DPO: chosen, rejected) responses."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None

    @property
    def responses(self) -> list[list[int]]:
        """The responses scored after the prompt, chosen first."""
        return [self.chosen_ids] if self.rejected_ids is None else [self.chosen_ids, self.rejected_ids]


def tokenize_pair(tokenizer: Any, pair: TextPair, *, max_prompt_tokens: int | None = None,
                  max_response_tokens: int | None = None, add_eos: bool = True) -> TokenizedPair:
    """The rule of `sami.tokens` and `data.tokenize_example`: the prompt as a sampler sees it (cut from the left,
    a leading BOS kept), each response without special tokens (cut from the right), then EOS."""
    prompt = truncate_prompt(encode_prompt(tokenizer, pair.prompt), max_prompt_tokens,
                             getattr(tokenizer, "bos_token_id", None))
    eos = getattr(tokenizer, "eos_token_id", None)

    def response(text: str) -> list[int]:
        ids = encode_response(tokenizer, text)
        if max_response_tokens:
            ids = ids[:max_response_tokens]
        if add_eos and eos is not None:
            ids.append(eos)
        if not ids:
            raise DataError(f"pair {pair.id}: a response gives no tokens")
        return ids

    return TokenizedPair(prompt, response(pair.chosen), None if pair.rejected is None else response(pair.rejected))


def tokenize_pairs(tokenizer: Any, pairs: Sequence[TextPair], **kw: Any) -> list[TokenizedPair]:
    return [tokenize_pair(tokenizer, p, **kw) for p in pairs]
