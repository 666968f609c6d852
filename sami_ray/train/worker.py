"""The per-worker training loop that Ray Train runs on every rank: DeepSpeed ZeRO-3 over Ray's process group.

Order matters: process settings before DeepSpeed is imported (it reads its timeout at import), the partitioned-load
context before `from_pretrained`, MoE blocks marked as ZeRO-3 leaves before `deepspeed.initialize`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import faults
from . import checkpoint as ckpt
from .data_stream import epoch_at, micro_batch_indices, total_steps

STAT_KEYS = ("loss", "sami_loss", "kl", "aux_loss", "row_accuracy", "col_accuracy")


def _process_settings(cfg: Any, num_cpus: float, use_gpu: bool) -> None:
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["DEEPSPEED_TIMEOUT"] = str(cfg.collective_timeout_min)
    import torch

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
    import torch
    from deepspeed.utils import set_z3_leaf_modules
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
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


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`. `config` comes from `trainer.train` (plain data only)."""
    import ray.train

    from ..config import TrainerConfig

    cfg = TrainerConfig.model_validate(config["trainer"])
    use_gpu = bool(config["use_gpu"])
    _process_settings(cfg, config["num_cpus"], use_gpu)

    import deepspeed
    import torch
    from transformers import AutoTokenizer
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from ..sami.data import SamiExample, tokenize_example
    from .ds_config import build_ds_config, inference_ds_config
    from .export import gather_state_dict, write_hf_folder
    from .optim import build_optimizer, scheduler_factory
    from .step import PairScorer, sami_objective

    _skip_shm_op()
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    sink = config.get("metrics_sink")
    torch.manual_seed(config["seed"])

    init_path = config["init_model_path"]
    tokenizer = AutoTokenizer.from_pretrained(init_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    examples = [tokenize_example(tokenizer, SamiExample.from_dict(row)) for row in config["examples"]]
    steps = total_steps(len(examples), epochs=cfg.epochs, max_steps=cfg.max_steps,
                        micro_batch=cfg.micro_batch_queries, grad_accum=cfg.grad_accum, world_size=world)

    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            if ckpt.is_export(folder):  # a restart after the model was exported: nothing left to do
                return

    ds_config = build_ds_config(cfg, world_size=world, num_params=_count_parameters(init_path))
    model = _load_model(init_path, ds_config, cfg, trainable=True)
    scorer = PairScorer(model, cfg.step_impl, cfg.logprob_chunk_size, pad_id,
                        router_logits=cfg.router_aux_coef > 0)
    ref_engine = None
    if config.get("ref_model_path") and cfg.beta > 0:
        ref_cfg = inference_ds_config(ds_config)
        ref = _load_model(config["ref_model_path"], ref_cfg, cfg, trainable=False)
        ref_scorer = PairScorer(ref, cfg.step_impl, cfg.logprob_chunk_size, pad_id)
        if cfg.zero_stage == 3:
            ref_scorer.register_for_zero3()
        ref_engine, *_ = deepspeed.initialize(model=ref_scorer, config=ref_cfg)
        ref_engine.eval()
    if cfg.zero_stage == 3:
        scorer.register_for_zero3()
    optimizer = build_optimizer(scorer.parameters(), cfg)
    engine, _, _, scheduler = deepspeed.initialize(model=scorer, optimizer=optimizer, config=ds_config,
                                                   lr_scheduler=scheduler_factory(cfg, steps))
    unset_hf_deepspeed_config()  # loading is done; later model building (export) must not be a collective
    partition_numel, param_numel = _partition_sizes(engine.module.model, world)

    start_step = 0
    if restored is not None:
        with restored.as_directory() as folder:
            start_step = int(ckpt.restore(engine, folder)["step"])

    window: list[dict[str, float]] = []
    recent_mi: list[float] = []
    early_stopped = False
    step = start_step
    while step < steps:
        t0 = time.perf_counter()
        sums = dict.fromkeys(STAT_KEYS, 0.0)
        tokens = 0.0
        n = 2
        lr = float(engine.get_lr()[0])
        for accum in range(cfg.grad_accum):
            idx = micro_batch_indices(step, accum, rank, num_examples=len(examples),
                                      micro_batch=cfg.micro_batch_queries, grad_accum=cfg.grad_accum,
                                      world_size=world, seed=config["seed"])
            batch = [examples[i] for i in idx]
            ref_scores = None
            if ref_engine is not None:
                with torch.no_grad():
                    ref_scores = ref_engine(batch)
            out = sami_objective(engine(batch), ref_scores, batch_size=len(batch), n=batch[0].n,
                                 normalization=cfg.logprob_normalization, beta=cfg.beta,
                                 router_aux_coef=cfg.router_aux_coef)
            engine.backward(out.loss)
            engine.step()
            n = out.n
            for key, value in (("loss", float(out.loss.detach())), ("sami_loss", out.sami_loss), ("kl", out.kl),
                               ("aux_loss", out.aux_loss), ("row_accuracy", out.row_accuracy),
                               ("col_accuracy", out.col_accuracy)):
                sums[key] += value / cfg.grad_accum
            tokens += out.input_tokens
        step += 1
        elapsed = time.perf_counter() - t0
        reduced = _all_reduce_mean([sums[k] for k in STAT_KEYS] + [tokens], world)
        stats = dict(zip(STAT_KEYS, reduced[:-1], strict=True))
        grad_norm = engine.get_global_grad_norm()
        stats.update(mi_bound=math.log(n) - stats["sami_loss"], tokens_per_s=reduced[-1] * world / elapsed,
                     step_time_s=elapsed, lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"))
        window.append(stats)
        recent_mi = (recent_mi + [stats["mi_bound"]])[-cfg.report_every:]
        faults.maybe_exit(rank, step)

        if cfg.early_stop_mi_bound is not None and len(recent_mi) == cfg.report_every \
                and sum(recent_mi) / len(recent_mi) > cfg.early_stop_mi_bound:
            early_stopped = True  # every rank sees the same all-reduced values, so all stop together
        last = step == steps or early_stopped
        save_now = step % cfg.checkpoint_every == 0 and not last
        if step % cfg.report_every == 0 or save_now or last:
            metrics = _window_metrics(window, step, epoch_at(step, num_examples=len(examples),
                                                             micro_batch=cfg.micro_batch_queries,
                                                             grad_accum=cfg.grad_accum, world_size=world))
            metrics["early_stopped"] = early_stopped
            folder = ckpt.save(engine, {"step": step}, rank) if save_now else None
            try:
                checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
                ray.train.report(metrics, checkpoint=checkpoint)
            finally:
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)
            if rank == 0 and sink is not None:
                ray.get(sink.add.remote(metrics))
            window = []
        if early_stopped:
            break

    probe = _probe_matrix(engine, examples[0], cfg.logprob_normalization)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    state = gather_state_dict(engine.module.model, rank)
    folder = None
    if rank == 0:
        folder = Path(tempfile.mkdtemp(prefix="sami-export-"))
        write_hf_folder(state, init_path, folder / "model", dtype)
        summary = {"steps": step, "total_steps": steps, "early_stopped": early_stopped, "resumed_from": start_step,
                   "partition_numel": partition_numel, "param_numel": param_numel, "probe_matrix": probe}

        (folder / ckpt.EXPORT_MARKER).write_text(json.dumps(summary))
    del state
    try:
        ray.train.report({"step": step, "exported": True},
                         checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


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
    for key in (*STAT_KEYS, "mi_bound", "tokens_per_s", "step_time_s"):
        out[key] = sum(w[key] for w in window) / len(window)
    out["lr"] = window[-1]["lr"]
    out["grad_norm"] = window[-1]["grad_norm"]
    out["steps_in_report"] = len(window)
    return out
