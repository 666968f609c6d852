"""`sami-ray run | resume | status | principles | eval | compare | judge | answers | serve | plan`.

A UserError (bad config, bad data, unreachable store) is printed as one message without a traceback; bugs keep
their tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import logs
from ..config import demo_config_path, load_config
from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SAMI on Ray: write principles, sample, train with the SAMI loss, evaluate, iterate.")

ConfigArg = Annotated[str | None, typer.Argument(help="run config YAML (default: the embedded demo)")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. trainer.lr=1e-6")]
RunVerbose = Annotated[bool, typer.Option("--verbose", "-v", help="also stream every worker's and library's log "
                                          "lines here (they are always in the run's log file)")]
LOG_KEY = "logs/sami-ray.log"  # inside the run folder


def _split_config_and_overrides(config: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`sami-ray run trainer.lr=1e-6` has no config file: its first argument is an override."""
    rest = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        rest.insert(0, config)
        config = None
    return config, rest


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "botocore", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _open_run_log(store) -> None:
    """The run's log file, RUN/logs/sami-ray.log (appended to on resume). A run folder in S3 gets a local file
    (its earlier part fetched first) that is copied there when the command ends."""
    if store.is_local:
        path, upload = Path(store.url(LOG_KEY)), None
    else:
        from ..models import cache_dir

        path = cache_dir() / "logs" / f"{store.run_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.store.get_bytes(LOG_KEY) if store.store.exists(LOG_KEY) else b"")

        def upload(data: bytes) -> None:
            store.store.put_bytes(LOG_KEY, data)
    logs.to_file(path, upload)
    logs.say(f"log: {path}" + ("" if upload is None else f" (copied to {store.url(LOG_KEY)} at the end)"))


def _run_and_report(r) -> None:
    from .report import print_summary

    _open_run_log(r.store)
    summary = r.execute()
    with logs.on_terminal():
        print_summary(summary)


@app.command()
def run(config: ConfigArg = None, overrides: Overrides = None,
        run_id: Annotated[str | None, typer.Option(help="name of the run folder (default: NAME-TIMESTAMP)")] = None,
        verbose: RunVerbose = False) -> None:
    """Start a new run (with no config: the embedded demo on this machine)."""
    from ..driver import Run

    with logs.session(verbose):
        path, rest = _split_config_and_overrides(config, overrides)
        cfg = load_config(path or str(demo_config_path()), rest)  # overrides alone tweak the embedded demo
        r = Run.start(cfg, run_id=run_id, progress=logs.say)
        logs.say(f"run: {r.store.uri}")
        _run_and_report(r)


@app.command()
def resume(run_uri: str, verbose: RunVerbose = False) -> None:
    """Continue a run from its last committed stage."""
    from ..driver import Run

    with logs.session(verbose):
        r = Run.resume(run_uri, progress=logs.say)
        logs.say(f"resuming {r.store.uri}")
        _run_and_report(r)


