"""Generation backends behind one protocol (see base.py)."""

from __future__ import annotations

from ..config import EngineOptions
from .base import Engine, Generation, SamplingSpec

__all__ = ["Engine", "Generation", "SamplingSpec", "make_engine"]


def make_engine(model_path: str, backend: str = "vllm", options: EngineOptions | None = None) -> Engine:
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, options)
    if backend == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model_path, options)
    raise ValueError(f"sampler.backend: unknown engine backend {backend!r} (choose vllm or hf)")
