"""MT-Bench questions (FastChat's llm_judge/data/mt_bench/question.jsonl) as queries.

Each row: `question_id`, `category`, `turns` (two user turns), and for some categories `reference` (one answer per
turn). The first turn is the training query; both turns stay on the query (`MultiTurnQuery.turns`) for a two-turn
evaluation. sami-extension's multi-task training data (mt_bench/input_data/training_data.json) uses the same layout
and is read the same way; its one-turn rows whose `turns` is a string instead of a list are read as that one turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..data import Query
from .rows import Row, layout_error

FORMAT = "MT-Bench"
NEEDS = "'turns' (a list of user turns), with 'question_id' and 'category' (FastChat's mt_bench/question.jsonl)"


@dataclass(frozen=True)
class MultiTurnQuery(Query):
    """A query whose later user turns are kept for multi-turn evaluation; `text` is the first turn."""

    turns: tuple[str, ...] = ()
    references: tuple[str, ...] = ()  # per turn, where the question has reference answers ('' where none)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "turns": list(self.turns), "references": list(self.references)}

    @classmethod
    def from_dict(cls, d: dict) -> MultiTurnQuery:
        q = Query.from_dict(d)
        return cls(q.id, q.text, q.category, q.reference, tuple(d.get("turns") or (q.text,)),
                   tuple(d.get("references") or ()))


def mtbench_query(row: Row) -> MultiTurnQuery:
    turns = row.data.get("turns")
    if isinstance(turns, str):
        turns = [turns]
    if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns) and turns[0].strip()):
        raise layout_error(row, FORMAT, NEEDS)
    refs = row.data.get("reference") or []
    refs = [refs] if isinstance(refs, str) else [r if isinstance(r, str) else "" for r in refs]
    cat = row.data.get("category")
    return MultiTurnQuery(str(row.data.get("question_id", row.index)), turns[0].strip(),
                          None if cat is None else str(cat), (refs[0] or None) if refs else None,
                          tuple(t.strip() for t in turns), tuple(refs))


def mtbench_queries(rows: Iterable[Row]) -> list[Query]:
    return [mtbench_query(r) for r in rows]
