"""The run's roles (principle writer, policy sampler pool, judge, trainer), each built from its own spec.

A role is started on first use and shut down with the others; no role borrows another's options: the spec of
each says which model, engine options, backend and resources it gets. The stage loop talks to roles only through
`Roles` (tests hand it fakes of the same shape), and every generator it gets back has the one generation shape of
the engines: `generate(prompts, spec, seeds) -> list[list[Generation]]` and `score(prompts, responses)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EngineOptions, ModelSpec, RoleResources, RunConfig, SamplerConfig
from .errors import UserError
from .models import resolve_model_path
from .runtime import ensure_ray, runtime_env
from .sami.constitutions import Principle, PrincipleSet
from .sami.prompts import has_chat_template, render_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSpec:
    """What one role runs: its model, its generation settings and engine, and where it is placed."""

    name: str
    model: ModelSpec
    sampler: SamplerConfig  # backend, replicas, batching, stop strings and engine options of this role
    resources: RoleResources

    @property
    def engine(self) -> EngineOptions:
        return self.sampler.engine

    def model_path(self) -> Path:
        return resolve_model_path(self.model.path, self.model.gguf_file)


def role_specs(cfg: RunConfig) -> dict[str, RoleSpec]:
    """The spec of every configured role: 'policy' always, 'writer' and 'judge' when their models are set."""
    specs = {"policy": RoleSpec("policy", cfg.models.policy, cfg.sampler, cfg.resources.sampler)}
    if cfg.models.writer is not None:
        specs["writer"] = RoleSpec("writer", cfg.models.writer, cfg.sampler.model_copy(update={"replicas": 1}),
                                   cfg.resources.writer)
    if cfg.models.judge is not None:
        specs["judge"] = RoleSpec("judge", cfg.models.judge, cfg.sampler.model_copy(update={"replicas": 1}),
                                  cfg.resources.sampler)
    return specs


class Roles:
    """The Ray-side parts of one run. `timed(name, fn, *args)` reports how long starting each one took."""

    def __init__(self, cfg: RunConfig, timed: Callable[..., Any] | None = None):
        self.cfg = cfg
        self.specs = role_specs(cfg)
        self.timed = timed or (lambda _name, fn, *a, **kw: fn(*a, **kw))
        self._pool = None
        self._pool_model: str | None = None
        self._judge = None
        self._tokenizer = None

    # ------------------------------------------------------------ the policy

    def base_model(self) -> Path:
        """The policy's initial weights as a local folder."""
        return self.specs["policy"].model_path()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.base_model())
        return self._tokenizer

    def chat_tokenizer(self):
        """The policy's tokenizer when prompts go through its chat template, else None."""
        mode = self.specs["policy"].model.chat_template
        if mode == "off":
            return None
        if mode == "on" or has_chat_template(self.tokenizer):
            return self.tokenizer
        return None

    def render(self, constitution_text: str, query_text: str) -> str:
        return render_prompt(self.cfg.task.kind, constitution_text, query_text, self.chat_tokenizer())

    def policy(self, model_folder: Path | None = None):
        """The sampler pool on the weights in `model_folder` (None: the base model), synced in place on change."""
        from .actors.sampler import SamplerPool
        from .actors.weight_sync import sync

        spec = self.specs["policy"]
        path = str(model_folder or self.base_model())
        if self._pool is None:
            ensure_ray(self.cfg.resources)
            self._pool = self.timed("sampler_start", SamplerPool, path, spec.sampler, spec.resources,
                                    runtime_env=runtime_env())
        elif self._pool_model != path:
            self.timed("weight_sync", sync, self._pool, path)
        self._pool_model = path
        return self._pool

    def forget_policy_weights(self) -> None:
        """The folder the pool was loaded from is about to hold other weights: reload it on next use."""
        self._pool_model = None

    # ------------------------------------------------------------ the writer

    def write_principles(self, description: str, seeds: list[Principle], seed: int) -> PrincipleSet:
        """The writer rephrases the seed principles (the configured phrasing is kept where it fails)."""
        from .sami.writer import PrincipleWriterCore

        spec = self.specs["writer"]
        if spec.model_path() == self.base_model():
            # The policy writes its own principles: its sampler pool is the writer, no second engine starts.
            core = PrincipleWriterCore(self.policy(None), self.chat_tokenizer())
            return core.write(description, seeds, len(seeds), fallback_to_seeds=True, seed=seed)
        import ray

        from .actors.writer import start_writer

        ensure_ray(self.cfg.resources)
        writer = start_writer(str(spec.model_path()), spec.engine, spec.resources, runtime_env=runtime_env(),
                              backend=spec.sampler.backend)
        try:
            return ray.get(writer.write.remote(description, seeds, len(seeds), fallback_to_seeds=True, seed=seed))
        finally:
            if self.cfg.resources.release_writer:
                ray.kill(writer)

    # ------------------------------------------------------------ the judge

    def judge(self):
        """A sampler pool on models.judge when the evaluation judge is local (None otherwise)."""
        if self.cfg.evaluation.judge.kind != "local":
            return None
        if self._judge is None:
            from .actors.sampler import SamplerPool

            spec = self.specs.get("judge")
            if spec is None:
                raise UserError("evaluation.judge.kind is 'local' but models.judge is not set")
            ensure_ray(self.cfg.resources)
            self._judge = self.timed("judge_start", SamplerPool, str(spec.model_path()), spec.sampler,
                                     spec.resources, runtime_env=runtime_env())
        return self._judge

    # ------------------------------------------------------------ the trainer

    def train(self, examples_path: Path, init_model: Path, output_dir: Path, storage: tuple[Any, str],
              seed: int):
        """One training stage on the Ray Train worker group; the exported model lands in `output_dir`."""
        from .train import train

        ensure_ray(self.cfg.resources)
        fs, path = storage
        ref = str(self.base_model()) if self.cfg.trainer.beta > 0 else None
        return train(examples_path=str(examples_path), init_model_path=str(init_model), ref_model_path=ref,
                     trainer_cfg=self.cfg.trainer, output_dir=str(output_dir), storage_path=path,
                     storage_filesystem=fs, run_name="train", resources=self.cfg.resources.trainer, seed=seed)

    # ------------------------------------------------------------ lifetime

    def shutdown(self) -> None:
        for pool in (self._pool, self._judge):
            if pool is not None:
                pool.shutdown()
        self._pool = self._judge = None
        self._pool_model = None

