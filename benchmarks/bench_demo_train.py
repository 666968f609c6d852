"""The embedded demo's training stage against a plain single-process PyTorch SAMI loop, side by side, one run.

Both train SmolLM2-135M on the same examples (the demo's iteration-1 samples: 24 queries, N = 2, prompts of about
65 tokens, answers of up to 80) for the demo's epochs with the demo's optimizer and learning rate, and both start
from the model on disk and end with the trained model written to disk.
- ours: the demo's own sampling and training stages, as `sami-ray run` walks them (principles and iteration-1
  samples first, the sampler pool alive beside the trainer as in the demo): a Ray Train worker group, DeepSpeed at
  the demo's ZeRO stage, the shared-prefix step, the export fetched back and committed to the run store. Its times
  are those the run itself records (`iter1_sample`, `iter1_train`). It runs with the worker group started after
  the samples are drawn (trainer.start_early=never; what the demo's "auto" does on a machine whose cores its
  sampler and trainer share), and once with the group started while they are drawn (always).
- plain: one process after Ray is shut down, `AutoModelForCausalLM` + `torch.optim.AdamW`, each step the forward
  and backward over all N x N (prompt, answer) pairs as separate sequences (no prefix sharing), gradient
  clipping, `save_pretrained`, with as many CPU threads as the demo gives its trainer. Its wall time starts once
  torch and transformers are imported; the "script" time also counts the process start and those imports, which
  the stage pays in its worker process. It runs once more with the malloc settings our CPU training workers get
  (train/trainer.py CPU_WORKER_MALLOC), to show how much of the difference that setting alone makes.
The machine's speed drifts (by 20% and more on a shared 2-core machine), so ours (after sampling) and plain run in
rounds (`--rounds`, default 3), the order alternating, and the ratios are taken within each round; their median is
the figure.
Sampling with the early group beside it may take longer than without (on 2 cores the two share the CPUs), so the
sum of sampling and training is printed for both runs of ours. Ours also prints where the stage's time went (the
trainer's `phases`: worker group start, setup, engines, steps, gather, write, fetch).

    python benchmarks/bench_demo_train.py            # about 17 minutes on 2 cores
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


def _ratio_line(label: str, ours: list[float], plain: list[float]) -> str:
    ratios = [o / q for o, q in zip(ours, plain, strict=True)]
    return (f"{label}: median {statistics.median(ratios):.2f}x (rounds: "
            + ", ".join(f"{r:.2f}x" for r in ratios) + ")")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE on the demo's config")
    p.add_argument("--plain-optimizer", choices=["torch", "ours"], default="torch",
                   help="the plain loop's optimizer: torch's defaults (as a plain script), or the trainer's (fused)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (ours after sampling, plain), each round's ratio taken within it (default 3)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")

    from sami_ray.models import resolve_model_path
    from sami_ray.sami.seeds import derive_seed

    with tempfile.TemporaryDirectory(prefix="bench-demo-train-") as tmp:
        workdir = Path(tmp)
        early, examples = _ours(workdir, args.overrides, "always")
        cfg = _demo_config(str(workdir / "runs"), args.overrides)
        model = str(resolve_model_path(cfg.models.policy.path, cfg.models.policy.gguf_file))
        t = cfg.trainer
        threads = max(1, int(cfg.resources.trainer.num_cpus))
        # The stage's seed, so the plain loop walks the examples in the trainer's order.
        seed = derive_seed(cfg.run.seed, "train", 1)
        plain_args = (str(examples), model, str(workdir / "plain"), threads, t, cfg.task.max_prompt_tokens, seed,
                      args.plain_optimizer)

        def plain_run(env: dict[str, str] | None = None) -> dict:
            plain, script_s = run_spawned(_plain, *plain_args, env=env)
            # As a user runs it: interpreter start and imports too, as the stage pays them in its worker process.
            return {**plain, "script_s": script_s}

        # The machine's speed drifts by 20% and more within minutes: each round runs both, the order alternating,
        # and only ratios within a round are compared.
        rounds = []
        for r in range(args.rounds):
            if r % 2 == 0:
                after, _ = _ours(workdir / f"round{r}", args.overrides, "never")
                plain = plain_run()
            else:
                plain = plain_run()
                after, _ = _ours(workdir / f"round{r}", args.overrides, "never")
            rounds.append({"ours_after": after, "plain": plain})
        # The same loop given the malloc settings of our CPU workers: how much of our lead is that setting alone.
        tuned = plain_run(CPU_WORKER_MALLOC)
        n = sum(1 for _ in open(examples))
        print(f"demo training stage, SmolLM2-135M, {n} examples, epochs {t.epochs}, {threads} threads, "
              f"dtype {t.dtype}, ZeRO stage {t.zero_stage}, plain optimizer: {args.plain_optimizer}")
        print(f"{'':<30}{'sampling s':>11}{'training s':>11}{'sum s':>8}{'steps':>7}{'step s':>8}{'last loss':>11}")
        ours_rows = [("ours, early start", early)] + [(f"ours, after sampling, round {i + 1}", x["ours_after"])
                                                      for i, x in enumerate(rounds)]
        for name, o in ours_rows:
            print(f"{name:<30}{o['sample_s']:>11.1f}{o['wall_s']:>11.1f}{o['sample_s'] + o['wall_s']:>8.1f}"
                  f"{o['steps']:>7}{o['step_s']:>8.2f}{o['loss']:>11.4f}")
        plain_rows = [(f"plain, round {i + 1}", x["plain"]) for i, x in enumerate(rounds)]
        for name, q in [*plain_rows, ("plain, malloc as ours", tuned)]:
            print(f"{name:<30}{'':>11}{q['wall_s']:>11.1f}{'':>8}{q['steps']:>7}{q['step_s']:>8.2f}"
                  f"{q['loss']:>11.4f}   (as a script: {q['script_s']:.1f} s)")
        for name, o in ours_rows[:2]:
            print(f"{name}, where the stage's time went: " + ", ".join(f"{k} {v:.1f}" for k, v in o["phases"].items()))
        ours_s = [x["ours_after"]["wall_s"] for x in rounds]
        print(_ratio_line("ours (after sampling) / plain, training", ours_s, [x["plain"]["wall_s"] for x in rounds]))
        print(_ratio_line("ours (after sampling) / plain as a script, training", ours_s,
                          [x["plain"]["script_s"] for x in rounds]))
        print(_ratio_line("ours (after sampling) / plain, step", [x["ours_after"]["step_s"] for x in rounds],
                          [x["plain"]["step_s"] for x in rounds]))
        first = rounds[0]
        print(f"ours (early start) / plain of round 1: training {early['wall_s'] / first['plain']['wall_s']:.2f}x "
              f"(against the script {early['wall_s'] / first['plain']['script_s']:.2f}x), "
              f"step {early['step_s'] / first['plain']['step_s']:.2f}x")
        print(f"plain with our malloc settings / plain of the last round: training "
              f"{tuned['wall_s'] / rounds[-1]['plain']['wall_s']:.2f}x, "
              f"step {tuned['step_s'] / rounds[-1]['plain']['step_s']:.2f}x")
        after = first["ours_after"]
        print(f"early start / after sampling of round 1: sampling {early['sample_s'] / after['sample_s']:.2f}x, "
              f"training {early['wall_s'] / after['wall_s']:.2f}x, sampling + training "
              f"{(early['sample_s'] + early['wall_s']) / (after['sample_s'] + after['wall_s']):.2f}x")
        print(json.dumps({"ours_early": early, "rounds": rounds, "plain_our_malloc": tuned}))


if __name__ == "__main__":
    main()
