"""Evaluation reports: JSON per iteration, PNG plots across iterations, and the terminal summary.

A report (from `runner.evaluate_iteration`) holds: iteration, model, n, seeds, queries; mi_bound {mi_bound, loss,
row_accuracy, col_accuracy, per_seed}; verifiable {principle: {positive_follows, antithesis_follows,
antithesis_follows_principle, positive/antithesis_mean_words, ...}}; degeneration {per_constitution {id: {on_topic,
evasive, empty, repetition, mean_words}}, overall, flagged, reasons, action}; samples {constitution id: [{query,
response}]}; constitutions {id: text}; responses [...]; optional judge and gsm8k; notes; timings.
The judge's raw replies (one record per prompt: pair, order, verdict, outcome, reply) go to judgments.jsonl beside
report.json, which keeps only the judge's figures and the name of that file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .judge import RAW_KEY

REPORT_FILE = "report.json"
JUDGMENTS_FILE = "judgments.jsonl"


def split_judgments(doc: dict, file_name: str = JUDGMENTS_FILE) -> tuple[dict, list[dict]]:
    """(a copy of `doc` whose judge results hold `judgments_file` instead of their raw replies, the raw records).
    Judge results sit at doc["judge"] (an evaluation report) or in doc["judgments"] (a comparison)."""
    raw: list[dict] = []

    def strip(result: dict, extra: dict) -> dict:
        records = result.get(RAW_KEY)
        if records is None:
            return result
        raw.extend({**extra, **rec} for rec in records)
        return {**{k: v for k, v in result.items() if k != RAW_KEY}, "judgments_file": file_name}

    out = dict(doc)
    if isinstance(doc.get("judge"), dict):
        out["judge"] = strip(doc["judge"], {})
    mt = doc.get("mtbench")
    if isinstance(mt, dict):  # MT-Bench: the grading judge's replies and the pairwise judge's
        mt = dict(mt)
        if isinstance(mt.get("judgments"), list):
            raw.extend({"section": "mtbench_grading", **rec} for rec in mt.pop("judgments"))
            mt["judgments_file"] = file_name
        if isinstance(mt.get("pairwise"), dict):
            mt["pairwise"] = strip(mt["pairwise"], {"section": "mtbench_pairwise"})
        out["mtbench"] = mt
    if isinstance(doc.get("judgments"), list):
        out["judgments"] = [strip(j, {"a": j.get("a"), "b": j.get("b")}) if isinstance(j, dict) else j
                            for j in doc["judgments"]]
    return out, raw


def write_judgments(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(_finite(rec), ensure_ascii=False, allow_nan=False) + "\n")
    return path


def write_report(report: dict, folder: str | Path) -> Path:
    """`folder/report.json` (NaN/inf become null so any JSON reader accepts the file) and, when the judge ran,
    `folder/judgments.jsonl` with its raw replies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report, raw = split_judgments(report)
    if raw:
        write_judgments(raw, folder / JUDGMENTS_FILE)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(_finite(report), indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return path


def read_report(folder: str | Path) -> dict:
    return json.loads((Path(folder) / REPORT_FILE).read_text(encoding="utf-8"))


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


# ---------------------------------------------------------------- plots

def _mi(report: dict) -> float | None:
    mi = report.get("mi_bound")
    return mi.get("mi_bound") if isinstance(mi, dict) else mi


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def plot_history(reports: list[dict], folder: str | Path) -> list[Path]:
    """mi_bound.png, verifiable.png and degeneration.png across iterations (Agg; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reports = sorted(reports, key=lambda r: r.get("iteration", 0))
    its = [r.get("iteration", k) for k, r in enumerate(reports)]
    written = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        for ax in fig.axes:
            ax.set_xticks(its)  # iterations are whole numbers
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        written.append(folder / name)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(its, [_num(_mi(r)) for r in reports], marker="o", label="held-out MI bound")
    n = next((r.get("n") for r in reports if r.get("n")), None)
    if n:
        ax.axhline(math.log(n), linestyle="--", color="grey", label=f"log N (N={n})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("nats")
    ax.set_title("MI lower bound (log N - SAMI loss)")
    ax.legend()
    save(fig, "mi_bound.png")

    names = sorted({p for r in reports for p in (r.get("verifiable") or {})})
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for p in names:
        pos = [_num((r.get("verifiable") or {}).get(p, {}).get("positive_follows")) for r in reports]
        neg = [_num((r.get("verifiable") or {}).get(p, {}).get("antithesis_follows_principle")) for r in reports]
        line, = ax.plot(its, pos, marker="o", label=f"{p}: under principle")
        ax.plot(its, neg, marker="x", linestyle="--", color=line.get_color(), label=f"{p}: under antithesis")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("iteration")
    ax.set_ylabel("share of answers following the principle")
    ax.set_title("verifiable principles")
    if names:
        ax.legend(fontsize=7)
    save(fig, "verifiable.png")

    cids = sorted({c for r in reports for c in ((r.get("degeneration") or {}).get("per_constitution") or {})})
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for cid in cids:
        stats = [((r.get("degeneration") or {}).get("per_constitution") or {}).get(cid, {}) for r in reports]
        line, = ax1.plot(its, [_num(s.get("on_topic")) for s in stats], marker="o", label=f"{cid} on topic")
        ax1.plot(its, [_num(s.get("evasive")) for s in stats], marker="x", linestyle="--", color=line.get_color(),
                 label=f"{cid} evasive")
        ax2.plot(its, [_num(s.get("mean_words")) for s in stats], marker="o", label=cid)
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_title("on-topic and evasive share")
    ax2.set_title("mean words per answer")
    for ax in (ax1, ax2):
        ax.set_xlabel("iteration")
        if cids:
            ax.legend(fontsize=7)
    save(fig, "degeneration.png")
    return written


# ---------------------------------------------------------------- terminal summary

def _pct(x) -> str:
    return "   -" if x is None else f"{100 * x:3.0f}%"


def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def summary_rows(report: dict) -> dict[str, str]:
    mi = report.get("mi_bound") or {}
    row = {"iter": str(report.get("iteration", "?")), "model": str(report.get("model", "")),
           "MI bound": _f(_mi(report)),
           "diag acc r/c": f"{_f(mi.get('row_accuracy'), '.2f')}/{_f(mi.get('col_accuracy'), '.2f')}"
           if isinstance(mi, dict) else "-"}
    for p, v in sorted((report.get("verifiable") or {}).items()):
        row[f"{p} +/-"] = f"{_pct(v.get('positive_follows'))}/{_pct(v.get('antithesis_follows_principle'))}"
    deg = report.get("degeneration") or {}
    for cid, s in sorted((deg.get("per_constitution") or {}).items()):
        row[f"[{cid}] on-topic/evasive/words"] = (f"{_pct(s.get('on_topic'))}/{_pct(s.get('evasive'))}/"
                                                  f"{_f(s.get('mean_words'), '.0f')}")
    if deg:
        row["guard"] = deg.get("action", "none") if deg.get("flagged") else "ok"
    judge = report.get("judge")
    if isinstance(judge, dict):
        row["win rate"] = _f(judge.get("win_rate"), ".2f")
        row["win rate, length-controlled"] = _f((judge.get("length_controlled_win_rate") or {}).get("win_rate"),
                                                ".2f")
        lengths = judge.get("lengths") or {}
        row["words, answer/baseline"] = (f"{_f(lengths.get('candidate_mean_words'), '.0f')}/"
                                         f"{_f(lengths.get('baseline_mean_words'), '.0f')}")
        if judge.get("unparseable") or judge.get("errors"):
            row["judge unparsed/failed"] = f"{judge.get('unparseable', 0)}/{judge.get('errors', 0)}"
    g = report.get("gsm8k")
    if isinstance(g, dict):
        row["gsm8k pass@1 greedy"] = _f(g.get("greedy_pass_at_1"), ".2f")
        sampled = g.get("pass_at") or {}
        if sampled:
            k = max(sampled, key=int)
            row[f"gsm8k pass@{k} sampled"] = _f(sampled[k], ".2f")
    mt = report.get("mtbench")
    if isinstance(mt, dict):
        both = ((mt.get("grading") or {}).get("overall") or {}).get("both_turns") or {}
        row["MT-Bench score (1-10)"] = _f(both.get("mean"), ".2f")
        if both.get("unparsed") or both.get("errors"):
            row["MT-Bench unparsed/failed"] = f"{both.get('unparsed', 0)}/{both.get('errors', 0)}"
        pairwise = mt.get("pairwise")
        if isinstance(pairwise, dict):
            row["MT-Bench win rate"] = _f(pairwise.get("win_rate"), ".2f")
    return row


def format_summary(reports: list[dict], samples_per_constitution: int = 1, width: int = 160) -> str:
    """A before/after table (one column per evaluated iteration) and a few sample answers of the first and last."""
    if not reports:
        return "no evaluations"
    reports = sorted(reports, key=lambda r: r.get("iteration", 0))
    rows = [summary_rows(r) for r in reports]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    label_w = max(len(k) for k in keys)
    col_w = max(12, *(len(r.get(k, "")) for r in rows for k in keys))
    lines = ["evaluation on held-out queries (verifiable: share following the principle under principle/antithesis)"]
    for k in keys:
        lines.append(f"  {k:<{label_w}}  " + "  ".join(f"{r.get(k, '-'):>{col_w}}" for r in rows))
    for rep in (reports[0], reports[-1]) if len(reports) > 1 else (reports[0],):
        for reason in (rep.get("degeneration") or {}).get("reasons", []):
            lines.append(f"  guard, iteration {rep.get('iteration')}: {reason}")
    shown = [reports[0]] + ([reports[-1]] if len(reports) > 1 else [])
    for rep in shown:
        lines.append(f"sample answers, iteration {rep.get('iteration')}:")
        for cid, samples in sorted((rep.get("samples") or {}).items()):
            for s in samples[:samples_per_constitution]:
                text = " ".join(s["response"].split())
                q = " ".join(s["query"].split())
                lines.append(f"  [{cid}] Q: {q[:80]}")
                lines.append(f"  {'':>{len(cid) + 2}} A: {text[:width - len(cid) - 8]}")
    return "\n".join(lines)
