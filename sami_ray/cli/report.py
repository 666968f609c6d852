"""What a person reads about a run: the end-of-run summary and `sami-ray status`."""

from __future__ import annotations

from ..storage.run import RunStore


def print_summary(summary) -> None:
    from ..evaluate.report import format_summary

    print()
    print(f"run: {summary.run_uri}")
    ps = summary.principles
    print(f"principles (source: {ps.source}):")
    for p in ps.principles:
        print(f"  - {p.name}: {p.text}  |  antithesis: {p.antithesis}")
    for note in ps.notes:
        print(f"  note: {note}")
    if summary.reports:
        print(format_summary(summary.reports))
    if summary.stopped_early:
        print(f"stopped early: {summary.stopped_early}")
    print(f"final model: {summary.final_model or 'base (no iteration kept)'}")
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in summary.timings.items())
    print(f"timings: {timing}")


def run_status(run_uri: str) -> dict:
    """Committed stages per iteration and the latest evaluation figures, read from the store only."""
    store = RunStore.open(run_uri)
    cfg = store.load_config()
    return {"name": cfg.run.name, **store.status(cfg.run.iterations), "run": run_uri}


def format_status(st: dict) -> str:
    lines = [f"run {st['name']}  ({st['run']})",
             f"principles: {'committed' if st['principles_committed'] else 'not yet'}",
             f"{'iter':>4}  {'samples':>7} {'model':>5} {'eval':>4}  figures"]
    for it in st["iterations"]:
        s = it["stages"]
        mark = {True: "yes", False: "-"}
        figs = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in (it.get("figures") or {}).items())
        lines.append(f"{it['iteration']:>4}  {mark[s['samples']]:>7} {mark[s['model']]:>5} {mark[s['eval']]:>4}  {figs}")
    lines.append("finished" if st["finished"] else "not finished: `sami-ray resume " + st["run"] + "` continues it")
    return "\n".join(lines)
