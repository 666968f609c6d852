"""The embedded demo's training stage against a plain single-process PyTorch SAMI loop, side by side, one run.

Both train SmolLM2-135M on the same examples (the demo's first samples stage: 24 queries, N = 2, prompts of about
100 tokens, answers of up to 80) for the demo's epochs with the demo's optimizer and learning rate, and both
start from the model on disk and end with the trained model written to disk.
- ours: `sami_ray.train.train` as a run calls it: a Ray Train worker group (the demo's one worker), DeepSpeed at the
  demo's ZeRO stage, the shared-prefix step, checkpointed reports, the export fetched back through the store.
- plain: one process, `AutoModelForCausalLM` + `torch.optim.AdamW`, each step the forward and backward over all
  N x N (prompt, answer) pairs as separate sequences (no prefix sharing), gradient clipping, `save_pretrained`.
Each is timed from start to the model on disk; the plain loop runs in a fresh process with the same CPU threads.

    python benchmarks/bench_demo_train.py                       # samples the demo's examples first (~2 min)
    python benchmarks/bench_demo_train.py --examples FILE.jsonl # a samples stage's examples.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path


def _demo_config(storage: str):
    from sami_ray.config import demo_config_path, load_config

    return load_config(demo_config_path(), [f"storage.uri={storage}", "constitutions.write_with_writer=false"])


def _sample_demo_examples(workdir: Path) -> Path:
    """The demo's first samples stage, made by the run's own stage loop (the configured phrasing, no writer)."""
    from sami_ray.driver import Run

    run = Run.start(_demo_config(str(workdir / "runs")), run_id="bench")
    try:
        principles = run.loop.principles()
        train, _ = run.loop.queries()
        path = run.loop.samples(1, None, run.loop.iteration_queries(1, train), principles)
        out = workdir / "examples.jsonl"
        out.write_bytes(path.read_bytes())
        return out
    finally:
        run.shutdown()


def _ours(examples: Path, model: str, workdir: Path) -> dict:
    import ray

    from sami_ray.runtime import ensure_ray
    from sami_ray.train import train

    cfg = _demo_config(str(workdir / "runs"))
    ensure_ray(cfg.resources)
    t0 = time.perf_counter()
    result = train(examples_path=str(examples), init_model_path=model, ref_model_path=None, trainer_cfg=cfg.trainer,
                   output_dir=str(workdir / "ours" / "model"), storage_path=str(workdir / "ours-train"),
                   resources=cfg.resources.trainer, seed=0, max_prompt_tokens=cfg.task.max_prompt_tokens)
    wall = time.perf_counter() - t0
    steps = [m for m in result.metrics if "step_time_s" in m]
    ray.shutdown()
    return {"wall_s": wall, "steps": result.summary["steps"],
            "step_s": statistics.median(m["step_time_s"] for m in steps) if steps else float("nan"),
            "loss": result.summary.get("loss")}


def _plain(examples: str, model_path: str, out_dir: str, threads: int, lr: float, epochs: float,
           max_grad_norm: float | None, max_prompt_tokens: int | None, queue) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sami_ray.sami.data import load_examples, tokenize_example
    from sami_ray.train.step import PairScorer, sami_objective

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    rows = [tokenize_example(tok, ex, max_prompt_tokens=max_prompt_tokens) for ex in load_examples(examples)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scorer = PairScorer(model, "reference", 512, pad)  # every pair a separate sequence
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    step_times = []
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    for i in order[:max(1, int(epochs * len(rows)))]:
        s0 = time.perf_counter()
        out = sami_objective(scorer([rows[i]]), None, batch_size=1, n=rows[i].n)
        out.loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - s0)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    queue.put({"wall_s": time.perf_counter() - t0, "steps": len(step_times),
               "step_s": statistics.median(step_times), "loss": float(out.loss)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=Path, help="a samples stage's examples.jsonl (default: sample the demo's)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    args = p.parse_args()

    from sami_ray.models import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="bench-demo-train-") as tmp:
        workdir = Path(tmp)
        examples = args.examples or _sample_demo_examples(workdir)
        cfg = _demo_config(str(workdir / "runs"))
        model = str(resolve_model_path(cfg.models.policy.path, cfg.models.policy.gguf_file))
        t = cfg.trainer
        threads = max(1, int(cfg.resources.trainer.num_cpus))
        ctx = mp.get_context("spawn")
        results: dict[str, list[dict]] = {"ours": [], "plain": []}
        for r in range(args.repeats):
            queue = ctx.Queue()
            proc = ctx.Process(target=_plain, args=(str(examples), model, str(workdir / f"plain-{r}"), threads, t.lr,
                                                    t.epochs, t.max_grad_norm, cfg.task.max_prompt_tokens, queue))
            proc.start()
            results["plain"].append(queue.get())
            proc.join()
            results["ours"].append(_ours(examples, model, workdir / f"ours-{r}"))
        n = sum(1 for _ in open(examples))
        print(f"demo training stage, SmolLM2-135M, {n} examples, epochs {t.epochs}, {threads} threads "
              f"(medians of {args.repeats})")
        print(f"{'':<8}{'wall s':>9}{'steps':>7}{'step s':>9}{'last loss':>11}")
        med = {}
        for name, runs in results.items():
            med[name] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "step_s")}
            print(f"{name:<8}{med[name]['wall_s']:>9.1f}{runs[-1]['steps']:>7}{med[name]['step_s']:>9.2f}"
                  f"{runs[-1]['loss']:>11.4f}")
        print(f"ours / plain: wall {med['ours']['wall_s'] / med['plain']['wall_s']:.2f}x, "
              f"step {med['ours']['step_s'] / med['plain']['step_s']:.2f}x")
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
