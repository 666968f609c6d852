"""A comparison of evaluated models (`sami-ray compare`): one row per model, read from its evaluation report, and
judge win rates between the rows' answers to the same held-out (query, constitution, seed).

Rows carry their reports unchanged, so every figure in the table is the report's own number. Win rates use
`judge.judge_pairs` (both orders, a tie is half a win, unparsed verdicts and failed requests counted, never wins);
each unordered pair of rows is judged once and the reverse direction is read off the same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .judge import JudgeBackend, PairItem, judge_pairs
from .judge_templates import JudgeTemplate

TALLY_KEYS = ("verdicts", "wins", "losses", "ties", "unparseable", "errors")


@dataclass
class Row:
    label: str  # unique name in the table
    source: str  # the run URI or the model reference given on the command line
    iteration: int | None  # the run's evaluated iteration (None for a model evaluated by compare)
    report: dict  # the evaluation report, as stored
    query_texts: dict[str, str] | None = None  # held-out query id -> text: the judge needs the question
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.report.get("model") or self.source)


def figures(report: dict) -> dict:
    """The report's headline numbers, untouched: MI bound, verifiable-principle rates, on-topic share, length."""
    mi = report.get("mi_bound")
    overall = (report.get("degeneration") or {}).get("overall") or {}
    return {
        "queries": report.get("queries"),
        "n": report.get("n"),
        "seeds": report.get("seeds"),
        "mi_bound": mi.get("mi_bound") if isinstance(mi, dict) else mi,
        "on_topic": overall.get("on_topic"),
        "evasive": overall.get("evasive"),
        "mean_words": overall.get("mean_words"),
        "verifiable": {p: {"positive_follows": v.get("positive_follows"),
                           "antithesis_follows_principle": v.get("antithesis_follows_principle")}
                       for p, v in sorted((report.get("verifiable") or {}).items())},
    }


# ---------------------------------------------------------------- win rates

def answers(row: Row) -> dict[tuple[str, str, int], str]:
    """(query text, constitution text, seed) -> answer. Keyed by texts, not ids: rows from different runs share a
    question only when they asked the same thing under the same constitution."""
    cons = row.report.get("constitutions") or {}
    texts = row.query_texts or {}
    out = {}
    for r in row.report.get("responses") or []:
        q, c = texts.get(r.get("query_id")), cons.get(r.get("constitution_id"))
        if q is not None and c is not None:
            out[(q, c, r.get("seed"))] = r.get("response") or ""
    return out


def judgeable(row: Row) -> str | None:
    """Why a row's answers cannot be judged, or None."""
    if not row.report.get("responses"):
        return f"{row.label}: its evaluation report holds no answers ('responses'); not judged"
    if not row.query_texts:
        return f"{row.label}: the texts of its held-out queries are unavailable; not judged"
    return None


def _rate(wins: int, losses: int, ties: int) -> float | None:
    decided = wins + losses + ties
    return (wins + 0.5 * ties) / decided if decided else None


def _tally(result: dict, reverse: bool = False) -> dict:
    t = {k: int(result.get(k) or 0) for k in TALLY_KEYS}
    lengths = result.get("lengths") or {}
    mine, theirs = lengths.get("candidate_mean_words"), lengths.get("baseline_mean_words")
    lc = (result.get("length_controlled_win_rate") or {}).get("win_rate")
    if reverse:  # the other row's view of the same verdicts
        t["wins"], t["losses"] = t["losses"], t["wins"]
        mine, theirs = theirs, mine
        lc = None if lc is None else 1.0 - lc
    t["win_rate"] = _rate(t["wins"], t["losses"], t["ties"])
    t["pairs"] = int(result.get("pairs") or 0)
    t["length_controlled_win_rate"] = lc
    t["mean_words"], t["opponent_mean_words"] = mine, theirs
    return t


