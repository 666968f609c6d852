"""The embedded demo's training stage against a plain single-process PyTorch SAMI loop, side by side, one run.

Both train SmolLM2-135M on the same examples (the demo's iteration-1 samples: 24 queries, N = 2, prompts of about
65 tokens, answers of up to 80) for the demo's epochs with the demo's optimizer and learning rate, and both start
from the model on disk and end with the trained model written to disk.
- ours: the demo's own sampling and training stages, as `sami-ray run` walks them (principles and iteration-1
  samples first, the sampler pool alive beside the trainer as in the demo): a Ray Train worker group, DeepSpeed at
  the demo's ZeRO stage, the shared-prefix step, the export fetched back and committed to the run store. Its times
  are those the run itself records (`iter1_sample`, `iter1_train`). It runs twice: the worker group started while
  the samples are drawn (trainer.start_early=always), and started after them (never; what the demo's "auto" does
  on a machine whose cores its sampler and trainer share).
- plain: one process after Ray is shut down, `AutoModelForCausalLM` + `torch.optim.AdamW`, each step the forward
  and backward over all N x N (prompt, answer) pairs as separate sequences (no prefix sharing), gradient
  clipping, `save_pretrained`, with as many CPU threads as the demo gives its trainer. Its wall time starts once
  torch and transformers are imported; the "script" time also counts the process start and those imports, which
  the stage pays in its worker process. It runs a second time with the malloc settings our CPU training workers
  get (train/trainer.py CPU_WORKER_MALLOC), to show how much of the difference that setting alone makes.
Sampling with the early group beside it may take longer than without (on 2 cores the two share the CPUs), so the
sum of sampling and training is printed for both runs of ours. Ours also prints where the stage's time went (the
trainer's `phases`: worker group start, setup, engines, steps, gather, write, fetch).

    python benchmarks/bench_demo_train.py            # about 11 minutes on 2 cores
    python benchmarks/bench_demo_train.py --set trainer.dtype=bfloat16   # the demo with other settings
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _demo_common import demo_config, plain_train, run_spawned, sample_iteration_1

from sami_ray.train.trainer import CPU_WORKER_MALLOC


def _demo_config(storage: str, overrides: list[str]):
    # The writer's phrasing and the evaluation do not change what training does; they are left out for time.
    return demo_config(storage, ["constitutions.write_with_writer=false", "evaluation.enabled=false", *overrides])


def _ours(workdir: Path, overrides: list[str], start_early: str) -> tuple[dict, Path]:
    """The demo's iteration-1 sampling and training stages inside a run, the worker group started as `start_early`
    says (always or never); (figures, the examples it trained on)."""
    import ray

    from sami_ray.driver import Run

    cfg = _demo_config(str(workdir / start_early / "runs"), [*overrides, f"trainer.start_early={start_early}"])
    run = Run.start(cfg, run_id="bench")
    try:
        kept = workdir / start_early / "examples.jsonl"
        run.loop.model(1, None, sample_iteration_1(run.loop, kept))
        stats = run.store.store.get_json("iter-0001/train_metrics.json")
    finally:
        run.shutdown()
        ray.shutdown()
    steps = [m["step_time_s"] for m in stats["metrics"] if "step_time_s" in m]
    return {"sample_s": run.timings["iter1_sample"], "wall_s": run.timings["iter1_train"],
            "steps": stats["summary"]["steps"], "step_s": statistics.median(steps),
            "loss": stats["summary"].get("loss"), "phases": stats["summary"].get("phases", {})}, kept


def _plain(examples: str, model_path: str, out_dir: str, threads: int, trainer_cfg, max_prompt_tokens: int | None,
           seed: int, plain_optimizer: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sami_ray.sami.data import load_examples

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    stats = plain_train(model, tok, load_examples(examples), trainer_cfg, max_prompt_tokens=max_prompt_tokens,
                        seed=seed, plain_optimizer=plain_optimizer)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"wall_s": time.perf_counter() - t0, **stats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE on the demo's config")
    p.add_argument("--plain-optimizer", choices=["torch", "ours"], default="torch",
                   help="the plain loop's optimizer: torch's defaults (as a plain script), or the trainer's (fused)")
    args = p.parse_args()

    from sami_ray.models import resolve_model_path
    from sami_ray.sami.seeds import derive_seed

    with tempfile.TemporaryDirectory(prefix="bench-demo-train-") as tmp:
        workdir = Path(tmp)
        early, examples = _ours(workdir, args.overrides, "always")
        after, _ = _ours(workdir, args.overrides, "never")
        cfg = _demo_config(str(workdir / "runs"), args.overrides)
        model = str(resolve_model_path(cfg.models.policy.path, cfg.models.policy.gguf_file))
        t = cfg.trainer
        threads = max(1, int(cfg.resources.trainer.num_cpus))
        # The stage's seed, so the plain loop walks the examples in the trainer's order.
        seed = derive_seed(cfg.run.seed, "train", 1)
        plain_args = (str(examples), model, str(workdir / "plain"), threads, t, cfg.task.max_prompt_tokens, seed,
                      args.plain_optimizer)
        plain, script_s = run_spawned(_plain, *plain_args)
        # As a user runs it: interpreter start and imports too, as the stage pays them in its worker process.
        plain["script_s"] = script_s
        # The same loop given the malloc settings of our CPU workers: how much of our lead is that setting alone.
        tuned, _ = run_spawned(_plain, *plain_args, env=CPU_WORKER_MALLOC)
        n = sum(1 for _ in open(examples))
        print(f"demo training stage, SmolLM2-135M, {n} examples, epochs {t.epochs}, {threads} threads, "
              f"dtype {t.dtype}, ZeRO stage {t.zero_stage}, plain optimizer: {args.plain_optimizer}")
        print(f"{'':<22}{'sampling s':>11}{'training s':>11}{'sum s':>8}{'steps':>7}{'step s':>8}{'last loss':>11}")
        for name, r in (("ours, early start", early), ("ours, after sampling", after)):
            print(f"{name:<22}{r['sample_s']:>11.1f}{r['wall_s']:>11.1f}{r['sample_s'] + r['wall_s']:>8.1f}"
                  f"{r['steps']:>7}{r['step_s']:>8.2f}{r['loss']:>11.4f}")
        print(f"{'plain':<22}{'':>11}{plain['wall_s']:>11.1f}{'':>8}{plain['steps']:>7}{plain['step_s']:>8.2f}"
              f"{plain['loss']:>11.4f}")
        print(f"{'plain, malloc as ours':<22}{'':>11}{tuned['wall_s']:>11.1f}{'':>8}{tuned['steps']:>7}"
              f"{tuned['step_s']:>8.2f}{tuned['loss']:>11.4f}")
        print(f"plain as a script (process start and imports included): {plain['script_s']:.1f} s")
        for name, r in (("early start", early), ("after sampling", after)):
            print(f"ours ({name}), where the stage's time went: " +
                  ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items()))
        for name, r in (("early start", early), ("after sampling", after)):
            print(f"ours ({name}) / plain: training {r['wall_s'] / plain['wall_s']:.2f}x (against the script "
                  f"{r['wall_s'] / plain['script_s']:.2f}x), step {r['step_s'] / plain['step_s']:.2f}x")
        for name, r in (("early start", early), ("after sampling", after)):
            print(f"ours ({name}) / plain with our malloc settings: training {r['wall_s'] / tuned['wall_s']:.2f}x, "
                  f"step {r['step_s'] / tuned['step_s']:.2f}x")
        print(f"early start / after sampling: sampling {early['sample_s'] / after['sample_s']:.2f}x, training "
              f"{early['wall_s'] / after['wall_s']:.2f}x, sampling + training "
              f"{(early['sample_s'] + early['wall_s']) / (after['sample_s'] + after['wall_s']):.2f}x")
        print(json.dumps({"ours_early": early, "ours_after": after, "plain": plain, "plain_our_malloc": tuned}))


if __name__ == "__main__":
    main()
