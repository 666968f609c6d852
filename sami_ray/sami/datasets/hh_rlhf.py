"""Anthropic HH-RLHF dialogues as queries.

Each row has `chosen` and `rejected`: whole transcripts, "\\n\\nHuman: ...\\n\\nAssistant: ..." turn after turn, that
differ only in the last Assistant turn. The query is the conversation before that turn. The chat frame of the
dialogue template already says "Human:" before the query and "Assistant:" after it, so the query text is the
first Human turn's words followed by the later turns with their labels; rendered, the prompt reads as the
original transcript up to the open Assistant turn. The chosen last reply is the query's reference.

Many rows share a conversation (several reply pairs per prompt), so each conversation is kept once (the first).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..data import Query
from .rows import Row, layout_error

FORMAT = "HH-RLHF"
NEEDS = ("'chosen' (and 'rejected'): a transcript of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns "
         "(Anthropic/hh-rlhf)")
HUMAN, ASSISTANT = "Human:", "\n\nAssistant:"


def split_transcript(row: Row) -> tuple[str, str]:
    """(the conversation before the last Assistant turn, that turn's reply) of the row's transcript."""
    transcript = row.data.get("chosen")
    if not isinstance(transcript, str):
        transcript = row.data.get("rejected")
    if not isinstance(transcript, str):
        raise layout_error(row, FORMAT, NEEDS)
    cut = transcript.rfind(ASSISTANT)
    body = transcript[:cut].lstrip()
    if cut < 0 or not body.startswith(HUMAN) or not body[len(HUMAN):].strip():
        raise layout_error(row, FORMAT, NEEDS + "; this transcript has no Human turn followed by an Assistant turn")
    return body[len(HUMAN):].strip(), transcript[cut + len(ASSISTANT):].strip()


def hh_queries(rows: Iterable[Row]) -> list[Query]:
    out: dict[str, Query] = {}
    for row in rows:
        text, reply = split_transcript(row)
        if text not in out:
            out[text] = Query(str(row.index), text, None, reply or None)
    return list(out.values())
