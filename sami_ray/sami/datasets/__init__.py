"""Public datasets read in their own layouts (task.queries.format): one module per dataset.

- `tldr`: Reddit TL;DR posts (tldr.py names the layouts)
- `hh_rlhf`: Anthropic HH-RLHF dialogues
- `gsm8k`: GSM8K math word problems
- `mtbench`: MT-Bench questions (both turns kept)

Each reads JSON lines (also .gz), a JSON list, Parquet or a save_to_disk folder (rows.py). A row in another layout
ends the load with one DataError naming the file, the line or row, the fields it has and the fields the format
needs. Query ids are unique per file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ...errors import DataError
from ..data import Query
from .gsm8k import gsm8k_queries
from .hh_rlhf import hh_queries
from .mtbench import MultiTurnQuery, mtbench_queries
from .rows import Row, read_rows
from .tldr import tldr_queries

# format -> rows to queries; TL;DR alone takes an option (how the post is shown), bound at load time
ADAPTERS: dict[str, Callable[[Iterable[Row]], list[Query]]] = {
    "tldr": tldr_queries,
    "hh_rlhf": hh_queries,
    "gsm8k": gsm8k_queries,
    "mtbench": mtbench_queries,
}

__all__ = ["ADAPTERS", "MultiTurnQuery", "Row", "load_dataset_queries", "read_rows"]


def _unique(queries: Iterable[Query], src: Path) -> list[Query]:
    seen: set[str] = set()
    out = []
    for q in queries:
        if q.id in seen:
            raise DataError(f"{src}: query id {q.id!r} appears more than once")
        seen.add(q.id)
        out.append(q)
    return out


def load_dataset_queries(path: str | Path, fmt: str, *, split: str | None = None, limit: int | None = None,
                         tldr_prompt: str = "post") -> list[Query]:
    """The queries of one dataset file in format `fmt` (a key of ADAPTERS); the first `limit` when given."""
    if fmt not in ADAPTERS:
        raise DataError(f"{path}: unknown dataset format {fmt!r} (known: {sorted(ADAPTERS)})")
    rows = read_rows(path, split)
    found = tldr_queries(rows, tldr_prompt) if fmt == "tldr" else ADAPTERS[fmt](rows)
    queries = _unique(found, Path(path))
    if not queries:
        raise DataError(f"{path}: no queries found")
    return queries[:limit] if limit else queries
