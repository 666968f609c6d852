"""The principle writer as a Ray actor: the engine lives in the actor's process (and on its GPUs).

The logic (prompts, checks, retries) is `PrincipleWriterCore` in sami_ray/sami/writer.py; `start_writer` starts a
`PrincipleWriter` under a name the dashboard shows.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import ray

from ..config import EngineOptions, RoleResources
from ..errors import UserError
from ..sami.constitutions import Principle, PrincipleSet
from ..sami.prompts import chat_tokenizer_for
from ..sami.writer import PrincipleWriterCore
from .placement import on_this_node

__all__ = ["PrincipleWriter", "PrincipleWriterCore", "start_writer"]

log = logging.getLogger(__name__)


@ray.remote
class PrincipleWriter:
    """The writer as a Ray actor: the engine lives in the actor's process (and on its GPUs)."""

    def __init__(self, model: str, engine_options: EngineOptions, backend: str = "vllm",
                 chat_template: str = "auto", gguf_file: str | None = None, storage: object = None,
                 options: dict | None = None) -> None:
        from ..engines import make_engine
        from ..models import resolve_model_path

        # The model is resolved here, on the writer's node (its own cache), never on the driver's disk.
        try:
            path = resolve_model_path(model, gguf_file, storage=storage)
        except UserError as e:
            raise on_this_node("principle writer", e) from None
        engine = make_engine(str(path), backend, engine_options)
        # Both backends hold the model's tokenizer; prompts go through its chat template per models.writer.
        self.core = PrincipleWriterCore(engine, chat_tokenizer_for(chat_template, engine.tokenizer,
                                                                   "models.writer.chat_template"), **(options or {}))

    def ready(self) -> bool:
        return True

    def write(self, description: str, seeds: list[Principle], k: int, *, fallback_to_seeds: bool = False,
              retries: int | None = None, seed: int = 0) -> PrincipleSet:
        return self.core.write(description, seeds, k, fallback_to_seeds=fallback_to_seeds, retries=retries,
                               seed=seed)


def start_writer(model: str, engine_options: EngineOptions, resources: RoleResources,
                 runtime_env: dict | None = None, backend: str = "vllm", name: str | None = None,
                 chat_template: str = "auto", gguf_file: str | None = None, storage: object = None,
                 options: dict | None = None) -> Any:
    """A PrincipleWriter actor named 'sami-writer-<6 hex>' (visible in the dashboard) on the writer's resources,
    custom resources included; it resolves `model` on its own node, and its prompts go through the model's chat
    template per `chat_template`. `options` are PrincipleWriterCore's settings (writer.candidates, ...)."""
    name = name or f"sami-writer-{secrets.token_hex(3)}"
    opts: dict[str, Any] = {"name": name, "num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.custom:
        opts["resources"] = dict(resources.custom)
    if runtime_env:
        opts["runtime_env"] = runtime_env
    log.info("starting principle writer %s on %s (%s)", name, model, backend)
    extra = {"options": options} if options else {}  # the core's defaults otherwise
    return PrincipleWriter.options(**opts).remote(model, engine_options, backend, chat_template, gguf_file, storage,
                                                  **extra)