def win_rates(rows: Sequence[Row], backend: JudgeBackend, baseline: str | None = None,
              template: JudgeTemplate | None = None) -> dict:
    """Judge each row against each other row (or only against `baseline`, a row label).

    Returns {"matrix": {label: {opponent: tally}}, "overall": {label: tally pooled over its opponents},
    "judgments": [{"a", "b", **judge_pairs result}], "notes": [...]}; a tally's win_rate is the row's own.
    """
    notes = [why for r in rows if (why := judgeable(r))]
    usable = [r for r in rows if judgeable(r) is None]
    by_label = {r.label: answers(r) for r in usable}
    if baseline is not None:
        base = next((r for r in usable if r.label == baseline), None)
        pairs = [] if base is None else [(r, base) for r in usable if r is not base]
    else:
        pairs = [(a, b) for i, a in enumerate(usable) for b in usable[i + 1:]]
    matrix: dict[str, dict[str, dict]] = {r.label: {} for r in rows}
    judgments = []
    for a, b in pairs:
        ans_a, ans_b = by_label[a.label], by_label[b.label]
        shared = sorted(set(ans_a) & set(ans_b), key=lambda k: (k[0], k[1], str(k[2])))
        if not shared:
            notes.append(f"{a.label} vs {b.label}: no answers to the same (query, constitution, seed); "
                         "were they evaluated on the same held-out queries and principles?")
            continue
        items = [PairItem(q, c, ans_a[(q, c, s)], ans_b[(q, c, s)]) for q, c, s in shared]
        result = judge_pairs(backend, items, template=template)
        judgments.append({"a": a.label, "b": b.label, **result})
        matrix[a.label][b.label] = _tally(result)
        matrix[b.label][a.label] = _tally(result, reverse=True)
    overall = {}
    for label, opponents in matrix.items():
        pooled = {k: sum(t[k] for t in opponents.values()) for k in (*TALLY_KEYS, "pairs")}
        pooled["win_rate"] = _rate(pooled["wins"], pooled["losses"], pooled["ties"])
        overall[label] = pooled
    return {"matrix": matrix, "overall": overall, "judgments": judgments, "notes": notes}


# ---------------------------------------------------------------- the document, the table, the plot

def comparison(rows: Sequence[Row], wins: dict | None, baseline: str | None, judge: str | None,
               notes: Sequence[str]) -> dict:
    """The JSON document `compare` writes; the Markdown table and the plot are made from it alone."""
    out_rows = []
    for r in rows:
        entry = {"label": r.label, "source": r.source, "iteration": r.iteration, "model": r.model,
                 "figures": figures(r.report)}
        if wins is not None:
            entry["win_rates"] = wins["matrix"].get(r.label, {})
            entry["win_rate_overall"] = wins["overall"].get(r.label)
        out_rows.append(entry)
    all_notes = [n for r in rows for n in r.notes] + list(notes) + list((wins or {}).get("notes", []))
    return {"rows": out_rows, "baseline": baseline, "judge": judge,
            "judgments": (wins or {}).get("judgments", []), "notes": all_notes}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _win_cell(t: dict | None) -> str:
    """win rate, then length-controlled win rate and mean words (row/column) when known, then what went wrong."""
    if not t:
        return "-"
    cell = _num(t.get("win_rate"), ".2f")
    if t.get("length_controlled_win_rate") is not None:
        cell += f" LC {_num(t['length_controlled_win_rate'], '.2f')}"
    if t.get("mean_words") is not None and t.get("opponent_mean_words") is not None:
        cell += f" ({t['mean_words']:.0f}/{t['opponent_mean_words']:.0f} words)"
    bad = [f"{t[k]} {name}" for k, name in (("unparseable", "unparsed"), ("errors", "failed")) if t.get(k)]
    return f"{cell} ({', '.join(bad)})" if bad else cell


def opponents(doc: dict) -> list[str]:
    """The win-rate columns: the baseline alone, or every row."""
    if doc.get("judge") is None:
        return []
    return [doc["baseline"]] if doc.get("baseline") else [r["label"] for r in doc["rows"]]


