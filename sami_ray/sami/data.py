"""Queries, SAMI examples, response filters, tokenisation and collation.

A SAMI example is one query answered under N distinct constitutions: `responses[j]` was sampled under
`constitutions[j]`. The trainer scores every (constitution i, response j) pair, so one example is N x N sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import DataError
from .constitutions import Constitution
from .loss import IGNORE_INDEX
from .tokens import encode_prompt, encode_response, truncate_prompt

QueryFormat = Literal["auto", "jsonl", "json", "hf", "mtbench", "gsm8k"]


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    category: str | None = None
    reference: str | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "category": self.category, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: dict) -> Query:
        return cls(str(d["id"]), str(d["text"]), d.get("category"), d.get("reference"))


@dataclass
class SamiExample:
    query: Query
    constitutions: list[Constitution]
    responses: list[str]
    prompts: list[str] = field(default_factory=list)  # prompts[i]: the rendered prompt for constitutions[i]

    def __post_init__(self) -> None:
        if len(self.constitutions) != len(self.responses):
            raise ValueError(f"example {self.query.id}: {len(self.constitutions)} constitutions but "
                             f"{len(self.responses)} responses")

    @property
    def n(self) -> int:
        return len(self.constitutions)

    def to_dict(self) -> dict:
        return {"query": self.query.to_dict(), "constitutions": [c.to_dict() for c in self.constitutions],
                "responses": list(self.responses), "prompts": list(self.prompts)}

    @classmethod
    def from_dict(cls, d: dict) -> SamiExample:
        return cls(Query.from_dict(d["query"]), [Constitution.from_dict(c) for c in d["constitutions"]],
                   list(d["responses"]), list(d.get("prompts", [])))


# ---------------------------------------------------------------- JSON lines

def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSON-lines file; a bad line raises DataError naming the file and line number."""
    from .datasets.rows import json_lines  # here: the datasets package imports this module

    path = Path(path)
    try:
        with open(path, "rb") as f:
            for row in json_lines(path, f):
                yield row.data
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None


def save_examples(path: str | Path, examples: Iterable[SamiExample]) -> int:
    return write_jsonl(path, (e.to_dict() for e in examples))


def load_examples(path: str | Path) -> list[SamiExample]:
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            out.append(SamiExample.from_dict(row))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: example {i} is not a SAMI example ({e})") from None
    return out


# ---------------------------------------------------------------- query sources

def _detect_format(path: Path) -> QueryFormat:
    if path.is_dir():
        return "hf"
    if path.suffix == ".json":
        return "json"
    return "jsonl"


def _row_to_query(row: dict, idx: int, source: str, text_field: str | None, id_field: str,
                  category_field: str, reference_field: str) -> Query:
    fields = [text_field] if text_field else ["text", "query", "prompt", "question", "instruction", "post"]
    text = next((row[f] for f in fields if f in row and row[f] is not None), None)
    if text is None:
        raise DataError(f"{source}: row {idx} has none of the text fields {fields}")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{source}: row {idx}: field {fields[0] if text_field else 'text'} is empty or not a string")
    qid = row.get(id_field, idx)
    ref = row.get(reference_field)
    cat = row.get(category_field)
    return Query(str(qid), text.strip(), None if cat is None else str(cat), None if ref is None else str(ref))


