"""What the demo benchmarks share: the demo's config, the plain PyTorch SAMI training loop, a timed spawned process.

The plain loop is the reference a reader can check by eye: `AutoModelForCausalLM` + a torch optimizer, each step
the forward and backward over all N x N (prompt, answer) pairs as separate sequences (the trainer's "reference"
step, no prefix sharing), the trainer's own data order, LR schedule and gradient clipping, and the trainer's
optimizer as a plain script writes it: `torch.optim.AdamW` (or RMSprop) with torch's defaults. The trainer uses the
fused AdamW kernel (train/optim.py), which is part of its lead on CPU; `plain_optimizer="ours"` gives the plain loop
that kernel too.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import statistics
import time
from collections.abc import Callable
from typing import Any

from sami_ray.runtime import environ


def demo_config(storage: str, overrides: list[str]):
    """The embedded demo's config (as `sami-ray run` loads it), its store in `storage`, then `overrides`."""
    from sami_ray.config import demo_config_path, load_config

    return load_config(str(demo_config_path()), [f"storage.uri={storage}", *overrides])


def sample_iteration_1(loop: Any, dest: Any) -> Any:
    """A run's iteration-1 examples (principles first, then sampling, as `sami-ray run` walks them), copied to
    `dest`; returns the committed samples file the run's own training stage reads."""
    principles = loop.principles()
    train, _ = loop.queries()
    examples = loop.samples(1, None, loop.iteration_queries(1, train), principles)
    dest.write_bytes(examples.read_bytes())
    return examples


def demo_samples(config: Any, dest: Any) -> Any:
    """The demo's iteration-1 examples copied to `dest`; the run, its sampler pool and Ray are shut down
    afterwards."""
    import ray

    from sami_ray.driver import Run

    run = Run.start(config, run_id="bench-samples")
    try:
        sample_iteration_1(run.loop, dest)
    finally:
        run.shutdown()
        ray.shutdown()
    return dest


def plain_train(model: Any, tokenizer: Any, examples: list, cfg: Any, *, max_prompt_tokens: int | None,
                seed: int, plain_optimizer: str = "torch", step_impl: str = "reference") -> dict:
    """Train `model` in place on SAMI `examples` as the trainer's config says (one process, no DeepSpeed);
    {steps, step_s (median), steps_s (their sum), loss (last)}. `seed` orders the examples as the trainer's data
    stream does; `step_impl` "shared_prefix" scores the pairs as the trainer does."""
    import torch

    from sami_ray.sami.data import tokenize_example
    from sami_ray.train.data_stream import micro_batch_indices, total_steps
    from sami_ray.train.optim import build_optimizer, scheduler_factory
    from sami_ray.train.step import PairScorer, sami_objective

    if cfg.objective != "sami" or cfg.beta > 0:
        raise SystemExit("the plain loop trains the SAMI objective without a KL term (trainer.objective = sami, "
                         "trainer.beta = 0)")
    rows = [tokenize_example(tokenizer, ex, max_prompt_tokens=max_prompt_tokens) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scorer = PairScorer(model, step_impl, cfg.logprob_chunk_size, pad)  # reference: every pair a separate sequence
    steps = total_steps(len(rows), epochs=cfg.epochs, max_steps=cfg.max_steps, micro_batch=cfg.micro_batch_queries,
                        grad_accum=cfg.grad_accum, world_size=1)
    if plain_optimizer == "ours":
        optimizer = build_optimizer(model.parameters(), cfg)
    elif cfg.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = scheduler_factory(cfg, steps)(optimizer)
    use_cache = model.config.use_cache
    model.config.use_cache = False  # no KV cache while training; generation wants it back afterwards
    model.train()
    step_times, loss = [], float("nan")
    try:
        for step in range(steps):
            s0 = time.perf_counter()
            for accum in range(cfg.grad_accum):
                idx = micro_batch_indices(step, accum, 0, shard_size=len(rows), micro_batch=cfg.micro_batch_queries,
                                          grad_accum=cfg.grad_accum, seed=seed)
                batch = [rows[i] for i in idx]
                out = sami_objective(scorer(batch), None, batch_size=len(batch), n=batch[0].n,
                                     normalization=cfg.logprob_normalization)
                (out.loss / cfg.grad_accum).backward()
                loss = float(out.loss.detach())
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - s0)
    finally:
        model.eval()
        model.config.use_cache = use_cache
    return {"steps": len(step_times), "step_s": statistics.median(step_times), "steps_s": sum(step_times),
            "loss": loss}


def _put_result(queue: Any, target: Callable[..., dict], args: tuple) -> None:
    queue.put(target(*args))


def run_spawned(target: Callable[..., dict], *args: Any, env: dict[str, str] | None = None) -> tuple[dict, float]:
    """`target(*args)` in a fresh spawned process, with `env` added to its environment from its start; (its result,
    seconds from spawn to the process's end), so the interpreter start and every import count as they do for a
    script a user runs."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_put_result, args=(queue, target, args))
    t0 = time.perf_counter()
    with environ(env or {}):  # the child copies the environment as it starts (glibc reads malloc's there)
        proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():  # it failed: its traceback is on stderr already
                raise SystemExit(f"{target.__name__} ended with exit code {proc.exitcode} and no result") from None
    proc.join()
    return result, time.perf_counter() - t0
