"""The per-worker training loop that Ray Train runs on every rank: DeepSpeed ZeRO-3 over Ray's process group.

Order matters: process settings before DeepSpeed is imported (it reads its timeout at import), the partitioned-load
context before `from_pretrained`, MoE blocks marked as ZeRO-3 leaves before `deepspeed.initialize`, and the HF
DeepSpeed config unset once the engines are initialised (so that building the export model is no collective).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from . import checkpoint as ckpt
from .data_stream import epoch_at, micro_batch_indices, owns, total_steps

log = logging.getLogger("sami_ray.train")

SAMI_STAT_KEYS = ("loss", "sami_loss", "kl", "aux_loss", "row_accuracy", "col_accuracy")


def _process_settings(cfg: Any, num_cpus: float, use_gpu: bool) -> None:
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["DEEPSPEED_TIMEOUT"] = str(cfg.collective_timeout_min)
    import torch

    if not log.handlers:  # the per-step lines reach the job log whatever the worker's logging setup
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    # Ray already limits OMP threads to the worker's CPUs; torch's own pool must agree or 2 ranks on 2 cores thrash.
    torch.set_num_threads(max(1, int(num_cpus)))


def _skip_shm_op() -> None:
    """DeepSpeed compiles a shared-memory all-reduce op (70-130 s on CPU) when it wraps an existing process group.

    That op serves only DeepSpeed's inference all-reduce, which training never calls: we stop it from being built.
    """
    import importlib

    # By module path: the attribute `deepspeed.comm.torch` is shadowed by the real torch package.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _count_parameters(model_path: str) -> int | None:
    """Parameter count from the safetensors headers, without loading any weights."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


