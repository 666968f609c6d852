"""The shared-prefix SAMI step against the reference step: step time and peak memory, side by side, one run.

Model: a 2-layer Mixtral with a 32k vocabulary (random weights, hidden 512, 4 experts, top-2). Batch: one query,
N = 4 constitutions, prompts of about 300 tokens, responses of about 80. One step = forward + backward of the SAMI
loss over all N x N pairs.

Each measurement runs in a fresh process (alternating implementations), so peak memory is that process's own:
on CPU the resident-set high-water mark (Linux VmHWM, reset through /proc/self/clear_refs after the model is
built, so it counts the step only, not start-up); on CUDA `torch.cuda.max_memory_allocated`. Memory is the peak
above the baseline after the model and optimizer-free gradients exist (the step's own working memory).

    python benchmarks/bench_train_step.py                    # CPU, fp32, 1 thread
    python benchmarks/bench_train_step.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time


def mixtral_config(*, vocab: int, hidden: int, layers: int, intermediate: int | None = None, experts: int = 4,
                   top_k: int = 2, heads: int | None = None, kv_heads: int | None = None):
    """A Mixtral config; unset sizes follow this benchmark's small shape (head size 64, 2 query heads per KV head)."""
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads or hidden // 64,
                         num_key_value_heads=kv_heads or max(1, hidden // 128), num_local_experts=experts,
                         num_experts_per_tok=top_k, max_position_embeddings=4096, tie_word_embeddings=False)


def build_model(config, device: str, dtype: str, seed: int = 0):
    """Random weights, made on `device` in `dtype` (a large model never passes through host memory in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.train()
    return model


def random_example(*, n: int, prompt_tokens: int, response_tokens: int, vocab: int, seed: int = 0):
    """One query's N prompts and N responses of random ids, lengths jittered by up to 15 tokens (at least 2)."""
    from sami_ray.sami.data import TokenizedExample

    rng = random.Random(seed)
    jitter = min(15, prompt_tokens // 4, response_tokens // 4)

    def ids(length: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(max(2, length + rng.randint(-jitter, jitter)))]

    prompts = [ids(prompt_tokens) for _ in range(n)]
    responses = [ids(response_tokens) for _ in range(n)]
    return TokenizedExample(prompts, responses)


def _build(args):
    config = mixtral_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers)
    return build_model(config, args.device, args.dtype)


def _batch(args):
    return [random_example(n=args.n, prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                           vocab=args.vocab, seed=args.seed)]


def peak_reset(device: str) -> float:
    """Start a new peak-memory window; returns the memory in use now (MiB)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    return _status_kb("VmRSS") / 1024


def peak_read(device: str) -> float:
    """The peak since `peak_reset` (MiB): CUDA max allocated, or the RSS high-water mark on CPU."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(impl: str, args, queue) -> None:
    import torch

    from sami_ray.train.step import PairScorer, sami_objective

    torch.set_num_threads(args.threads)
    model = _build(args)
    batch = _batch(args)
    scorer = PairScorer(model, impl, chunk_size=args.chunk, pad_token_id=0)

    def step():
        out = sami_objective(scorer(batch), None, batch_size=1, n=args.n)
        out.loss.backward()
        return out

    step()  # warm-up: allocator, kernels, and the .grad buffers, which both implementations need alike
    times, peaks = [], []
    for _ in range(args.steps):
        base = peak_reset(args.device)
        t0 = time.perf_counter()
        out = step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peaks.append(peak_read(args.device) - base)
        del out
    queue.put((impl, times, peaks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=300)
    p.add_argument("--response-tokens", type=int, default=80)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--steps", type=int, default=2, help="timed steps per process (after one warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="processes per implementation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, list[float]]] = {"reference": {"t": [], "m": []}, "shared_prefix": {"t": [], "m": []}}
    for _ in range(args.repeats):
        for impl in ("reference", "shared_prefix"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(impl, args, queue))
            proc.start()
            name, times, peaks = queue.get()
            proc.join()
            results[name]["t"] += times
            results[name]["m"] += peaks

    med = {k: (statistics.median(v["t"]), statistics.median(v["m"])) for k, v in results.items()}
    print(f"SAMI step, 2-layer Mixtral vocab {args.vocab}, hidden {args.hidden}, N={args.n}, prompts ~"
          f"{args.prompt_tokens}, responses ~{args.response_tokens}, {args.device} {args.dtype}, "
          f"{args.threads} thread(s); medians of {args.steps * args.repeats} steps")
    mem_kind = "CUDA max allocated" if args.device == "cuda" else "RSS high-water (VmHWM)"
    print(f"{'impl':<15}{'step time (s)':>15}{'peak mem (MiB)':>18}   [{mem_kind}, above baseline]")
    for k, (t, m) in med.items():
        print(f"{k:<15}{t:>15.3f}{m:>18.1f}")
    (tr, mr), (ts, ms) = med["reference"], med["shared_prefix"]
    print(f"speed-up (reference / shared_prefix): {tr / ts:.2f}x   "
          f"memory ratio (shared_prefix / reference): {ms / max(mr, 1e-9):.3f}x")


if __name__ == "__main__":
    main()
