"""What a person reads about a run: the end-of-run summary and `sami-ray status`."""

from __future__ import annotations

import yaml

from .config import config_from_dict
from .storage import CheckpointStore

STAGES = ("samples", "model", "eval")


def print_summary(summary) -> None:
    from .evaluate.report import format_summary

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
    store = CheckpointStore.open(run_uri)
    from .errors import UserError

    if not store.exists("config.yaml"):
        raise UserError(f"no run at {run_uri}: config.yaml is missing")
    data = yaml.safe_load(store.get_bytes("config.yaml").decode())
    for key in ("access_key_id", "secret_access_key"):
        if data.get("storage", {}).get(key) == "***":
            data["storage"][key] = None
    cfg = config_from_dict(data, f"{run_uri}/config.yaml")
    iterations = []
    for k in range(0, cfg.run.iterations + 1):
        stages = {s: store.is_committed(f"iter-{k:04d}/{s}") for s in STAGES}
        entry: dict = {"iteration": k, "stages": stages}
        if stages["eval"]:
            rep = store.get_json(f"iter-{k:04d}/eval/report.json")
            entry["figures"] = headline_figures(rep)
        if stages["model"]:
            m = store.read_manifest(f"iter-{k:04d}/model")
            entry["train"] = (getattr(m, "meta", None) or {}).get("summary", {})
        iterations.append(entry)
    summary = store.get_json("summary.json") if store.exists("summary.json") else None
    return {"run": run_uri, "name": cfg.run.name, "principles_committed": store.is_committed("principles"),
            "iterations": iterations, "finished": summary is not None, "summary": summary}


def headline_figures(report: dict) -> dict:
    out = {}
    mi = report.get("mi_bound") or {}
    if isinstance(mi, dict) and "mi_bound" in mi:
        out["mi_bound"] = mi["mi_bound"]
    elif isinstance(mi, int | float):
        out["mi_bound"] = mi
    deg = report.get("degeneration") or {}
    if "flagged" in deg:
        out["degenerate"] = deg["flagged"]
    return out


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
