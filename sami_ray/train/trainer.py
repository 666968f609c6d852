"""The driver's entry to training: launch a Ray Train worker group, collect its metrics, fetch the exported model.

The group may be launched before its examples exist (trainer.start_early: its start overlaps the sampling); a
channel actor hands it the samples file once committed. The examples reach the workers as a Ray Data dataset read
from that file on the driver's node (a run of 100,000 queries is never one task argument); every worker keeps and
tokenises only its own shard (data_stream). Rank 0 streams each step's statistics to the same channel, which the
driver polls for its progress line. The exported model travels back through the run's checkpoint storage (the last
checkpoint rank 0 reports), so it reaches the driver's `output_dir` wherever the workers ran.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_folder, link_or_copy_tree
from ..config import RoleResources, TrainerConfig
from ..errors import DataError, UserError
from ..sami.data import SamiExample, read_jsonl
from . import checkpoint as ckpt
from .channel import StageChannel

# glibc's malloc hands every large freed block back to the kernel, and a thread's arena (Ray Train runs the loop in
# a thread) unmaps whole heaps, so each CPU step faults its activations and gradients in again, page by page: in
# the demo about 250,000 page faults a step, which made the step 1.25x as long. Kept in one arena and never
# unmapped, freed memory is reused from the second step on (benchmarks/bench_demo_train.py).
CPU_WORKER_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**50)}


def worker_env_vars(use_gpu: bool, already_set: Collection[str]) -> dict[str, str]:
    """What the training workers' environment adds: the malloc settings above on CPU workers, except those the
    user has set (`already_set`: the driver's and the job's variables)."""
    if use_gpu:
        return {}
    return {k: v for k, v in CPU_WORKER_MALLOC.items() if k not in already_set}


@dataclass
class TrainResult:
    model_dir: str  # HF safetensors folder: config, tokenizer, model.safetensors
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per report, in step order
    summary: dict[str, Any] = field(default_factory=dict)


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


def _set_env_vars() -> set[str]:
    """The names of the variables set in the driver's environment or in the job's runtime environment."""
    import ray

    job = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    return {*os.environ, *job}


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


class TrainingLaunch:
    """One training stage's worker group, which may start before its examples exist (trainer.start_early).

    `start` launches the group in the background: Ray Train's processes, the imports, the process group and the
    models found on each node, all while the samples are still being drawn; the workers then wait for the examples.
    `train_on` hands them the committed samples (a path on the driver's node) and returns the exported model;
    `cancel` ends a group whose samples never came. A stage that begins with its examples is `train_on` alone.

    The init and reference models are anything `models.resolve_model_path` takes (a folder, builtin:, a hub id,
    an s3:// folder such as a committed model stage): every worker resolves them on its own node, reaching S3
    with `model_storage` (a StorageConfig; None: the standard AWS chain). Each optimizer step's statistics go to the
    dashboard (tagged with `run_id`), to the workers' log, and to `on_step` on the driver."""

    def __init__(self, init_model_path: str, ref_model_path: str | None, trainer_cfg: TrainerConfig,
                 storage_path: str, storage_filesystem: Any = None, run_name: str = "train",
                 resources: RoleResources | None = None, seed: int = 0, max_prompt_tokens: int | None = None, *,
                 init_gguf_file: str | None = None, ref_gguf_file: str | None = None, model_storage: Any = None,
                 run_id: str = "", on_step: Callable[[dict[str, Any]], None] | None = None):
        if trainer_cfg.objective == "sami" and trainer_cfg.beta > 0 and ref_model_path is None:
            raise UserError("trainer.beta > 0 needs a reference model (the run's initial model)")
        if trainer_cfg.objective == "dpo" and ref_model_path is None:
            ref_model_path, ref_gguf_file = init_model_path, init_gguf_file  # DPO's reference: where training starts
        self.cfg, self.resources = trainer_cfg, resources or RoleResources()
        self.on_step = on_step
        self._config = {
            "trainer": trainer_cfg.model_dump(mode="json"), "run_id": run_id, "init_model_path": str(init_model_path),
            "ref_model_path": str(ref_model_path) if ref_model_path else None, "seed": seed,
            "use_gpu": self.resources.num_gpus > 0, "num_cpus": self.resources.num_cpus,
            "max_prompt_tokens": max_prompt_tokens, "init_gguf_file": init_gguf_file, "ref_gguf_file": ref_gguf_file,
            "model_storage": model_storage,
        }
        if storage_filesystem is None and "://" not in storage_path:
            storage_path = os.path.abspath(storage_path)  # Ray Train wants an absolute local path
            self._config["local_storage"] = os.path.join(storage_path, run_name)  # checkpoints linked, not copied
        self._storage = (storage_path, storage_filesystem, run_name)
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}
        self._started = self._started_wall = 0.0
        self._given = False  # the examples were handed over: from then on the group ends by itself

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, examples_path: str | None = None) -> None:
        """Launch the worker group in the background; its workers wait for `train_on`'s examples (`examples_path`
        when they exist already)."""
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from ..actors.placement import bundle, require_custom
        from .samples_source import committed_samples_dataset, samples_dataset
        from .worker import train_loop

        cfg, resources = self.cfg, self.resources
        require_custom("trainer", resources, cfg.num_workers)  # Ray Train would wait for them forever
        # The channel lives on the head node, which lives as long as the cluster: a lost worker node (a sampler's)
        # must not take the training's metrics with it.
        self._channel = ray.remote(num_cpus=0)(StageChannel).options(resources={HEAD_NODE: 0.001}).remote()
        use_gpu = resources.num_gpus > 0
        storage_path, storage_filesystem, run_name = self._storage
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={**self._config, "channel": self._channel},
            datasets={"train": committed_samples_dataset(examples_path) if examples_path
                      else samples_dataset(self._channel)},
            dataset_config=_data_config(),
            # CPUs, GPUs and the custom resources (resources.trainer.custom) of one worker
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                         resources_per_worker=bundle(resources)),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cfg.collective_timeout_min * 60),
            run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),
                                 worker_runtime_env={"env_vars": worker_env_vars(use_gpu, _set_env_vars())}),
        )
        self._started, self._started_wall = time.perf_counter(), time.time()
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="sami-train-fit", daemon=True)
        self._thread.start()

    def _fit(self, trainer: Any) -> None:
        try:
            with _StepWatcher(self._channel, self.on_step):
                self._outcome["result"] = _fit(trainer)
        except BaseException as e:  # handed to `train_on`, in the caller's thread
            self._outcome["error"] = e

    def train_on(self, examples_path: str, output_dir: str) -> TrainResult:
        """Train on `examples_path` and export the result to `output_dir`: SAMI examples (trainer.objective sami),
        or a pairs file (`sami.pairs`: prompt with chosen and rejected for dpo, prompt and completion for sft)."""
        import ray

        try:
            num_examples = (_check_examples if self.cfg.objective == "sami" else _check_pairs)(examples_path)
            if num_examples < self.cfg.num_workers:
                raise DataError(f"{examples_path}: {num_examples} training examples cannot be shared by "
                                f"trainer.num_workers = {self.cfg.num_workers} workers; lower trainer.num_workers "
                                "or sample more queries")
        except BaseException:
            self.cancel()
            raise
        early = self.started
        if not early:
            self.start(examples_path)
        t0 = time.perf_counter()
        self._given = True
        try:
            ray.get(self._channel.give.remote({"path": os.path.abspath(examples_path), "num_examples": num_examples}))
            self._thread.join()  # type: ignore[union-attr]
            if "error" in self._outcome:
                raise self._outcome["error"]
            result = self._outcome["result"]
            metrics = ray.get(self._channel.all.remote())
        finally:
            ray.kill(self._channel)
        wall = time.perf_counter() - t0
        if result.checkpoint is None:
            raise RuntimeError("training finished without reporting the exported model")
        t_fetch = time.perf_counter()
        out = Path(output_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        # The checkpoint is fetched beside `out` (one file system), so its model's files move into place by renames.
        with tempfile.TemporaryDirectory(prefix=out.name + ".", dir=out.parent, ignore_cleanup_errors=True) as tmp:
            fetched = _fetch_checkpoint(result.checkpoint, Path(tmp) / "ckpt")
            if not ckpt.is_export(fetched):
                raise RuntimeError(f"the last checkpoint {result.checkpoint.path} is not an exported model")
            exported = json.loads((fetched / ckpt.EXPORT_MARKER).read_text())
            with atomic_folder(out) as folder:  # the folder appears whole or not at all
                for entry in (fetched / "model").iterdir():
                    os.replace(entry, folder / entry.name)
        phases = exported.get("phases") or {}
        if "started_at" in phases:  # from the launch to the first line of the worker's loop: the group's start
            phases["group_start_s"] = phases.pop("started_at") - self._started_wall
        if early:
            phases["started_early_s"] = t0 - self._started  # how much of the above ran while the samples were drawn
        phases["fetch_s"] = time.perf_counter() - t_fetch
        last = next((m for m in reversed(metrics) if "loss" in m), {})
        summary = {**exported, "phases": phases, "wall_s": wall, "reports": len(metrics),
                   **{k: last[k] for k in ("loss", "mi_bound", "row_accuracy", "col_accuracy", "kl") if k in last}}
        return TrainResult(str(out), metrics, summary)

    def cancel(self, wait_s: float = 120.0) -> None:
        """End a group whose samples never came: its workers return without training, and the group's resources
        are free when this returns (or after `wait_s`, if the group is still starting)."""
        import ray

        if self._thread is None or self._given:
            return
        try:
            ray.get(self._channel.give.remote({"cancelled": True}), timeout=30)
            self._thread.join(timeout=wait_s)
        finally:
            ray.kill(self._channel)
            self._thread = None


def train(examples_path: str, init_model_path: str, ref_model_path: str | None, trainer_cfg: TrainerConfig,
          output_dir: str, storage_path: str, storage_filesystem: Any = None, run_name: str = "train",
          resources: RoleResources | None = None, seed: int = 0, max_prompt_tokens: int | None = None,
          **options: Any) -> TrainResult:
    """Train on `examples_path` and export the result to `output_dir` (a `TrainingLaunch` that starts with its
    examples in hand). Training prompts longer than `max_prompt_tokens` are cut from the left
    (task.max_prompt_tokens); `options` are `TrainingLaunch`'s keyword options."""
    launch = TrainingLaunch(init_model_path, ref_model_path, trainer_cfg, storage_path, storage_filesystem, run_name,
                            resources, seed, max_prompt_tokens, **options)
    return launch.train_on(examples_path, output_dir)
