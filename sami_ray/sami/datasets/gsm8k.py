"""GSM8K problems as queries: `question` and `answer`, the worked solution ending in a '#### N' line.

As openai/grade-school-math ships them (grade_school_math/data/{train,test}.jsonl, also the 'socratic' files) and as
the hub's openai/gsm8k has them (Parquet, same columns). Rows have no id, so a problem's id is its line or row
number. The whole answer is the reference: evaluation scores the number after '####'. Evaluation reads its own file
(task.queries.eval_source, e.g. test.jsonl), never a slice of the training file.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..data import Query
from .rows import Row, layout_error

FORMAT = "GSM8K"
NEEDS = "'question' and 'answer' (a solution ending in a '#### N' line; openai/grade-school-math)"


def gsm8k_query(row: Row) -> Query:
    q, a = row.data.get("question"), row.data.get("answer")
    if not (isinstance(q, str) and q.strip() and isinstance(a, str)):
        raise layout_error(row, FORMAT, NEEDS)
    if "####" not in a:
        raise layout_error(row, FORMAT, NEEDS + "; this answer has no '####' line")
    qid = row.data.get("id", row.index)
    return Query(str(qid), q.strip(), "math", a.strip())


def gsm8k_queries(rows: Iterable[Row]) -> list[Query]:
    return [gsm8k_query(r) for r in rows]
