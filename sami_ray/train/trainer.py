"""The driver's entry to training: launch a Ray Train worker group, collect its metrics, fetch the exported model.

The examples reach the workers as a Ray Data dataset read from the samples file on the driver's node (a run of
100,000 queries is never one task argument); every worker keeps and tokenises only its own shard (data_stream).
Rank 0 streams each step's statistics to a metrics actor that the driver polls for its progress line. The exported
model travels back through the run's checkpoint storage (the last checkpoint rank 0 reports), so it reaches the
driver's `output_dir` wherever the workers ran.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_folder, link_or_copy_tree
from ..config import RoleResources, TrainerConfig
from ..errors import DataError, UserError
from ..sami.data import SamiExample, read_jsonl
from . import checkpoint as ckpt


@dataclass
class TrainResult:
    model_dir: str  # HF safetensors folder: config, tokenizer, model.safetensors
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per report, in step order
    summary: dict[str, Any] = field(default_factory=dict)


class _MetricsSink:
    """Rank 0's per-step statistics and its reports. A restarted group re-sends some steps; the latest one wins."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, Any]] = {}
        self.last_step: dict[str, Any] | None = None

    def add(self, metrics: dict[str, Any]) -> None:
        self.by_step[int(metrics["step"])] = metrics

    def add_step(self, stats: dict[str, Any]) -> None:
        self.last_step = stats

    def latest_step(self) -> dict[str, Any] | None:
        return self.last_step

    def all(self) -> list[dict[str, Any]]:
        return [self.by_step[k] for k in sorted(self.by_step)]


def _check_examples(path: str) -> int:
    """Validate the samples file line by line, keeping nothing, and return its number of examples (the workers
    read their own shards of it)."""
    count, n = 0, None
    for k, row in enumerate(read_jsonl(path), 1):
        try:
            ex = SamiExample.from_dict(row)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: example {k} is not a SAMI example ({e})") from None
        if ex.n < 2:
            raise DataError(f"{path}: example {k} (query {ex.query.id}) has {ex.n} constitutions; SAMI needs N >= 2")
        n = ex.n if n is None else n
        if ex.n != n:
            raise DataError(f"{path}: example {k} has N = {ex.n}, but example 1 has N = {n}; a run trains one N")
        if len(ex.prompts) != ex.n:
            raise DataError(f"{path}: example {k} (query {ex.query.id}) needs one rendered prompt per constitution")
        if any(not r.strip() for r in ex.responses):
            raise DataError(f"{path}: example {k} (query {ex.query.id}) has an empty response")
        count = k
    if not count:
        raise DataError(f"{path}: no SAMI examples to train on")
    return count


def _check_pairs(path: str) -> int:
    """Validate a (prompt, responses) pairs file of DPO or SFT line by line and return its number of rows."""
    from ..sami.pairs import TextPair

    count = 0
    for k, row in enumerate(read_jsonl(path), 1):
        try:
            TextPair.from_dict(row, f"{path}, line {k}")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}, line {k}: not a (prompt, responses) pair ({e})") from None
        count = k
    if not count:
        raise DataError(f"{path}: no pairs to train on")
    return count


def _examples_dataset(path: str) -> Any:
    """The samples file as a Ray Data dataset of its lines, read on the driver's node: the file is on the driver's
    disk, which other nodes need not share."""
    import ray
    import ray.data

    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # a label every Ray node carries
    # No CPU for the read: the worker group holds the CPUs it asked for, and a read waiting for one of them would
    # wait for ever (reading a text file needs next to none).
    ds = ray.data.read_text(os.path.abspath(path), num_cpus=0, label_selector=here)
    ds.context.enable_progress_bars = False  # one file, read once per worker: a bar would only flood the log
    return ds


