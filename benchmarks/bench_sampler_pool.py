"""Sampling throughput of the SamplerPool against the bare engine on the same prompts, side by side, one run.

The bare engine runs in this process; the pool runs the same engine inside one Ray actor (the CPUs of this machine
given to it), so the ratio is the price of the actor, the sharding and the transfer of answers. Rounds alternate
(engine, pool, engine, pool, ...) so drift on a shared machine hits both; the figures are medians.

    python benchmarks/bench_sampler_pool.py                       # the demo's SmolLM2-135M, 48 prompts x 80 tokens
    python benchmarks/bench_sampler_pool.py --model PATH --replicas 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _tokens(out) -> int:
    return sum(g.num_tokens for gens in out for g in gens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray and the pool")
    args = ap.parse_args()

    import ray

    from sami_ray.actors.sampler import SamplerPool
    from sami_ray.config import QueriesConfig, RoleResources, SamplerConfig
    from sami_ray.engines import SamplingSpec, make_engine
    from sami_ray.inputs import load_run_queries
    from sami_ray.models import resolve_model_path
    from sami_ray.runtime import apply_process_env, runtime_env
    from sami_ray.sami.seeds import derive_seed

    apply_process_env()
    path = str(resolve_model_path(args.model))
    queries = load_run_queries(QueriesConfig(source="builtin:howto", held_out=0))
    items = [(f"q{i}", queries[i % len(queries)].text) for i in range(args.prompts)]
    spec = SamplingSpec(n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    cfg = SamplerConfig(replicas=args.replicas, batch_size=max(1, args.prompts // args.replicas))

    engine = make_engine(path, "vllm", cfg.engine)
    ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env=runtime_env())
    pool = SamplerPool(path, cfg, RoleResources(num_cpus=args.cpus // args.replicas), runtime_env=runtime_env())
    seeds = [derive_seed(spec.seed, i) for i, _ in items]
    prompts = [p for _, p in items]
    engine.generate(prompts[:4], spec, seeds[:4])  # warm-up both
    pool.generate(prompts[:4], spec, seeds[:4])

    rates: dict[str, list[float]] = {"engine": [], "pool": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        out = engine.generate(prompts, spec, seeds)
        rates["engine"].append(_tokens(out) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        out = pool.generate(prompts, spec, seeds)
        rates["pool"].append(_tokens(out) / (time.perf_counter() - t0))
    pool.shutdown()
    ray.shutdown()

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"model {args.model}, {args.prompts} prompts x <= {args.max_tokens} tokens, {args.rounds} rounds, "
          f"pool of {args.replicas} replica(s) on {args.cpus} CPUs")
    for k, v in rates.items():
        print(f"  {k:6s} median {med[k]:8.1f} tok/s   rounds {[round(x, 1) for x in v]}")
    print(f"  pool / engine = {med['pool'] / med['engine']:.2f}x")


if __name__ == "__main__":
    main()
