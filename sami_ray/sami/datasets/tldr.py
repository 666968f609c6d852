"""Reddit TL;DR posts as queries, from the layouts the hub's TL;DR datasets use.

Supported layouts (one row each):
- `info: {id, subreddit, title, post}`: openai/summarize_from_feedback ('comparisons' and 'axis'), which the SAMI
  reference reads. A post appears once per comparison there, so rows are kept once per post id (the first), as the
  reference does; rows whose `info` holds a news article instead of a post (the CNN/DM part) are skipped.
- `id, subreddit, title, post[, summary]`: OpenAI's filtered TL;DR set (tldr_3_filtered/{train,valid,test}.jsonl).
- `prompt` ("SUBREDDIT: r/...", "TITLE: ...", "POST: ...", "TL;DR:" on their own lines) with `label`
  (CarperAI/openai_summarize_tldr) or `completion` (trl-lib/tldr).

The query text is the post alone (`tldr_prompt: post`; the summarisation template labels it "POST:", which is what
the SAMI reference's prompts show), or "SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ..." (`tldr_prompt: full`, as
OpenAI's and CarperAI's prompts have it). The human summary, where the row has one, is the query's reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..data import Query
from .rows import Row, layout_error

FORMAT = "TL;DR"
NEEDS = ("'post' (with 'subreddit' and 'title'; OpenAI's tldr_3_filtered), 'info' holding them "
         "(openai/summarize_from_feedback), or a 'prompt' of SUBREDDIT/TITLE/POST lines with 'label' or "
         "'completion' (CarperAI/openai_summarize_tldr, trl-lib/tldr)")

# The prompt column of CarperAI's and trl-lib's sets: fields on their own lines (one or two newlines apart).
_PROMPT = re.compile(r"^\s*SUBREDDIT:\s*(?:r/)?(?P<subreddit>[^\n]*?)\s*\n+\s*TITLE:\s*(?P<title>.*?)\s*\n+\s*"
                     r"POST:\s*(?P<post>.*?)(?:\s*TL;DR:)?\s*$", re.DOTALL)


@dataclass(frozen=True)
class Post:
    id: str
    subreddit: str
    title: str
    post: str
    summary: str | None


def _str(v: object) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


def _post(row: Row) -> Post | None:
    """The row's post, None for a row that holds no Reddit post (a CNN/DM article), or an error."""
    d = row.data
    info = d.get("info")
    if isinstance(info, dict):
        if _str(info.get("post")) is None and _str(info.get("article")):
            return None
        fields = info
        summary = None
        summaries, choice = d.get("summaries"), d.get("choice")
        if isinstance(summaries, list) and isinstance(choice, int) and 0 <= choice < len(summaries):
            summary = _str((summaries[choice] or {}).get("text"))  # the labeller's preferred summary
    elif "post" in d:
        fields, summary = d, _str(d.get("summary"))
    elif isinstance(d.get("prompt"), str) and ("label" in d or "completion" in d):
        m = _PROMPT.match(d["prompt"])
        if m is None:
            raise layout_error(row, FORMAT, NEEDS + "; this prompt does not read 'SUBREDDIT: r/...', 'TITLE: ...', "
                                                    "'POST: ...' on their own lines")
        fields, summary = m.groupdict(), _str(d.get("label", d.get("completion")))
    else:
        raise layout_error(row, FORMAT, NEEDS)
    post = _str(fields.get("post"))
    if post is None:
        raise layout_error(row, FORMAT, NEEDS + "; its post is empty")
    pid = fields.get("id", d.get("id"))
    return Post(str(pid) if pid is not None else str(row.index), _str(fields.get("subreddit")) or "",
                _str(fields.get("title")) or "", post, summary)


def query_text(p: Post, style: str) -> str:
    if style == "post":
        return p.post
    head = [f"SUBREDDIT: r/{p.subreddit}"] if p.subreddit else []
    head += [f"TITLE: {p.title}"] if p.title else []
    return "\n".join([*head, f"POST: {p.post}"])


def tldr_queries(rows: Iterable[Row], style: str = "post") -> list[Query]:
    """One query per post (the first row of each post id)."""
    out: dict[str, Query] = {}
    for row in rows:
        p = _post(row)
        if p is not None and p.id not in out:
            out[p.id] = Query(p.id, query_text(p, style), None, p.summary)
    return list(out.values())