def load_queries(path: str | Path, fmt: QueryFormat = "auto", *, text_field: str | None = None,
                 id_field: str = "id", category_field: str = "category", reference_field: str = "reference",
                 split: str | None = None, limit: int | None = None) -> list[Query]:
    """Queries from JSONL, JSON (a list of objects), a local Hugging Face dataset folder, an MT-Bench
    question file (first turn; category kept) or GSM8K-style `question`/`answer` JSONL."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (task.queries.path)")
    if fmt == "auto":
        fmt = _detect_format(path)
    src = str(path)
    queries: list[Query] = []
    if fmt == "mtbench":
        for i, row in enumerate(read_jsonl(path), 1):
            turns = row.get("turns")
            if not isinstance(turns, list) or not turns:
                raise DataError(f"{src}: row {i} has no 'turns' list (MT-Bench question format)")
            queries.append(Query(str(row.get("question_id", i)), str(turns[0]), row.get("category"),
                                 (row.get("reference") or [None])[0]))
    elif fmt == "gsm8k":
        for i, row in enumerate(read_jsonl(path), 1):
            if "question" not in row:
                raise DataError(f"{src}: row {i} has no 'question' field (GSM8K format)")
            queries.append(Query(str(row.get("id", i)), str(row["question"]).strip(), "math", row.get("answer")))
    elif fmt == "jsonl":
        queries = [_row_to_query(r, i, src, text_field, id_field, category_field, reference_field)
                   for i, r in enumerate(read_jsonl(path), 1)]
    elif fmt == "json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{src}: not a JSON file ({e})") from None
        if isinstance(rows, dict):
            rows = [{"id": k, **(v if isinstance(v, dict) else {"text": v})} for k, v in rows.items()]
        if not isinstance(rows, list):
            raise DataError(f"{src}: expected a JSON list of objects")
        queries = [_row_to_query(r, i, src, text_field, id_field, category_field, reference_field)
                   for i, r in enumerate(rows, 1)]
    elif fmt == "hf":
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a dependency
            raise DataError("reading a Hugging Face dataset folder needs the 'datasets' package") from None
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            name = split or ("train" if "train" in ds else next(iter(ds)))
            ds = ds[name]
        queries = [_row_to_query(dict(r), i, src, text_field, id_field, category_field, reference_field)
                   for i, r in enumerate(ds, 1)]
    else:
        raise DataError(f"{src}: unknown query format {fmt!r}")
    if not queries:
        raise DataError(f"{src}: no queries found")
    ids = [q.id for q in queries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{src}: query id {dup!r} appears more than once")
    return queries[:limit] if limit else queries


# ---------------------------------------------------------------- response filters

@dataclass(frozen=True)
class ResponseFilter:
    """Why a sampled response is unusable. The reference TL;DR recipe drops '[insert', '[]', ']', 'Response',
    answers that do not end with '.', and examples whose responses are identical across constitutions."""

    min_chars: int = 1
    max_chars: int | None = None
    require_terminal_punctuation: bool = False
    terminal_chars: str = ".!?"
    forbidden_substrings: tuple[str, ...] = ()
    drop_identical: bool = True
    drop_truncated: bool = False  # sampler marks responses that hit max_tokens

    @classmethod
    def from_config(cls, cfg: object) -> ResponseFilter:
        """From the sampler's filter config (anything with this class's field names)."""
        names = ("min_chars", "max_chars", "require_terminal_punctuation", "drop_identical", "drop_truncated")
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)},
                   forbidden_substrings=tuple(getattr(cfg, "forbidden_substrings", ())))

    def reason(self, response: str, truncated: bool = False) -> str | None:
        text = response.strip()
        if len(text) < max(self.min_chars, 1):
            return "empty"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_long"
        if self.drop_truncated and truncated:
            return "truncated"
        if self.require_terminal_punctuation and text[-1] not in self.terminal_chars:
            return "unfinished"
        for s in self.forbidden_substrings:
            if s in text:
                return f"contains:{s}"
        return None

    def example_reason(self, responses: Sequence[str], truncated: Sequence[bool] | None = None) -> str | None:
        """The first reason the whole example is dropped, or None when it is kept."""
        flags = truncated or [False] * len(responses)
        for r, t in zip(responses, flags, strict=True):
            why = self.reason(r, t)
            if why:
                return why
        if self.drop_identical and len({r.strip() for r in responses}) < len(responses):
            return "identical"
        return None


# ---------------------------------------------------------------- tokenisation and collation

@dataclass
class TokenizedExample:
    """Token ids of the N prompts and N responses of one example; pairs are formed at collation."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]

    @property
    def n(self) -> int:
        return len(self.prompt_ids)


def tokenize_example(tokenizer: Any, example: SamiExample, *, max_prompt_tokens: int | None = None,
                     max_response_tokens: int | None = None, add_eos: bool = True) -> TokenizedExample:
    """Prompts and responses are tokenised apart by the rule of `sami.tokens` (the prompt as a sampler sees it, BOS
    first when the tokenizer adds one; the response without special tokens) and concatenated, the way an engine
    scores a response given a prompt. Prompts are cut from the left (the query end stays, a leading BOS stays
    first), responses from the right."""
    if not example.prompts or len(example.prompts) != example.n:
        raise DataError(f"example {example.query.id}: needs one rendered prompt per constitution")
    eos = getattr(tokenizer, "eos_token_id", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    prompts, responses = [], []
    for p in example.prompts:
        prompts.append(truncate_prompt(encode_prompt(tokenizer, p), max_prompt_tokens, bos))
    for r in example.responses:
        ids = encode_response(tokenizer, r)
        if max_response_tokens:
            ids = ids[:max_response_tokens]
        if add_eos and eos is not None:
            ids.append(eos)
        responses.append(ids)
    return TokenizedExample(prompts, responses)


@dataclass
class PairBatch:
    """Every (constitution i, response j) pair of B examples, padded: rows are ordered (b, i, j)."""

    input_ids: torch.Tensor  # (B*N*N, T)
    attention_mask: torch.Tensor  # (B*N*N, T)
    labels: torch.Tensor  # (B*N*N, T); IGNORE_INDEX on prompt and padding
    batch_size: int
    n: int

    def num_response_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def collate_pairs(examples: Sequence[TokenizedExample], pad_token_id: int) -> PairBatch:
    """The straightforward layout: one padded sequence per pair, labels shifted so position t predicts t+1."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    n = examples[0].n
    if any(e.n != n for e in examples):
        raise ValueError("all examples of a batch need the same N")
    seqs, labs = [], []
    for ex in examples:
        for i in range(n):
            for j in range(n):
                p, r = ex.prompt_ids[i], ex.response_ids[j]
                seqs.append(p + r)
                # labels[t] is the token that position t predicts; the last prompt position predicts r[0].
                labs.append([IGNORE_INDEX] * (len(p) - 1) + r + [IGNORE_INDEX])
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for k, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
        ids[k, :len(s)] = torch.tensor(s)
        mask[k, :len(s)] = 1
        labels[k, :len(lab)] = torch.tensor(lab)
    return PairBatch(ids, mask, labels, len(examples), n)
