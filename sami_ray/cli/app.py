"""`sami-ray run | resume | status | principles | eval | serve | plan`.

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

from ..config import demo_config_path, load_config
from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SAMI on Ray: write principles, sample, train with the SAMI loss, evaluate, iterate.")

ConfigArg = Annotated[str | None, typer.Argument(help="run config YAML (default: the embedded demo)")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. trainer.lr=1e-6")]


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


@app.command()
def run(config: ConfigArg = None, overrides: Overrides = None,
        run_id: Annotated[str | None, typer.Option(help="name of the run folder (default: NAME-TIMESTAMP)")] = None,
        verbose: bool = False) -> None:
    """Start a new run (with no config: the embedded demo on this machine)."""
    from ..driver import Run
    from .report import print_summary

    _setup_logging(verbose)
    path, rest = _split_config_and_overrides(config, overrides)
    cfg = load_config(path or str(demo_config_path()), rest)  # overrides alone tweak the embedded demo
    r = Run.start(cfg, run_id=run_id, progress=_say)
    _say(f"run: {r.store.uri}")
    summary = r.execute()
    print_summary(summary)


@app.command()
def resume(run_uri: str, verbose: bool = False) -> None:
    """Continue a run from its last committed stage."""
    from ..driver import Run
    from .report import print_summary

    _setup_logging(verbose)
    r = Run.resume(run_uri, progress=_say)
    _say(f"resuming {r.store.uri}")
    print_summary(r.execute())


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
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """GPUs and per-GPU memory the config needs; exits 1 when the cluster cannot fit it."""
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
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; continue with `sami-ray resume RUN_URI`", file=sys.stderr)
        sys.exit(130)