def _moe_block_classes(model: Any) -> list[type]:
    return sorted({type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")},
                  key=lambda c: c.__name__)


def _load_model(path: str, ds_config: dict, cfg: Any, *, trainable: bool):
    """A causal LM; under ZeRO-3 loaded straight into partitions (no rank ever holds the whole model)."""
    from deepspeed.utils import set_z3_leaf_modules
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    dtype = _torch_dtype(cfg)
    hf_ds = HfDeepSpeedConfig(ds_config) if cfg.zero_stage == 3 else None  # noqa: F841 - must live while loading
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False
    if trainable and cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    moe = _moe_block_classes(model)
    if moe and cfg.zero_stage == 3:
        # Experts that no token picks are never called; as leaves, ZeRO-3 gathers the whole block at once.
        set_z3_leaf_modules(model, moe)
    return model


def _all_reduce_mean(values: list[float], world_size: int) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(t)
        t /= world_size
    return t.tolist()


@dataclass
class _Worker:
    """What every step of this rank's loop needs: the settings, its place in the group, the data and the engines."""

    cfg: Any  # TrainerConfig
    rank: int
    world: int
    seed: int
    channel: Any  # the stage's channel (channel.StageChannel): steps and reports go there
    init_path: str
    ref_path: str | None
    pad_id: int
    examples: list[Any]  # this rank's shard: TokenizedExample (sami) or TokenizedPair (dpo, sft)
    example_ids: list[str]  # the query id of each example of the shard
    num_examples: int  # all shards together
    steps: int
    run_id: str = ""
    engine: Any = None
    ref_engine: Any = None  # SAMI's KL term: only with a reference model and beta > 0
    ref_logps: Any = None  # DPO: the reference's (chosen, rejected) log-probs of every example of the shard
    partition_numel: list[int] = field(default_factory=list)
    param_numel: int = 0
    start_step: int = 0
    local_storage: str | None = None  # the run's Ray Train folder when it is a local path (not S3)
    phases: dict[str, float] = field(default_factory=dict)  # where this rank's time went, for the run's summary


@dataclass
class _Progress:
    """The loop's running state: steps done, the stats since the last report, recent MI bounds, early stop."""

    step: int
    window: list[dict[str, float]] = field(default_factory=list)
    recent_mi: list[float] = field(default_factory=list)
    early_stopped: bool = False

    def record(self, stats: dict[str, float], keep: int) -> None:
        """Add a finished step's stats to the report window and to the last `keep` MI bounds."""
        self.window.append(stats)
        if "mi_bound" in stats:
            self.recent_mi = (self.recent_mi + [stats["mi_bound"]])[-keep:]


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`. `config` comes from `trainer.train` (plain data only)."""
    import ray.train

    started_at = time.time()  # wall clock: the driver compares it with its own to see how long the group took
    t0 = time.perf_counter()
    w = _setup(config)
    if w is None:
        return  # the stage was cancelled before its samples came: nothing to train
    w.phases.update(started_at=started_at, setup_s=time.perf_counter() - t0)  # models_s and data_s are in it
    restored = ray.train.get_checkpoint()
    if restored is not None and _is_exported(restored):
        return  # a restart after the model was exported: nothing left to do
    t0 = time.perf_counter()
    _build_engines(w)
    w.start_step = _restore(w.engine, restored)
    w.phases["engines_s"] = time.perf_counter() - t0
    # Everything built so far (Ray, DeepSpeed, transformers, the model, the data) lives until the stage ends: out of
    # the collector's sight, its full collections no longer walk millions of objects between steps.
    gc.freeze()
    t0 = time.perf_counter()
    progress = _Progress(step=w.start_step)
    while progress.step < w.steps:
        stats = _train_step(w, progress.step)
        progress.step += 1
        progress.record(stats, w.cfg.report_every)
        _publish_step(w, progress.step, stats)
        faults.maybe_exit(w.rank, progress.step)
        _maybe_report(w, progress)
        if progress.early_stopped:
            break
    w.phases["steps_s"] = time.perf_counter() - t0
    _export(w, progress)


def _setup(config: dict[str, Any]) -> _Worker | None:
    """Process settings, then DeepSpeed's process group, the seed and the tokenized examples; None when the stage
    was cancelled before its samples came."""
    import ray.train

    from ..config import TrainerConfig

    cfg = TrainerConfig.model_validate(config["trainer"])
    use_gpu = bool(config["use_gpu"])
    _process_settings(cfg, config["num_cpus"], use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    channel = config["channel"]
    # The shard's read waits for the samples (a stage started early gets them once they are committed), then is
    # mostly Ray Data's read task starting in another process: all of it runs while this thread imports DeepSpeed
    # and transformers (about 3 s on 2 cores), joins the process group and finds the models.
    phases: dict[str, float] = {}

    def read_shard() -> tuple[int, list[dict[str, Any]]] | None:
        with _clocked(phases, "examples_wait_s"):
            given = ray.get(channel.wait_examples.remote())
        if given.get("cancelled"):
            return None
        with _clocked(phases, "data_s"):
            return int(given["num_examples"]), _my_shard(rank, world)

    # Not a `with` block: a failure here must end the worker now, not once the samples come.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sami-shard")
    try:
        shard = pool.submit(read_shard)
        with _clocked(phases, "deepspeed_s"):
            import deepspeed  # only now: it reads its collective timeout at import
            import torch

            _skip_shm_op()
            deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
            torch.manual_seed(config["seed"])
        with _clocked(phases, "models_s"):
            init_path, ref_path = _local_models(config)
        with _clocked(phases, "transformers_s"):
            import transformers.models.auto.modeling_auto  # noqa: F401  what tokenising and loading will need
            import transformers.models.auto.tokenization_auto  # noqa: F401
        with _clocked(phases, "data_wait_s"):  # what the wait and the read added once the rest was done
            got = shard.result()
    finally:
        pool.shutdown(wait=False)
    if got is None:
        return None
    num_examples, rows = got
    with _clocked(phases, "tokenize_s"):
        pad_id, examples, ids = _tokenize(init_path, rows, cfg.objective, config.get("max_prompt_tokens"))
    steps = total_steps(num_examples, epochs=cfg.epochs, max_steps=cfg.max_steps,
                        micro_batch=cfg.micro_batch_queries, grad_accum=cfg.grad_accum, world_size=world)
    return _Worker(cfg=cfg, rank=rank, world=world, seed=config["seed"], channel=channel,
                   init_path=init_path, ref_path=ref_path, pad_id=pad_id, examples=examples,
                   example_ids=ids, num_examples=num_examples, steps=steps,
                   run_id=config.get("run_id", ""), local_storage=config.get("local_storage"), phases=phases)


@contextmanager
def _clocked(phases: dict[str, float], key: str) -> Iterator[None]:
    """Record the block's wall time as `phases[key]` (for the stage summary's `phases`)."""
    clock = time.perf_counter()
    try:
        yield
    finally:
        phases[key] = time.perf_counter() - clock


def _my_shard(rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's examples, read from the run's Ray Data stream of the samples file (lines in file order); only
    its own lines are parsed."""
    import ray.train

    stream = ray.train.get_dataset_shard("train")
    return [json.loads(row["text"]) for position, row in enumerate(stream.iter_rows()) if owns(position, rank, world)]


def _local_models(config: dict[str, Any]) -> tuple[str, str | None]:
    """The init and reference models as folders on this worker's node, fetched into its cache (once per node)
    from wherever the driver named them: the driver's disk is not this node's."""
    from ..models import resolve_model_path

    storage = config.get("model_storage")
    init = str(resolve_model_path(config["init_model_path"], config.get("init_gguf_file"), storage=storage))
    ref = config.get("ref_model_path")
    return init, (str(resolve_model_path(ref, config.get("ref_gguf_file"), storage=storage)) if ref else None)


def _tokenize(init_path: str, rows: list[dict[str, Any]], objective: str, max_prompt_tokens: int | None = None
              ) -> tuple[int, list[Any], list[str]]:
    """The init model's padding id, the rows tokenized with its tokenizer (SAMI examples, or the (prompt,
    responses) pairs of DPO and SFT), each prompt cut from the left to `max_prompt_tokens` (task.max_prompt_tokens),
    and the rows' ids."""
    from transformers import AutoTokenizer

    from ..sami.data import SamiExample, tokenize_example
    from ..sami.pairs import TextPair, tokenize_pair

    tokenizer = AutoTokenizer.from_pretrained(init_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    if objective == "sami":
        examples = [SamiExample.from_dict(row) for row in rows]
        return pad_id, [tokenize_example(tokenizer, ex, max_prompt_tokens=max_prompt_tokens) for ex in examples], \
            [ex.query.id for ex in examples]
    pairs = [TextPair.from_dict(row) for row in rows]
    return pad_id, [tokenize_pair(tokenizer, p, max_prompt_tokens=max_prompt_tokens) for p in pairs], \
        [p.id for p in pairs]


def _is_exported(restored: Any) -> bool:
    """Whether the checkpoint Ray Train restarts the group from is already the exported model."""
    with restored.as_directory() as folder:
        return ckpt.is_export(folder)


def _build_engines(w: _Worker) -> None:
    """Fill in the trained engine (and the reference one), each loaded straight into its ZeRO-3 partitions."""
    import deepspeed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .ds_config import build_ds_config
    from .optim import build_optimizer, scheduler_factory
    cfg = w.cfg
    ds_config = build_ds_config(cfg, world_size=w.world, num_params=_count_parameters(w.init_path))
    model = _load_model(w.init_path, ds_config, cfg, trainable=True)
    scorer = _scorer_class(cfg)(model, cfg.step_impl, cfg.logprob_chunk_size, w.pad_id,
                                router_logits=cfg.router_aux_coef > 0)
    if cfg.objective == "dpo":
        w.ref_logps = _reference_logps(w, ds_config)
    elif w.ref_path and cfg.beta > 0:
        w.ref_engine = _build_ref_engine(w, ds_config)
    if cfg.zero_stage == 3:
        scorer.register_for_zero3()
    optimizer = build_optimizer(scorer.parameters(), cfg)
    w.engine, *_ = deepspeed.initialize(model=scorer, optimizer=optimizer, config=ds_config,
                                        lr_scheduler=scheduler_factory(cfg, w.steps))
    unset_hf_deepspeed_config()  # loading is done; later model building (export) must not be a collective
    if w.world == 1 and cfg.zero_stage == 0:
        # One rank has nothing to reduce, but DeepSpeed would still flatten every gradient into a buffer, all-reduce
        # it with itself and copy it back, each step.
        w.engine.enable_backward_allreduce = False
    w.partition_numel, w.param_numel = _partition_sizes(w.engine.module.model, w.world)


def _scorer_class(cfg: Any) -> type:
    """SAMI scores every (constitution, response) pair of a query; DPO and SFT score responses after one prompt."""
    from .step import PairScorer, ResponseScorer

    return PairScorer if cfg.objective == "sami" else ResponseScorer


def _reference_logps(w: _Worker, ds_config: dict) -> Any:
    """DPO's reference log-probs of every (chosen, rejected) pair of this rank's shard, computed once (not every
    epoch); the reference engine is dropped afterwards. Under ZeRO-3 each forward is a collective, so every rank
    runs as many batches as the largest shard needs."""
    import gc

    from .step import reference_logps

    ref = _build_ref_engine(w, ds_config)
    largest_shard = math.ceil(w.num_examples / w.world)
    logps = reference_logps(ref, w.examples, w.cfg.micro_batch_queries,
                            min_batches=math.ceil(largest_shard / w.cfg.micro_batch_queries))
    del ref
    gc.collect()
    return logps


def _build_ref_engine(w: _Worker, ds_config: dict) -> Any:
    """The frozen reference model as an inference-only engine: SAMI's KL term, DPO's reference."""
    import deepspeed

    from .ds_config import inference_ds_config

    ref_cfg = inference_ds_config(ds_config)
    ref = _load_model(w.ref_path, ref_cfg, w.cfg, trainable=False)  # type: ignore[arg-type]
    ref_scorer = _scorer_class(w.cfg)(ref, w.cfg.step_impl, w.cfg.logprob_chunk_size, w.pad_id)
    if w.cfg.zero_stage == 3:
        ref_scorer.register_for_zero3()
    ref_engine, *_ = deepspeed.initialize(model=ref_scorer, config=ref_cfg)
    ref_engine.eval()
    return ref_engine


def _restore(engine: Any, restored: Any) -> int:
    """The step to start from: 0, or the one saved with the checkpoint a restarted group resumes from."""
    if restored is None:
        return 0
    with restored.as_directory() as folder:
        return int(ckpt.restore(engine, folder)["step"])


def _train_step(w: _Worker, step: int) -> dict[str, float]:
    """One optimizer step over grad_accum micro-batches; its statistics, averaged over all ranks."""
    t0 = time.perf_counter()
    keys = _stat_keys(w.cfg.objective)
    sums = dict.fromkeys(keys, 0.0)
    tokens = 0.0
    n = 2
    lr = float(w.engine.get_lr()[0])
    own_norm = None
    for accum in range(w.cfg.grad_accum):
        stats, input_tokens, n, own_norm = _micro_step(w, step, accum)
        for key in keys:
            sums[key] += stats[key] / w.cfg.grad_accum
        tokens += input_tokens
    elapsed = time.perf_counter() - t0
    reduced = _all_reduce_mean([sums[k] for k in keys] + [tokens], w.world)
    out = dict(zip(keys, reduced[:-1], strict=True))
    if w.cfg.objective == "sami":
        out["mi_bound"] = math.log(n) - out["sami_loss"]
    grad_norm = w.engine.get_global_grad_norm()
    if grad_norm is None:
        grad_norm = own_norm
    out.update(tokens_per_s=reduced[-1] * w.world / elapsed, step_time_s=elapsed, lr=lr,
               grad_norm=float(grad_norm) if grad_norm is not None else float("nan"))
    return out


def _stat_keys(objective: str) -> tuple[str, ...]:
    from .step import DPO_STAT_KEYS, SFT_STAT_KEYS

    return {"sami": SAMI_STAT_KEYS, "dpo": DPO_STAT_KEYS, "sft": SFT_STAT_KEYS}[objective]


def _micro_step(w: _Worker, step: int, accum: int) -> tuple[dict[str, float], int, int, float | None]:
    """Forward and backward over this rank's micro-batch (DeepSpeed steps on the last): the objective's
    statistics, the tokens run, N, and the gradient norm where the worker clips (`ds_config.worker_clips`)."""
    import torch

    from .ds_config import worker_clips

    idx = micro_batch_indices(step, accum, w.rank, shard_size=len(w.examples),
                              micro_batch=w.cfg.micro_batch_queries, grad_accum=w.cfg.grad_accum, seed=w.seed)
    faults.trace_examples(w.rank, step, [w.example_ids[i] for i in idx])
    batch = [w.examples[i] for i in idx]
    loss, stats, input_tokens, n = _objective(w, batch, idx)
    w.engine.backward(loss)
    own_norm = None
    if w.engine.is_gradient_accumulation_boundary() and worker_clips(w.cfg):
        own_norm = float(torch.nn.utils.clip_grad_norm_(w.engine.module.parameters(),
                                                        w.cfg.max_grad_norm or float("inf")))
    w.engine.step()
    return stats, input_tokens, n, own_norm


def _objective(w: _Worker, batch: list[Any], idx: list[int]) -> tuple[Any, dict[str, float], int, int]:
    """The configured objective on one micro-batch: (loss, statistics, tokens run, N)."""
    import torch

    from .step import dpo_objective, sami_objective, sft_objective

    cfg = w.cfg
    if cfg.objective == "dpo":
        out = dpo_objective(w.engine(batch), w.ref_logps[idx], beta=cfg.dpo_beta, router_aux_coef=cfg.router_aux_coef)
        return out.loss, out.stats, out.input_tokens, 2
    if cfg.objective == "sft":
        out = sft_objective(w.engine(batch), router_aux_coef=cfg.router_aux_coef)
        return out.loss, out.stats, out.input_tokens, 1
    ref_scores = None
    if w.ref_engine is not None:
        with torch.no_grad():
            ref_scores = w.ref_engine(batch)
    sami = sami_objective(w.engine(batch), ref_scores, batch_size=len(batch), n=batch[0].n,
                          normalization=cfg.logprob_normalization, beta=cfg.beta, router_aux_coef=cfg.router_aux_coef)
    stats = {"loss": float(sami.loss.detach()), "sami_loss": sami.sami_loss, "kl": sami.kl,
             "aux_loss": sami.aux_loss, "row_accuracy": sami.row_accuracy, "col_accuracy": sami.col_accuracy}
    return sami.loss, stats, sami.input_tokens, sami.n


def _publish_step(w: _Worker, step: int, stats: dict[str, float]) -> None:
    """Rank 0 shows each optimizer step while training runs: on the dashboard (Ray metrics), in the job log, and
    to the driver's progress line (through the stage's channel; not awaited)."""
    if w.rank != 0:
        return
    from .. import metrics

    accuracy = stats.get("row_accuracy", stats.get("reward_accuracy", float("nan")))
    for name, value in (("sami_train_step", step), ("sami_train_loss", stats["loss"]),
                        ("sami_mi_bound", stats.get("mi_bound", float("nan"))), ("sami_train_accuracy", accuracy),
                        ("sami_tokens_per_second", stats["tokens_per_s"]), ("sami_train_lr", stats["lr"]),
                        ("sami_train_grad_norm", stats["grad_norm"])):
        if math.isfinite(value):
            metrics.record(name, value, w.run_id, source="train")
    mi = f" mi {stats['mi_bound']:.3f}" if "mi_bound" in stats else ""
    log.info("train step %d/%d loss %.4f%s acc %.2f grad_norm %.3g lr %.2g %.0f tok/s", step, w.steps,
             stats["loss"], mi, accuracy, stats["grad_norm"], stats["lr"], stats["tokens_per_s"])
    w.channel.add_step.remote({"step": step, "total_steps": w.steps, "loss": stats["loss"],
                               "mi_bound": stats.get("mi_bound"), "accuracy": accuracy,
                               "grad_norm": stats["grad_norm"]})


def _maybe_report(w: _Worker, p: _Progress) -> None:
    """Decide early stop; report the window (with a checkpoint every checkpoint_every steps) when one is due."""
    import ray

    cfg = w.cfg
    if cfg.early_stop_mi_bound is not None and len(p.recent_mi) == cfg.report_every \
            and sum(p.recent_mi) / len(p.recent_mi) > cfg.early_stop_mi_bound:
        p.early_stopped = True  # every rank sees the same all-reduced values, so all stop together
    last = p.step == w.steps or p.early_stopped
    save_now = p.step % cfg.checkpoint_every == 0 and not last
    if not (p.step % cfg.report_every == 0 or save_now or last):
        return
    metrics = _window_metrics(p.window, p.step, epoch_at(p.step, num_examples=w.num_examples,
                                                         micro_batch=cfg.micro_batch_queries,
                                                         grad_accum=cfg.grad_accum, world_size=w.world))
    metrics["early_stopped"] = p.early_stopped
    _report(w, metrics, ckpt.save(w.engine, {"step": p.step}, w.rank) if save_now else None)
    if w.rank == 0:
        ray.get(w.channel.add.remote(metrics))
    p.window = []


def _report(w: _Worker, metrics: dict[str, Any], folder: str | None) -> None:
    """Report to Ray Train with `folder` (if any) as the checkpoint; the folder goes once Ray has taken it."""
    import ray.train

    try:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=_local_upload(w) if folder else None)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _local_upload(w: _Worker) -> Any:
    """Where the run's checkpoints go to a local folder this node sees: put them there as hard links (copies across
    file systems) instead of Ray Train's byte copy, which for the exported model alone is a second copy of every
    weight. None (Ray Train's own upload) for S3 and for a folder this node does not have."""
    if not w.local_storage or not os.path.isdir(w.local_storage):
        return None

    def upload(checkpoint: Any, dir_name: str) -> Any:
        import ray.train

        from ..atomic import link_or_copy_tree

        return ray.train.Checkpoint.from_directory(
            str(link_or_copy_tree(checkpoint.path, os.path.join(w.local_storage, dir_name))))

    return upload


def _export(w: _Worker, p: _Progress) -> None:
    """Gather the trained weights (all ranks take part); report them, written by rank 0, as the last checkpoint."""
    from .export import gather_state_dict

    t0 = time.perf_counter()
    probe = _probe_matrix(w.engine, w.examples[0], w.cfg.logprob_normalization) if w.cfg.objective == "sami" else None
    state = gather_state_dict(w.engine.module.model, w.rank)
    w.phases["gather_s"] = time.perf_counter() - t0
    folder = _write_export(w, p, state, probe) if w.rank == 0 else None
    del state
    _report(w, {"step": p.step, "exported": True}, folder)


def _write_export(w: _Worker, p: _Progress, state: dict[str, Any], probe: list[list[float]] | None) -> str:
    """Rank 0: a temp folder holding the HF model under model/ and the export marker with the run's summary."""
    from .export import write_hf_folder

    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sami-export-"))
    write_hf_folder(state, w.init_path, folder / "model", _torch_dtype(w.cfg))
    w.phases["write_s"] = time.perf_counter() - t0
    summary = {"objective": w.cfg.objective, "steps": p.step, "total_steps": w.steps, "early_stopped": p.early_stopped,
               "resumed_from": w.start_step, "partition_numel": w.partition_numel, "param_numel": w.param_numel,
               "probe_matrix": probe, "phases": w.phases}
    (folder / ckpt.EXPORT_MARKER).write_text(json.dumps(summary))
    return str(folder)


def _torch_dtype(cfg: Any) -> Any:
    """The torch dtype of `trainer.dtype`."""
    import torch

    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def _partition_sizes(model: Any, world_size: int) -> tuple[list[int], int]:
    """Elements each rank holds (ZeRO-3 partitions, padding included) and the model's total."""
    import torch.distributed as dist

    params = list(model.parameters())
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    parts: list[Any] = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    return [int(x) for x in parts], int(total)


def _probe_matrix(engine: Any, example: Any, normalization: str) -> list[list[float]]:
    """The trained engine's (N, N) log-prob matrix of the first example, for checking the exported weights."""
    import torch

    from ..sami.loss import sequence_logprobs

    engine.eval()
    with torch.no_grad():
        scores = engine([example])
    engine.train()
    seq = sequence_logprobs(scores.token_logprobs, scores.labels, normalization)  # type: ignore[arg-type]
    return seq.reshape(example.n, example.n).double().tolist()


def _window_metrics(window: list[dict[str, float]], step: int, epoch: float) -> dict[str, Any]:
    """Means over the steps since the last report; lr and grad norm of the last step."""
    out: dict[str, Any] = {"step": step, "epoch": epoch}
    if not window:
        return out
    for key in window[0]:
        if key not in ("lr", "grad_norm"):
            out[key] = sum(w[key] for w in window) / len(window)
    out["lr"] = window[-1]["lr"]
    out["grad_norm"] = window[-1]["grad_norm"]
    out["steps_in_report"] = len(window)
    return out
