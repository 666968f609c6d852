"""The run's roles (principle writer, policy sampler pool, judge, trainer), each built from its own spec.

A role is started on first use and shut down with the others; no role borrows another's options: the spec of
each says which model, engine options, backend and resources it gets. The stage loop talks to roles only through
`Roles` (tests hand it fakes of the same shape), and every generator it gets back has the one generation shape of
the engines: `generate(prompts, spec, seeds) -> list[list[Generation]]` and `score(prompts, responses)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EngineOptions, ModelSpec, RoleResources, RunConfig, SamplerConfig
from .errors import UserError
from .models import resolve_model_path
from .runtime import ensure_ray, runtime_env
from .sami.constitutions import Principle, PrincipleSet
from .sami.prompts import chat_tokenizer_for, render_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSpec:
    """What one role runs: its model, its generation settings and engine, and where it is placed."""

    name: str
    model: ModelSpec
    sampler: SamplerConfig  # backend, replicas, batching and retries, with this role's own engine options
    resources: RoleResources

    @property
    def engine(self) -> EngineOptions:
        return self.sampler.engine

    def model_path(self, storage: Any = None) -> Path:
        """The role's model as a folder on this node (fetched into its cache where it is remote)."""
        return resolve_model_path(self.model.path, self.model.gguf_file, storage=storage)

    def same_model(self, other: RoleSpec) -> bool:
        """Whether both roles name the same model (then the writer runs on the policy's pool)."""
        return (self.model.path, self.model.gguf_file) == (other.model.path, other.model.gguf_file)


def role_specs(cfg: RunConfig) -> dict[str, RoleSpec]:
    """The spec of every configured role: 'policy' always; 'writer', 'judge' and 'sampler' (models.sampler, the
    model that samples the training data) when their models are set.

    Each role has its own model spec, engine options (resolved when the config loaded: `RunConfig.role_engine`)
    and resources; the writer and the judge run one engine each. Needs no Ray: `plan` reads the same specs.
    """
    specs: dict[str, RoleSpec] = {}
    for role in ("policy", "writer", "judge", "sampler"):
        model = cfg.role_model(role)
        if model is None:
            continue
        update: dict[str, Any] = {"engine": cfg.role_engine(role)}
        if role not in ("policy", "sampler"):  # the sampler model takes the policy pool's place, replicas and all
            update["replicas"] = 1
        specs[role] = RoleSpec(role, model, cfg.sampler.model_copy(update=update), cfg.role_resources(role))
    return specs


def writes_principles(cfg: RunConfig) -> bool:
    """Whether a writer model writes (or rephrases) the principles."""
    return cfg.models.writer is not None and cfg.constitutions.write_with_writer


def engine_roles(cfg: RunConfig) -> list[RoleSpec]:
    """The roles that start engines of their own in a run: the policy's sampler pool; models.sampler when it differs
    from the policy (on the pool's GPUs, in turn with the policy: `Roles.sampler`); the writer when it writes
    principles on a model other than the policy's and the sampler's (else it runs on that pool); the local judge."""
    specs = role_specs(cfg)
    out = [specs["policy"]]
    pools = [specs["policy"]]
    if "sampler" in specs and not specs["sampler"].same_model(specs["policy"]):
        out.append(specs["sampler"])
        pools.append(specs["sampler"])
    if writes_principles(cfg) and not any(specs["writer"].same_model(p) for p in pools):
        out.append(specs["writer"])
    if cfg.evaluation.judge.kind == "local" and "judge" in specs:
        out.append(specs["judge"])
    return out


class ChatFramed:
    """A generator whose prompts are one user message each, framed by a tokenizer's chat template (the local
    judge's prompts, per models.judge.chat_template); the wrapped pool does the work."""

    def __init__(self, pool: Any, tokenizer: Any):
        self.pool, self.tokenizer = pool, tokenizer

    def frame(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompts: list[str], spec: Any, seeds: list[int] | None = None):
        return self.pool.generate([self.frame(p) for p in prompts], spec, seeds)

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        return self.pool.score([self.frame(p) for p in prompts], responses)

    def shutdown(self) -> None:
        self.pool.shutdown()


