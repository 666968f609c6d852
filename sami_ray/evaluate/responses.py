"""Responses files: a model's answers to (query, constitution) pairs, judged without the model.

Two layouts are read as they are:
- ours, JSON lines: {"query", "constitution", "response"[, "category"]} per line (other fields are ignored), as
  `sami-ray answers` and `sami-ray judge` write them;
- the SAMI reference's response files (janphilippfranken/sami `experiments/tldr/results/responses/*.json`,
  sami-extension `experiments/mt_bench/results_mt_bench/*.json`): one JSON object of columns, each keyed by the
  row's index, {"constitution": {"0": ...}, "question": {"0": ...}, "response": {"0": ...}[, "category": {...}]}
  (a pandas frame written column-wise); an object keyed by index whose values are rows with those fields is read
  too.
Answers are matched to other answers by the query text and the constitution's principles as a set (numbering, order
and surrounding whitespace ignored: each query's principle order is shuffled by its own seed); a key holding several
answers on both sides is paired in file order. What finds no partner is counted, never guessed.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataError
from ..sami.datasets.rows import layout_error, read_rows

_NUMBERING = re.compile(r"^\s*\d+[.)]\s*")  # "1. " / "2) " before a principle
OURS_NEEDS = "'query', 'constitution' and 'response' (optional 'category')"
REFERENCE_COLUMNS = ("constitution", "question", "response")


@dataclass(frozen=True)
class Answer:
    query: str
    constitution: str
    response: str
    category: str | None = None

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """The query and the constitution's principles as a set: two evaluations that list the same principles in
        another order (each query's order is shuffled by its own seed) asked the same thing."""
        lines = (_NUMBERING.sub("", line).strip() for line in self.constitution.strip().splitlines())
        return self.query.strip(), tuple(sorted(line for line in lines if line))


def is_responses_file(ref: str) -> bool:
    """Whether a baseline or `judge` target names a responses file (by its extension)."""
    return ref.endswith((".jsonl", ".json"))


def read_responses(path: str | Path) -> list[Answer]:
    """The answers in `path`, in file order; a DataError naming the file (and line) for anything else."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: no such responses file")
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None  # JSON lines under a .json name
        if isinstance(data, dict):
            return _reference(data, str(path))
    answers = []
    for row in read_rows(p):
        d = row.data
        if not all(isinstance(d.get(k), str) for k in ("query", "constitution", "response")):
            raise layout_error(row, "responses", OURS_NEEDS)
        answers.append(Answer(d["query"], d["constitution"], d["response"], _category(d.get("category"))))
    if not answers:
        raise DataError(f"{path}: no answers in the file")
    return answers


def _category(value: object) -> str | None:
    return None if value is None else str(value)


def _reference(data: dict, where: str) -> list[Answer]:
    if all(isinstance(data.get(c), dict) for c in REFERENCE_COLUMNS):  # columns keyed by row index
        cols = {c: data[c] for c in (*REFERENCE_COLUMNS, "category") if isinstance(data.get(c), dict)}
        rows = {i: {c: col.get(i) for c, col in cols.items()} for i in data["question"]}
    elif data and all(isinstance(v, dict) for v in data.values()):  # rows keyed by index
        rows = data
    else:
        raise DataError(f"{where}: not a responses file: a SAMI reference response file is one object with the "
                        f"columns {list(REFERENCE_COLUMNS)} (and optionally 'category'), each keyed by row index; "
                        f"this one has the top-level keys {sorted(data)[:8]}")
    answers = []
    for i in sorted(rows, key=_index_order):
        r = rows[i]
        missing = [c for c in REFERENCE_COLUMNS if not isinstance(r.get(c), str)]
        if missing:
            raise DataError(f"{where}, row {i}: it has the fields {sorted(k for k, v in r.items() if v is not None)}"
                            f", but a SAMI reference response row needs {list(REFERENCE_COLUMNS)} (missing "
                            f"{missing})")
        answers.append(Answer(r["question"], r["constitution"], r["response"], _category(r.get("category"))))
    if not answers:
        raise DataError(f"{where}: no answers in the file")
    return answers


def _index_order(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if str(key).isdigit() else (1, str(key))


def write_responses(answers: Iterable[Answer], path: str | Path) -> Path:
    """Our JSON-lines layout (what `read_responses` reads back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for a in answers:
            row = {k: v for k, v in asdict(a).items() if v is not None}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@dataclass
class Matched:
    pairs: list[tuple[Answer, Answer]]  # (candidate, baseline)
    candidate_unmatched: int
    baseline_unmatched: int

    def summary(self) -> dict:
        return {"matched": len(self.pairs), "candidate_unmatched": self.candidate_unmatched,
                "baseline_unmatched": self.baseline_unmatched}


def match_answers(candidates: Sequence[Answer], baselines: Sequence[Answer]) -> Matched:
    """Pairs by `Answer.key` (query, the constitution's principles), in file order within a key; the rest counted on each side."""
    pool: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for b in baselines:
        pool[b.key].append(b)
    pairs, unmatched = [], 0
    for c in candidates:
        waiting = pool.get(c.key)
        if waiting:
            pairs.append((c, waiting.pop(0)))
        else:
            unmatched += 1
    return Matched(pairs, unmatched, sum(len(v) for v in pool.values()))