def _data_config() -> Any:
    """Every worker streams the lines in file order and keeps its own positions (`data_stream.owns`): a split made
    by Ray Data is not sure to give a restarted group the same shards, and resume relies on them."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


class _StepWatcher:
    """Polls the metrics actor while the worker group trains and hands each new step to `on_step`."""

    def __init__(self, sink: Any, on_step: Callable[[dict[str, Any]], None] | None, every_s: float = 1.0):
        self.sink, self.on_step, self.every_s = sink, on_step, every_s
        self._stop = threading.Event()
        self._seen: int | None = None
        self._thread = threading.Thread(target=self._run, name="sami-train-steps", daemon=True)

    def __enter__(self) -> _StepWatcher:
        if self.on_step is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.on_step is not None:
            self._stop.set()
            self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._poll()
        self._poll()  # the last steps

    def _poll(self) -> None:
        import ray

        try:
            latest = ray.get(self.sink.latest_step.remote(), timeout=10)
            if latest is not None and latest["step"] != self._seen:
                self._seen = latest["step"]
                self.on_step(latest)  # type: ignore[misc]
        except Exception:  # a progress line must never break training
            return


def _fetch_checkpoint(checkpoint: Any, dest: Path) -> Path:
    """The checkpoint's files under `dest`: linked where it is a folder on this machine (it stays whole for a
    resume), downloaded otherwise."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and os.path.isdir(checkpoint.path):
        return link_or_copy_tree(checkpoint.path, dest)
    return Path(checkpoint.to_directory(str(dest)))


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
          ref_gguf_file: str | None = None, model_storage: Any = None, run_id: str = "",
          on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train on `examples_path` and export the result to `output_dir`: SAMI examples (trainer.objective sami), or
    a pairs file (`sami.pairs`: prompt with chosen and rejected for dpo, prompt and completion for sft). Training
    prompts longer than `max_prompt_tokens` are cut from the left (task.max_prompt_tokens).

    The init and reference models are anything `models.resolve_model_path` takes (a folder, builtin:, a hub id,
    an s3:// folder such as a committed model stage): every worker resolves them on its own node, reaching S3
    with `model_storage` (a StorageConfig; None: the standard AWS chain). Each optimizer step's statistics go to the
    dashboard (tagged with `run_id`), to the workers' log, and to `on_step` on the driver."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..actors.placement import bundle, require_custom
    from .worker import train_loop

    resources = resources or RoleResources()
    sami = trainer_cfg.objective == "sami"
    num_examples = _check_examples(examples_path) if sami else _check_pairs(examples_path)
    if sami and trainer_cfg.beta > 0 and ref_model_path is None:
        raise UserError("trainer.beta > 0 needs a reference model (the run's initial model)")
    if trainer_cfg.objective == "dpo" and ref_model_path is None:
        ref_model_path, ref_gguf_file = init_model_path, init_gguf_file  # DPO's reference: where training starts
    use_gpu = resources.num_gpus > 0
    per_worker = bundle(resources)  # CPUs, GPUs and the custom resources (resources.trainer.custom) of one worker

    # The sink lives on the head node, which lives as long as the cluster: a lost worker node (a sampler's) must not
    # take the training's metrics with it.
    sink = ray.remote(num_cpus=0)(_MetricsSink).options(resources={HEAD_NODE: 0.001}).remote()
    config = {
        "trainer": trainer_cfg.model_dump(mode="json"), "num_examples": num_examples, "run_id": run_id,
        "init_model_path": str(init_model_path),
        "ref_model_path": str(ref_model_path) if ref_model_path else None, "seed": seed, "use_gpu": use_gpu,
        "num_cpus": resources.num_cpus, "metrics_sink": sink, "max_prompt_tokens": max_prompt_tokens,
        "init_gguf_file": init_gguf_file, "ref_gguf_file": ref_gguf_file, "model_storage": model_storage,
    }
    if storage_filesystem is None and "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # Ray Train wants an absolute local path
        config["local_storage"] = os.path.join(storage_path, run_name)  # checkpoints are linked there, not copied
    timeout_s = trainer_cfg.collective_timeout_min * 60
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        datasets={"train": _examples_dataset(examples_path)},
        dataset_config=_data_config(),
        scaling_config=ScalingConfig(num_workers=trainer_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=timeout_s),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             failure_config=FailureConfig(max_failures=trainer_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    t0, t0_wall = time.perf_counter(), time.time()
    try:
        require_custom("trainer", resources, trainer_cfg.num_workers)  # Ray Train would wait for them forever
        with _StepWatcher(sink, on_step):
            result = _fit(trainer)
        metrics = ray.get(sink.all.remote())
    finally:
        ray.kill(sink)
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError("training finished without reporting the exported model")
    t_fetch = time.perf_counter()
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The checkpoint is fetched beside `out` (one file system), so its model's files move into place by renames.
    with tempfile.TemporaryDirectory(prefix=out.name + ".", dir=out.parent, ignore_cleanup_errors=True) as scratch:
        fetched = _fetch_checkpoint(result.checkpoint, Path(scratch) / "ckpt")
        if not ckpt.is_export(fetched):
            raise RuntimeError(f"the last checkpoint {result.checkpoint.path} is not an exported model")
        exported = json.loads((fetched / ckpt.EXPORT_MARKER).read_text())
        with atomic_folder(out) as tmp:  # the folder appears whole or not at all
            for entry in (fetched / "model").iterdir():
                os.replace(entry, tmp / entry.name)
    phases = exported.get("phases") or {}
    if "started_at" in phases:  # from the call to the first line of the worker's loop: the worker group's start
        phases["group_start_s"] = phases.pop("started_at") - t0_wall
    phases["fetch_s"] = time.perf_counter() - t_fetch
    last = next((m for m in reversed(metrics) if "loss" in m), {})
    summary = {**exported, "phases": phases, "wall_s": wall, "reports": len(metrics),
               **{k: last[k] for k in ("loss", "mi_bound", "row_accuracy", "col_accuracy", "kl") if k in last}}
    return TrainResult(str(out), metrics, summary)