class StepProgress:
    """The driver's progress line of a training stage, fed with rank 0's latest step (steps may repeat or go back
    after a worker restart; the bar shows the furthest)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def __call__(self, step: dict[str, Any]) -> None:
        from .progress import Progress

        if self.bar is None:
            self.bar = Progress("training", int(step["total_steps"]), unit="step")
        if step["step"] > self.done:
            figures = {"loss": step["loss"]}
            if step.get("mi_bound") is not None:
                figures["mi"] = step["mi_bound"]
            self.bar.update(step["step"] - self.done, **figures)
            self.done = step["step"]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cores_shared() -> bool:
    """Whether the Ray cluster is this one machine and counts more CPUs than it has cores (the demo's sampler and
    trainer take turns on the same cores). A trainer starting beside the sampling then slows the sampling by more
    than its start saves (bench_demo_train.py on 2 cores: sampling 1.66x to 1.67x, sampling and training together
    1.06x to 1.11x)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) != 1 or nodes[0].get("NodeManagerAddress") != ray.util.get_node_ip_address():
        return False
    return nodes[0].get("Resources", {}).get("CPU", 0.0) > (os.cpu_count() or 1)


class Roles:
    """The Ray-side parts of one run. `timed(name, fn, *args)` reports how long starting each one took."""

    def __init__(self, cfg: RunConfig, timed: Callable[..., Any] | None = None, run_id: str = ""):
        self.cfg, self.run_id = cfg, run_id  # the run id tags the training's dashboard metrics
        self.specs = role_specs(cfg)
        self.timed = timed or (lambda _name, fn, *a, **kw: fn(*a, **kw))
        self._pool = None
        self._pool_model: str | None = None
        self._pool_role = "policy"  # which model the one sampler pool serves: the policy's or models.sampler
        self._judge = None
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._early: tuple[tuple, Any, StepProgress] | None = None  # (train arguments, launch, its progress line)

    # ------------------------------------------------------------ the policy

    def base_model(self) -> Path:
        """The policy's initial weights as a local folder."""
        return self.specs["policy"].model_path(self.cfg.storage)

    def tokenizer_of(self, role: str):
        """The tokenizer of a role's model (loaded once per model; roles on the same model share it)."""
        spec = self.specs[role]
        key = (spec.model.path, spec.model.gguf_file)
        if key not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[key] = AutoTokenizer.from_pretrained(spec.model_path(self.cfg.storage))
        return self._tokenizers[key]

    @property
    def tokenizer(self):
        return self.tokenizer_of("policy")

    def chat_tokenizer(self, role: str = "policy"):
        """The role's tokenizer when its prompts go through its chat template (models.<role>.chat_template)."""
        mode = self.specs[role].model.chat_template
        if mode == "off":
            return None
        return chat_tokenizer_for(mode, self.tokenizer_of(role), f"models.{role}.chat_template")

    def render(self, constitution_text: str, query_text: str, role: str = "policy") -> str:
        """A prompt as `role`'s model sees it (through its own chat template per models.<role>.chat_template)."""
        return render_prompt(self.cfg.task.kind, constitution_text, query_text, self.chat_tokenizer(role))

    def policy(self, model: str | None = None):
        """The sampler pool on `model` (a committed stage's URI or folder; None: the base model), its weights
        synced in place when the model changes. Each replica resolves the model on its own node."""
        from .actors.sampler import SamplerPool
        from .actors.weight_sync import sync

        spec = self.specs["policy"]
        ref = model or spec.model.path
        self._release_pool_unless("policy")
        if self._pool is None:
            ensure_ray(self.cfg.resources)
            self._pool = self.timed("sampler_start", SamplerPool, ref, spec.sampler, spec.resources,
                                    runtime_env=runtime_env(), storage=self.cfg.storage,
                                    gguf_file=None if model else spec.model.gguf_file)
        elif self._pool_model != ref:
            self.timed("weight_sync", sync, self._pool, ref)
        self._pool_model = ref
        return self._pool

    def sampler(self):
        """The generator of the samples stage on models.sampler (fixed in every iteration). The same model as the
        policy's base: the policy's pool on the base weights. Another model: the pool is restarted on it (and on
        the policy again when evaluation asks for it). A restart, not a weight reload: vLLM reloads weights into
        the engine it has, whose tokenizer and architecture the other model need not share. The pool's place
        (resources.sampler, sampler.replicas) is the same, so the two never hold GPUs at once."""
        from .actors.sampler import SamplerPool

        spec = self.specs["sampler"]
        if spec.same_model(self.specs["policy"]):
            return self.policy(None)
        self._release_pool_unless("sampler")
        if self._pool is None:
            ensure_ray(self.cfg.resources)
            self._pool = self.timed("sampler_model_start", SamplerPool, spec.model.path, spec.sampler,
                                    spec.resources, runtime_env=runtime_env(), storage=self.cfg.storage,
                                    gguf_file=spec.model.gguf_file)
            self._pool_role, self._pool_model = "sampler", spec.model.path
        return self._pool

    def _release_pool_unless(self, role: str) -> None:
        """Shut the pool down when it serves the other model (the next call starts it on this role's)."""
        if self._pool is not None and self._pool_role != role:
            self._pool.shutdown()
            self._pool, self._pool_model = None, None
        self._pool_role = role

    def forget_policy_weights(self) -> None:
        """The folder the pool was loaded from is about to hold other weights: reload it on next use."""
        self._pool_model = None

    # ------------------------------------------------------------ the writer

    def write_principles(self, description: str, seeds: list[Principle], seed: int) -> PrincipleSet:
        """The writer rephrases the seed principles (the configured phrasing is kept where it fails); with no
        seeds it writes constitutions.num_principles of its own. Its prompts go through the writer model's chat
        template per models.writer.chat_template."""
        from .sami.writer import PrincipleWriterCore

        spec, w = self.specs["writer"], self.cfg.writer
        k = len(seeds) or self.cfg.constitutions.num_principles
        options = dict(candidates=w.candidates, retries=w.retries, paraphrases=w.paraphrases,
                       temperature=w.temperature)
        pool = None
        if spec.same_model(self.specs["policy"]):
            pool = self.policy(None)
        elif "sampler" in self.specs and spec.same_model(self.specs["sampler"]):
            pool = self.sampler()  # the multi-task paper's instruct model writes the principles and samples
        if pool is not None:
            # The policy's (or the sampler model's) pool is the writer: no second engine starts.
            core = PrincipleWriterCore(pool, self.chat_tokenizer("writer"), **options)
            return core.write(description, seeds, k, fallback_to_seeds=True, seed=seed)
        import ray

        from .actors.writer import start_writer

        ensure_ray(self.cfg.resources)
        writer = start_writer(spec.model.path, spec.engine, spec.resources, runtime_env=runtime_env(),
                              backend=spec.sampler.backend, chat_template=spec.model.chat_template,
                              gguf_file=spec.model.gguf_file, storage=self.cfg.storage, options=options)
        try:
            return ray.get(writer.write.remote(description, seeds, k, fallback_to_seeds=True, seed=seed))
        finally:
            if self.cfg.resources.release_writer:
                ray.kill(writer)

    # ------------------------------------------------------------ the judge

    def judge(self):
        """A sampler pool on models.judge when the evaluation judge is local (None otherwise); its prompts go
        through the judge model's chat template per models.judge.chat_template."""
        if self.cfg.evaluation.judge.kind != "local":
            return None
        if self._judge is None:
            from .actors.sampler import SamplerPool

            spec = self.specs.get("judge")
            if spec is None:
                raise UserError("evaluation.judge.kind is 'local' but models.judge is not set")
            chat = self.chat_tokenizer("judge")  # a tokenizer without the template 'on' asks for fails before start
            ensure_ray(self.cfg.resources)
            pool = self.timed("judge_start", SamplerPool, spec.model.path, spec.sampler, spec.resources,
                              runtime_env=runtime_env(), storage=self.cfg.storage, gguf_file=spec.model.gguf_file,
                              role="judge")
            self._judge = ChatFramed(pool, chat) if chat is not None else pool
        return self._judge

    # ------------------------------------------------------------ the trainer

    def start_training(self, init_model: str | None, storage: tuple[Any, str], seed: int) -> bool:
        """Launch the worker group of the `train` call with these arguments now, before its samples exist
        (trainer.start_early), when the cluster has room for it beside what runs (the sampler pool must be up
        already: the group never takes room the pool is waiting for). Whether it was launched."""
        from .actors.placement import fits_now

        self.cancel_training()
        t = self.cfg.trainer
        if t.start_early == "never":
            return False
        ensure_ray(self.cfg.resources)
        if t.start_early == "auto" and _cores_shared():
            log.info("the trainer starts after sampling: this machine's cores are shared by the sampler and the "
                     "trainer (trainer.start_early: always overrides)")
            return False
        if not fits_now(self.cfg.resources.trainer, t.num_workers):
            log.info("the trainer starts after sampling: the cluster has no room for it beside the sampler pool")
            return False
        progress = StepProgress()
        launch = self._launch(init_model, storage, seed, progress)
        launch.start()
        self._early = ((init_model, storage[1], seed), launch, progress)
        return True

    def cancel_training(self) -> None:
        """End a worker group launched by `start_training` that was not used."""
        if self._early is not None:
            _, launch, progress = self._early
            self._early = None
            try:
                launch.cancel()
            finally:
                progress.close()

    def train(self, examples_path: Path, init_model: str | None, output_dir: Path, storage: tuple[Any, str],
              seed: int):
        """One training stage on the Ray Train worker group, from `init_model` (a committed stage's URI or
        folder; None: the base model); every worker resolves its models on its own node. The exported model
        lands in `output_dir`. The group `start_training` launched for the same arguments trains; else one
        starts now."""
        ensure_ray(self.cfg.resources)
        if self._early is not None and self._early[0] != (init_model, storage[1], seed):
            self.cancel_training()  # launched for another stage
        if self._early is not None:
            _, launch, progress = self._early
            self._early = None
        else:
            progress = StepProgress()
            launch = self._launch(init_model, storage, seed, progress)
        try:
            data = self._training_data(Path(examples_path), Path(output_dir).parent)
            return launch.train_on(str(data), str(output_dir))
        except BaseException:
            launch.cancel()  # a group that never got its examples
            raise
        finally:
            progress.close()

    def _launch(self, init_model: str | None, storage: tuple[Any, str], seed: int, progress: StepProgress):
        from .train import TrainingLaunch

        fs, path = storage
        base = self.specs["policy"].model
        return TrainingLaunch(init_model_path=init_model or base.path, init_gguf_file=None if init_model else
                              base.gguf_file, ref_model_path=base.path if self.cfg.trainer.beta > 0 else None,
                              ref_gguf_file=base.gguf_file, model_storage=self.cfg.storage,
                              trainer_cfg=self.cfg.trainer, storage_path=path, storage_filesystem=fs,
                              run_name="train", resources=self.cfg.resources.trainer, seed=seed,
                              max_prompt_tokens=self.cfg.task.max_prompt_tokens, run_id=self.run_id,
                              on_step=progress)

    def _training_data(self, examples_path: Path, folder: Path) -> Path:
        """What the configured objective trains on: SAMI the samples; DPO and SFT (prompt, responses) pairs, from
        the user's trainer.pairs_file or made from the samples (constitution-contrast pairs for DPO, the answers
        under all the principles without the constitution in the prompt for SFT), written to `folder`."""
        from .errors import DataError
        from .sami import pairs
        from .sami.data import load_examples

        t = self.cfg.trainer
        if t.objective == "sami":
            return examples_path
        if t.pairs_file:
            read = pairs.read_preferences if t.objective == "dpo" else pairs.read_demonstrations
            got = read(t.pairs_file, tokenizer=self.tokenizer_of("policy"),
                       max_prompt_tokens=self.cfg.task.max_prompt_tokens, skip_bad=t.skip_bad)
            source = t.pairs_file
        elif t.objective == "dpo":
            got, source = pairs.contrast_pairs(load_examples(examples_path)), "the samples"
        else:
            render = pairs.plain_renderer(self.cfg.task.kind, self.chat_tokenizer())
            got, source = pairs.distillation_pairs(load_examples(examples_path), render), "the samples"
        if got.skipped:
            log.warning("%s: %d rows left out (%s)", source, got.skipped, "; ".join(got.problems[:3]))
        if not got.pairs:
            raise DataError(f"{source}: no pairs for trainer.objective = {t.objective}")
        out = folder / f"{t.objective}-pairs.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        pairs.write_pairs(out, got.pairs)
        return out

    # ------------------------------------------------------------ lifetime

    def shutdown(self) -> None:
        self.cancel_training()
        for pool in (self._pool, self._judge):
            if pool is not None:
                pool.shutdown()
        self._pool = self._judge = None
        self._pool_model = None
        self._pool_role = "policy"

