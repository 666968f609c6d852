"""The same training loop in a plain process and inside a Ray Train worker group, alternating, several rounds.

What the demo's training stage pays for running its steps inside Ray Train, apart from the group's start and end
(bench_demo_train.py measures the whole stage). Both hosts run one loop: `plain_train` with the trainer's
shared-prefix step and fused AdamW over the demo's iteration-1 examples, as many threads as the demo gives its
trainer, on the run's own local Ray (started as `sami-ray run` starts it, and idle beside both hosts):
- process: a spawned process (no Ray in it);
- ray train: a one-worker `TorchTrainer` group with the demo's trainer resources.
The hosts take turns, so a machine that speeds up or slows down over minutes touches both. Per round it prints
the sum of step times (the first step included) and the median step; at the end the medians over rounds and
their ratio.

    python benchmarks/bench_train_host.py             # 3 rounds, about 10 minutes on 2 cores
    python benchmarks/bench_train_host.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _demo_common import demo_config, demo_samples, plain_train, run_spawned


def _loop(examples: str, model_path: str, threads: int, trainer_cfg: Any, max_prompt_tokens: int | None,
          seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sami_ray.sami.data import load_examples

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return plain_train(model, tok, load_examples(examples), trainer_cfg, max_prompt_tokens=max_prompt_tokens,
                       seed=seed, plain_optimizer="ours", step_impl="shared_prefix")


def _in_ray_train(args: tuple, resources: dict, storage: str) -> dict:
    import _demo_common
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.cloudpickle.register_pickle_by_value(_demo_common)  # benchmarks/ is not on the worker's path

    out = Path(storage) / "figures.json"  # a report without a checkpoint leaves no metrics on the result

    def worker(config: dict) -> None:
        out.write_text(json.dumps(_loop(*config["args"])))

    TorchTrainer(worker, train_loop_config={"args": args},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker=resources),
                 torch_config=TorchConfig(backend="gloo"), run_config=RunConfig(storage_path=storage)).fit()
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="turns of each host")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE on the demo's config")
    args = p.parse_args()

    from sami_ray.actors.placement import bundle
    from sami_ray.models import resolve_model_path
    from sami_ray.runtime import ensure_ray
    from sami_ray.sami.seeds import derive_seed

    with tempfile.TemporaryDirectory(prefix="bench-train-host-") as tmp:
        # Only the samples are wanted: no trainer is started beside the sampling.
        cfg = demo_config(f"{tmp}/runs", ["constitutions.write_with_writer=false", "evaluation.enabled=false",
                                           "trainer.start_early=never", *args.overrides])
        examples = demo_samples(cfg, Path(tmp) / "examples.jsonl")
        model = str(resolve_model_path(cfg.models.policy.path, cfg.models.policy.gguf_file))
        threads = max(1, int(cfg.resources.trainer.num_cpus))
        loop_args = (str(examples), model, threads, cfg.trainer, cfg.task.max_prompt_tokens,
                     derive_seed(cfg.run.seed, "train", 1))
        ensure_ray(cfg.resources)  # the run's local Ray, idle beside the process host too
        hosts = {"process": lambda: run_spawned(_loop, *loop_args)[0],
                 "ray train": lambda: _in_ray_train(loop_args, bundle(cfg.resources.trainer), f"{tmp}/train")}
        sums: dict[str, list[float]] = {name: [] for name in hosts}
        medians: dict[str, list[float]] = {name: [] for name in hosts}
        print(f"{sum(1 for _ in open(examples))} examples, {threads} threads, step {cfg.trainer.step_impl}")
        print(f"{'round':<7}{'host':<11}{'steps':>6}{'sum of steps s':>16}{'median step s':>15}")
        for k in range(1, args.rounds + 1):
            for name, run in hosts.items():
                r = run()
                sums[name].append(r["steps_s"])
                medians[name].append(r["step_s"])
                print(f"{k:<7}{name:<11}{r['steps']:>6}{r['steps_s']:>16.1f}{r['step_s']:>15.2f}", flush=True)
        mid = {name: statistics.median(v) for name, v in sums.items()}
        print("median over rounds, sum of steps: " + ", ".join(f"{n} {v:.1f} s" for n, v in mid.items()))
        print(f"ray train / process: sum of steps {mid['ray train'] / mid['process']:.2f}x, median step "
              f"{statistics.median(medians['ray train']) / statistics.median(medians['process']):.2f}x")


if __name__ == "__main__":
    main()
