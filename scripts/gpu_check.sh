#!/usr/bin/env bash
# The GPU check (docs/GPU_CHECK.md): the SAMI step on as large a Mixtral-shaped model as one GPU holds, shared-prefix
# against reference, and one DeepSpeed ZeRO-3 step; one table. Needs only torch and transformers.
#
#   scripts/gpu_check.sh [--small] [options]   run it (options: scripts/gpu_check.sh --help)
#   scripts/gpu_check.sh --wheels              here, with the package index: DeepSpeed and the requirements a bare
#                                              GPU machine may lack, as Python 3.12 wheels in .gpu_wheels/ (carry it)
#
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3); GPU_CHECK_WHEELS the wheel
# folder; DEEPSPEED_VERSION (default: the one installed here) and WHEEL_PYTHON (default 3.12) shape --wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.gpu_wheels}"

if [[ "${1:-}" == "--wheels" ]]; then
  ds_version="${DEEPSPEED_VERSION:-$("$PY" -c 'from importlib.metadata import version; print(version("deepspeed"))')}"
  wheel_py="${WHEEL_PYTHON:-3.12}"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  # PyPI has only DeepSpeed's sdist; built here it is a pure-Python wheel (its ops compile on demand; none is used).
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation "deepspeed==$ds_version" -w "$WHEELS"
  # Its requirements, less torch and numpy (any machine with torch and transformers has both; numpy is 16 MB).
  mapfile -t reqs < <("$PY" - "$WHEELS"/deepspeed-*.whl <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and ";" not in line:
            req = line.split(":", 1)[1].strip()
            if re.split(r"[<>=!~ ]", req)[0].lower() not in ("torch", "numpy"):
                print(req)
EOF
  )
  "$PY" -m pip download --quiet --only-binary=:all: --python-version "$wheel_py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${reqs[@]}"
  ls -l "$WHEELS"
  du -sh "$WHEELS"
  exit 0
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Big models leave the caching allocator fragmented; expandable segments let a freed model's memory be reused.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
exec "$PY" benchmarks/gpu_check.py --wheels "$WHEELS" "$@"