@app.command()
def status(run_uri: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Iterations, committed stages and latest figures of a run."""
    from .report import run_status

    st = run_status(run_uri)
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        from .report import format_status

        print(format_status(st))


@app.command()
def principles(config: ConfigArg = None, overrides: Overrides = None, verbose: bool = False) -> None:
    """Write (with the configured writer) and show the principles of a config, without running."""
    from ..driver import Run

    _setup_logging(verbose)
    path, rest = _split_config_and_overrides(config, overrides)
    cfg = load_config(path or str(demo_config_path()), rest + ["storage.uri=" + _scratch_dir()])
    r = Run.start(cfg, progress=_say)
    try:
        pset = r.loop.principles()
    finally:
        r.shutdown()
    _say(f"source: {pset.source}")
    for note in pset.notes:
        _say(f"note: {note}")
    for p in pset.principles:
        _say(f"- {p.name}\n    principle:  {p.text}\n    antithesis: {p.antithesis}")


@app.command("eval")
def eval_cmd(target: Annotated[str, typer.Argument(help="a run URI (evaluates its latest model) or a model folder")],
             config: Annotated[str | None, typer.Option(help="run config for a model folder")] = None,
             overrides: Overrides = None, verbose: bool = False) -> None:
    """Evaluate a checkpoint or the latest model of a run on held-out queries."""
    from .eval import evaluate_target

    _setup_logging(verbose)
    report = evaluate_target(target, config, list(overrides or []), progress=_say)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2, default=str))


@app.command("compare")
def compare_cmd(targets: Annotated[list[str] | None, typer.Argument(metavar="RUN_OR_MODEL", help="runs (folder "
                                                                    "or URI) and models (folder, builtin:NAME, "
                                                                    "hub id)")] = None,
                job: Annotated[str | None, typer.Option(help="a comparison job (e.g. jobs/compare_demo.yaml): run "
                                                       "or resume its arms first, then compare them")] = None,
                baseline: Annotated[str | None, typer.Option(help="judge every row against this one only")] = None,
                iteration: Annotated[int | None, typer.Option(help="each run's iteration (default: final)")] = None,
                config: Annotated[str | None, typer.Option(help="config for models and the judge (default: the "
                                                           "first run's, else the demo)")] = None,
                overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE on that config")] = None,
                out: Annotated[str | None, typer.Option(help="folder for comparison.json/.md/.png")] = None) -> None:
    """One table and one plot over runs and models on the same held-out queries (win rates with a judge)."""
    from .compare import compare, markdown_table

    _setup_logging(False)
    targets = list(targets or [])
    if job:
        from ..arms import load_job, run_arms

        targets = run_arms(load_job(job), [], _say) + targets
    if not targets:
        raise UserError("compare: name runs or models, or a comparison job with --job")
    doc, paths = compare(targets, baseline=baseline, iteration=iteration, config=config,
                         overrides=list(overrides or []), out=out, progress=_say)
    print(markdown_table(doc))
    print("written: " + ", ".join(str(p) for p in paths.values()))


@app.command("judge")
def judge_cmd(a: Annotated[str, typer.Argument(help="the candidate: a responses file (.jsonl, or a SAMI reference "
                                               ".json), a run (folder or URI) or a model")],
              b: Annotated[str, typer.Argument(help="the baseline, as A")],
              job: Annotated[str | None, typer.Option(help="run config for the judge and, for models, the held-out "
                                                       "queries and constitutions (default: the first run's "
                                                       "config, else the demo)")] = None,
              out: Annotated[str | None, typer.Option(help="the result's JSON file; the raw judgments go beside it "
                                                       "(.judgments.jsonl), and a model's answers too")] = None
              ) -> None:
    """Win rate of A over B with the configured judge (both orders, ties, unparsed, lengths, length-controlled)."""
    from .judge import format_result, judge_targets

    _setup_logging(False)
    doc, paths = judge_targets(a, b, job=job, out=out, progress=_say)
    print(format_result(doc))
    print("written: " + ", ".join(str(p) for p in paths.values()))


@app.command("answers")
def answers_cmd(target: Annotated[str, typer.Argument(help="a model (folder, builtin:NAME, hub id, s3://), a run "
                                                      "or a responses file")],
                job: Annotated[str | None, typer.Option(help="run config: held-out queries, constitutions, "
                                                         "sampling (default: the run's config, else the demo)")] = None,
                out: Annotated[str, typer.Option(help="the responses file to write")] = "answers.jsonl") -> None:
    """Write a target's answers to the held-out queries as a responses file (for evaluation.judge.baseline)."""
    from .judge import write_answers

    _setup_logging(False)
    print(f"written: {write_answers(target, job=job, out=out, progress=_say)}")


@app.command()
def serve(checkpoint: Annotated[str, typer.Argument(help="a model folder, builtin:NAME or a run URI")],
          config: Annotated[str | None, typer.Option()] = None, overrides: Overrides = None,
          port: int = 8000, host: str = "127.0.0.1", replicas: int | None = None, blocking: bool = True) -> None:
    """Serve a checkpoint with OpenAI-style completions and chat completions (Ray Serve + vLLM)."""
    from .serve import serve_checkpoint

    _setup_logging(False)
    serve_checkpoint(checkpoint, config, list(overrides or []), host=host, port=port, replicas=replicas,
                     blocking=blocking)


@app.command()
def plan(config: ConfigArg = None, overrides: Overrides = None,
         as_json: Annotated[bool, typer.Option("--json", help="per role: GPUs, GiB per GPU by component (and "
                                                         "per worker in CPU memory where offloaded), fits")] = False
         ) -> None:
    """GPUs and per-GPU memory the config needs, counted as DeepSpeed and vLLM allocate it; exits 1 when the cluster
    cannot fit it."""
    from .plan import plan_run

    path, rest = _split_config_and_overrides(config, overrides)
    p = plan_run(load_config(path or str(demo_config_path()), rest))
    print(json.dumps(p.to_dict(), indent=2) if as_json else p.table())
    if not p.fits:
        raise typer.Exit(1)


def _scratch_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="sami-ray-principles-")


def main() -> None:
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if logs.log_path() is not None:
            print(f"(the run's log: {logs.log_path()})", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if logs.log_path() is not None:  # the traceback follows; the log has what led to it
            print(f"(the run's log: {logs.log_path()})", file=sys.stderr)
        raise
    except SystemExit as e:  # e.g. Ray Train ends the process on Ctrl-C, its reason in the log
        if e.code not in (0, None) and logs.log_path() is not None:
            print(f"stopped; the run's log: {logs.log_path()}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("interrupted; continue with `sami-ray resume RUN_URI`", file=sys.stderr)
        sys.exit(130)