def markdown_table(doc: dict) -> str:
    """One Markdown table (row per model), then where each row comes from, then the notes."""
    principles = list(dict.fromkeys(p for r in doc["rows"] for p in r["figures"]["verifiable"]))
    against = opponents(doc)
    head = ["row", "iter", "queries", "MI bound", "on-topic", "mean words"]
    head += [f"{p} +/-" for p in principles]
    head += [f"win vs {o}" for o in against]
    if doc.get("judge") is not None and not doc.get("baseline"):
        head.append("win (all)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in doc["rows"]:
        f = r["figures"]
        cells = [r["label"], "-" if r["iteration"] is None else str(r["iteration"]), _num(f["queries"], "d"),
                 _num(f["mi_bound"], ".3f"), _pct(f["on_topic"]), _num(f["mean_words"], ".1f")]
        for p in principles:
            v = f["verifiable"].get(p)
            cells.append("-" if v is None else
                         f"{_pct(v['positive_follows'])}/{_pct(v['antithesis_follows_principle'])}")
        for o in against:
            cells.append("—" if o == r["label"] else _win_cell(r.get("win_rates", {}).get(o)))
        if doc.get("judge") is not None and not doc.get("baseline"):
            cells.append(_win_cell(r.get("win_rate_overall")))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{{p}} +/-: share of answers following principle p under p / under its antithesis. "
                 f"Win rate: the row's over the column's, judge {doc['judge']}, both orders, a tie half a win, "
                 "unparsed verdicts never a win; LC: length-controlled win rate (the judge's preference fitted on "
                 "the length difference, read at equal lengths); words: mean answer words, row / column."
                 if doc.get("judge") else
                 "{p} +/-: share of answers following principle p under p / under its antithesis. No win rates "
                 "(no judge configured).")
    if doc.get("judgments"):
        total = {k: sum(j.get(k) or 0 for j in doc["judgments"]) for k in ("verdicts", "unparseable", "errors")}
        lines.append(f"Judge verdicts: {total['verdicts']}, unparsed {total['unparseable']}, "
                     f"failed requests {total['errors']}.")
    lines.append("")
    for r in doc["rows"]:
        where = r["source"] if r["iteration"] is None else f"{r['source']}, iteration {r['iteration']}"
        lines.append(f"- {r['label']}: {where} ({r['model']})")
    for note in doc.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def plot_comparison(doc: dict, path: str | Path) -> Path:
    """Bars per row: win rate (vs the baseline, or over all), MI bound, on-topic share, mean words and each
    verifiable principle under itself / under its antithesis (Agg; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = doc["rows"]
    labels = [r["label"] for r in rows]
    x = list(range(len(rows)))

    def val(v) -> float:
        return float("nan") if v is None else float(v)

    panels: list[tuple[str, list[float], tuple[float, float] | None]] = []
    if doc.get("judge") is not None:
        base = doc.get("baseline")
        wins = [(r.get("win_rates", {}).get(base) if base else r.get("win_rate_overall")) or {} for r in rows]
        panels.append((f"win rate vs {base}" if base else "win rate vs all others",
                       [val(w.get("win_rate")) for w in wins], (0.0, 1.0)))
    panels += [("MI bound (nats)", [val(r["figures"]["mi_bound"]) for r in rows], None),
               ("on-topic share", [val(r["figures"]["on_topic"]) for r in rows], (0.0, 1.0)),
               ("mean words per answer", [val(r["figures"]["mean_words"]) for r in rows], None)]
    principles = list(dict.fromkeys(p for r in rows for p in r["figures"]["verifiable"]))
    nplots = len(panels) + (1 if principles else 0)
    ncols, nrows = 2, math.ceil(nplots / 2)
    fig = Figure(figsize=(max(10.0, 2.4 * len(rows)), 3.6 * nrows))
    FigureCanvasAgg(fig)
    for k, (title, values, ylim) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.bar(x, values, color="tab:blue")
        if ylim:
            ax.set_ylim(*ylim)
        if title.startswith("win rate"):
            ax.axhline(0.5, linestyle="--", color="grey")
        ax.set_title(title)
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    if principles:
        ax = fig.add_subplot(nrows, ncols, nplots)
        width = 0.8 / (2 * len(principles))
        for j, p in enumerate(principles):
            rates = [r["figures"]["verifiable"].get(p) or {} for r in rows]
            off = (2 * j - len(principles)) * width + width / 2
            ax.bar([i + off for i in x], [val(v.get("positive_follows")) for v in rates], width,
                   label=f"{p}: under principle")
            ax.bar([i + off + width for i in x], [val(v.get("antithesis_follows_principle")) for v in rates], width,
                   label=f"{p}: under antithesis", hatch="//", alpha=0.6)
        ax.set_ylim(0.0, 1.4)  # headroom for the legend above the bars
        ax.set_title("answers following the principle")
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=7, ncols=2, loc="upper center")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
