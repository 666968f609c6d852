"""The driver's entry to training: launch a Ray Train worker group, collect its metrics, fetch the exported model.

The exported model travels back through the run's checkpoint storage (the last checkpoint rank 0 reports), so
it reaches the driver's `output_dir` wherever the workers ran.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_folder
from ..config import RoleResources, TrainerConfig
from ..errors import DataError, UserError
from ..sami.data import load_examples
from . import checkpoint as ckpt


@dataclass
class TrainResult:
    model_dir: str  # HF safetensors folder: config, tokenizer, model.safetensors
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per report, in step order
    summary: dict[str, Any] = field(default_factory=dict)


class _MetricsSink:
    """Collects rank 0's reports; a restarted group re-reports some steps, the latest report of a step wins."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, Any]] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        self.by_step[int(metrics["step"])] = metrics

    def all(self) -> list[dict[str, Any]]:
        return [self.by_step[k] for k in sorted(self.by_step)]


def _read_examples(path: str) -> list[dict[str, Any]]:
    examples = load_examples(path)
    if not examples:
        raise DataError(f"{path}: no SAMI examples to train on")
    n = examples[0].n
    for k, ex in enumerate(examples, 1):
        if ex.n < 2:
            raise DataError(f"{path}: example {k} (query {ex.query.id}) has {ex.n} constitutions; SAMI needs N >= 2")
        if ex.n != n:
            raise DataError(f"{path}: example {k} has N = {ex.n}, but example 1 has N = {n}; a run trains one N")
        if len(ex.prompts) != ex.n:
            raise DataError(f"{path}: example {k} (query {ex.query.id}) needs one rendered prompt per constitution")
        if any(not r.strip() for r in ex.responses):
            raise DataError(f"{path}: example {k} (query {ex.query.id}) has an empty response")
    return [ex.to_dict() for ex in examples]


HEAD_NODE = "node:__internal_head__"  # a resource only the head node has


def _fit(trainer: Any) -> Any:
    """`trainer.fit()`, where a user's mistake found on a worker (a model that cannot be had, bad data) ends as
    that one UserError, naming the worker, instead of a worker group's traceback."""
    from ray.train import WorkerGroupError

    try:
        return trainer.fit()
    except WorkerGroupError as e:
        mistakes = {rank: err for rank, err in e.worker_failures.items() if isinstance(err, UserError)}
        if not mistakes:
            raise
        rank, err = min(mistakes.items())
        raise UserError(f"trainer worker {rank}: {err}") from None


def train(examples_path: str, init_model_path: str, ref_model_path: str | None, trainer_cfg: TrainerConfig,
          output_dir: str, storage_path: str, storage_filesystem: Any = None, run_name: str = "train",
          resources: RoleResources | None = None, seed: int = 0,
          max_prompt_tokens: int | None = None, *, init_gguf_file: str | None = None,
          ref_gguf_file: str | None = None, model_storage: Any = None) -> TrainResult:
    """Train on the SAMI examples in `examples_path` and export the result to `output_dir`; training prompts
    longer than `max_prompt_tokens` are cut from the left (task.max_prompt_tokens).

    The init and reference models are anything `models.resolve_model_path` takes (a folder, builtin:, a hub id,
    an s3:// folder such as a committed model stage): every worker resolves them on its own node, reaching S3
    with `model_storage` (a StorageConfig; None: the standard AWS chain)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..actors.placement import bundle, require_custom
    from .worker import train_loop

    resources = resources or RoleResources()
    rows = _read_examples(examples_path)
    if trainer_cfg.beta > 0 and ref_model_path is None:
        raise UserError("trainer.beta > 0 needs a reference model (the run's initial model)")
    use_gpu = resources.num_gpus > 0
    per_worker = bundle(resources)  # CPUs, GPUs and the custom resources (resources.trainer.custom) of one worker

    # The sink lives on the head node, which lives as long as the cluster: a lost worker node (a sampler's) must not
    # take the training's metrics with it.
    sink = ray.remote(num_cpus=0)(_MetricsSink).options(resources={HEAD_NODE: 0.001}).remote()
    config = {
        "trainer": trainer_cfg.model_dump(mode="json"), "examples": rows, "init_model_path": str(init_model_path),
        "ref_model_path": str(ref_model_path) if ref_model_path else None, "seed": seed, "use_gpu": use_gpu,
        "num_cpus": resources.num_cpus, "metrics_sink": sink, "max_prompt_tokens": max_prompt_tokens,
        "init_gguf_file": init_gguf_file, "ref_gguf_file": ref_gguf_file, "model_storage": model_storage,
    }
    if storage_filesystem is None and "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # Ray Train wants an absolute local path
    timeout_s = trainer_cfg.collective_timeout_min * 60
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=trainer_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=timeout_s),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             failure_config=FailureConfig(max_failures=trainer_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    t0 = time.perf_counter()
    try:
        require_custom("trainer", resources, trainer_cfg.num_workers)  # Ray Train would wait for them forever
        result = _fit(trainer)
        metrics = ray.get(sink.all.remote())
    finally:
        ray.kill(sink)
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError("training finished without reporting the exported model")
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The checkpoint is fetched beside `out` (one file system), so its model's files move into place by renames.
    with tempfile.TemporaryDirectory(prefix=out.name + ".", dir=out.parent, ignore_cleanup_errors=True) as scratch:
        fetched = Path(result.checkpoint.to_directory(str(Path(scratch) / "ckpt")))
        if not ckpt.is_export(fetched):
            raise RuntimeError(f"the last checkpoint {result.checkpoint.path} is not an exported model")
        exported = json.loads((fetched / ckpt.EXPORT_MARKER).read_text())
        with atomic_folder(out) as tmp:  # the folder appears whole or not at all
            for entry in (fetched / "model").iterdir():
                os.replace(entry, tmp / entry.name)
    last = next((m for m in reversed(metrics) if "loss" in m), {})
    summary = {**exported, "wall_s": wall, "reports": len(metrics),
               **{k: last[k] for k in ("loss", "mi_bound", "row_accuracy", "col_accuracy", "kl") if k in last}}
    return TrainResult(str(out), metrics, summary)
