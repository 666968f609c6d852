"""The `ray job submit` entrypoint: `python jobs/entrypoint.py CONFIG [key=value ...] [--run-id ID]`.

Runs exactly what `sami-ray run CONFIG ...` runs (same parser, same error handling, same exit codes), e.g.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/entrypoint.py jobs/weak_to_strong_mixtral.yaml task.queries.source=/data/hh/train.jsonl
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _use_this_checkout() -> None:
    """Import sami_ray from the submitted working directory when it carries one, before any installed copy."""
    if (REPO_ROOT / "sami_ray" / "__init__.py").is_file() and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # A job's runtime_env env_vars are already in this process's environment; the driver hands the same keys to
    # ray.init(runtime_env=...), which Ray refuses as a conflict unless told that the driver's values may win.
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _use_this_checkout()
    from sami_ray.cli import main as cli_main

    sys.argv = ["sami-ray", "run", *args]
    cli_main()


if __name__ == "__main__":  # vLLM's CPU platform spawns processes: the import must not re-run the job
    main()
