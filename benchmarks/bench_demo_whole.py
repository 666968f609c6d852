"""The whole embedded demo against a plain single-process PyTorch SAMI loop doing the same work, side by side, one run.

- ours: the demo as `sami-ray run` runs it (its config, `Run.start`, the CLI's own run-and-report: quiet terminal,
  log file in the run folder, the final table), its store in a temp folder. Its wall time runs from before the
  driver is imported to the end (Ray, the sampler pool, the Ray Train worker group all start inside it). Its stages
  are the times the run records (`run.timings`), each counted once: a role's start-up (sampler pool, weight sync)
  that happens inside a stage is taken out of that stage and shown as "engines".
- plain: after Ray is shut down, ONE spawned process, timed from the spawn (interpreter start and imports count),
  that does the demo's work with transformers and torch alone, on one model in memory:
  - principles: the same writer code (PrincipleWriterCore, the demo's options and seed) over that model;
  - each iteration: the same training-query window, the same constitutions (`constitutions_per_query`, same
    config, seed and tag), the same prompts and sampling settings (temperature, top_p, max_tokens), answered with
    `model.generate` in left-padded batches of sampler.batch_size, the same response filters;
  - training: the trainer's reference step (`PairScorer(model, "reference")` + `sami_objective`), its optimizer,
    LR schedule, epochs, data order and clipping (benchmarks/_demo_common.py), then the model saved to disk, as the
    demo exports and commits each iteration's model;
  - evaluation: `evaluate_iteration` itself (iteration 0 = the base model, then each iteration; the held-out
    queries under each constitution with the demo's eval seeds, MI bound, verifiable and degeneration figures)
    with that model behind the Policy shape (the HF engine's scoring); the degeneration guard's rollback or stop
    acts as in the stage loop.
  When ours ran, plain trains and evaluates on ours' principles (it still writes its own, for the time), so both
  see the same constitutions; the MI bounds and principle rates printed per iteration show both did the same work.
  Sampling differs by nature (vLLM with a seed per prompt vs HF with a seed per batch), so figures agree only
  roughly.

    python benchmarks/bench_demo_whole.py                        # the demo's setting: the lead runs it, quiet machine
    python benchmarks/bench_demo_whole.py --iterations 1 --set run.train_queries=4 --set task.queries.held_out=4
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _demo_common import demo_config, plain_train, run_spawned

STAGES = ("principles", "sampling", "training", "evaluation", "engines", "other")
LABELS = {"principles": "principles/writer", "sampling": "sampling", "training": "training (incl. save)",
          "evaluation": "evaluation", "engines": "engines / model load", "other": "other (start, imports)"}


# ---------------------------------------------------------------- ours

class _OwnTimes:
    """Wraps a run's `timed`: each stage's time without the stages timed inside it (a pool started by the writer,
    a weight sync inside sampling), so no second is counted twice."""

    def __init__(self, timed: Any):
        self.timed, self.inner, self.own = timed, [], defaultdict(float)

    def __call__(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.measure(name, self.timed, name, fn, *args, **kwargs)

    def measure(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), its time kept under `name` (the run's own timings and lines untouched)."""
        self.inner.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            self.own[name] += dt - self.inner.pop()
            if self.inner:
                self.inner[-1] += dt


def _stage_of(name: str) -> str:
    """The table's row of a timing the run records (`principles`, `iterK_sample`, `sampler_start`, ...)."""
    if name == "principles":
        return "principles"
    kind = re.fullmatch(r"iter\d+_(\w+)", name)
    if kind:
        return {"sample": "sampling", "import": "sampling", "train": "training", "eval": "evaluation"}.get(
            kind.group(1), "other")
    return "engines"  # ray_start, sampler_start, weight_sync, judge_start, sampler_model_start


def _ours(cfg: Any) -> dict:
    t0 = time.perf_counter()
    from sami_ray import logs, roles
    from sami_ray.cli.app import _run_and_report
    from sami_ray.driver import Run

    start_ray = roles.ensure_ray
    with logs.session(False):  # as `sami-ray run` (no -v): quiet terminal, the rest in RUN/logs/sami-ray.log
        run = Run.start(cfg, run_id="bench", progress=logs.say)
        own = _OwnTimes(run.loop.timed)
        run.loop.timed = run.roles.timed = own
        # Ray's start, which the roles do inside the first stage that needs it, is an engine start too.
        roles.ensure_ray = lambda *a, **kw: own.measure("ray_start", start_ray, *a, **kw)
        try:
            logs.say(f"run: {run.store.uri}")
            _run_and_report(run)
        finally:
            roles.ensure_ray = start_ray
    total = time.perf_counter() - t0
    stages = dict.fromkeys(STAGES, 0.0)
    for name, seconds in own.own.items():
        stages[_stage_of(name)] += seconds
    stages["other"] = total - sum(stages.values())
    steps = []
    for k in range(1, cfg.run.iterations + 1):
        key = f"iter-{k:04d}/train_metrics.json"  # RunStore.put_train_metrics's key
        if run.store.store.exists(key):
            steps.append(run.store.store.get_json(key)["summary"].get("steps"))
    reports = [run.store.eval_report(k) for k in range(cfg.run.iterations + 1)]
    return {"total_s": total, "stages": stages, "timings": dict(run.timings), "train_steps": steps,
            "reports": [_brief(r) for r in reports if r], "principles": run.store.principles()}


# ---------------------------------------------------------------- plain

def _batched_hf_engine(model_path: str, dtype: str, batch: int) -> Any:
    """The HF engine (its loading and scoring) with the generation a plain loop writes: `model.generate` over
    left-padded batches, one seed per batch."""
    import torch

    from sami_ray.config import EngineOptions
    from sami_ray.engines.base import Generation, encode_prompt, prompt_seeds
    from sami_ray.engines.hf_engine import HFEngine

    class BatchedHFEngine(HFEngine):
        @torch.no_grad()
        def generate(self, prompts, spec, seeds=None):
            tok = self.tokenizer
            eos = tok.eos_token_id
            pad = tok.pad_token_id if tok.pad_token_id is not None else eos
            seeds = prompt_seeds(spec, len(prompts), seeds)
            sample = dict(do_sample=True, temperature=spec.temperature, top_p=spec.top_p) \
                if spec.temperature > 0 else dict(do_sample=False)
            out = []
            for start in range(0, len(prompts), batch):
                encoded = [encode_prompt(tok, p) for p in prompts[start:start + batch]]
                width = max(map(len, encoded))
                ids = torch.full((len(encoded), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, e in enumerate(encoded):
                    ids[row, width - len(e):] = torch.tensor(e)
                    mask[row, width - len(e):] = 1
                torch.manual_seed(seeds[start])
                gen = self.model.generate(ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=spec.max_tokens, num_return_sequences=spec.n,
                                          pad_token_id=pad, stop_strings=list(spec.stop) or None,
                                          tokenizer=tok if spec.stop else None, **sample)
                rows = gen[:, width:].tolist()
                for i in range(len(encoded)):
                    outs = []
                    for r in rows[i * spec.n:(i + 1) * spec.n]:
                        ended = eos in r
                        tokens = r[:r.index(eos)] if ended else r
                        text = tok.decode(tokens, skip_special_tokens=True)
                        cuts = [text.index(s) for s in spec.stop if s in text]
                        text = text[:min(cuts)] if cuts else text
                        outs.append(Generation(text, not (ended or cuts) and len(tokens) >= spec.max_tokens,
                                               len(tokens)))
                    out.append(outs)
            return out

    return BatchedHFEngine(model_path, EngineOptions(dtype=dtype))


def _plain(storage: str, overrides: list[str], given_principles: dict | None, out_dir: str,
           threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from sami_ray.errors import UserError
    from sami_ray.evaluate.policy import sampling_from
    from sami_ray.evaluate.runner import PromptRenderer, evaluate_iteration
    from sami_ray.inputs import check_constitutions, run_queries, seed_principles
    from sami_ray.models import resolve_model_path
    from sami_ray.roles import writes_principles
    from sami_ray.sami.constitutions import PrincipleSet, constitutions_per_query
    from sami_ray.sami.data import ResponseFilter, SamiExample
    from sami_ray.sami.prompts import chat_tokenizer_for
    from sami_ray.sami.seeds import derive_seed
    from sami_ray.sami.writer import PrincipleWriterCore

    cfg = demo_config(storage, overrides)
    c, e = cfg.constitutions, cfg.evaluation
    if cfg.models.sampler is not None or cfg.sampler.samples_file or e.judge.kind == "local":
        raise SystemExit("the plain loop does the demo's shape only: no models.sampler, sampler.samples_file or "
                         "local judge")
    stages = dict.fromkeys(STAGES, 0.0)

    def timed(stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[stage] += time.perf_counter() - t0

    spec = cfg.models.policy
    path = str(timed("engines", resolve_model_path, spec.path, spec.gguf_file))
    policy = timed("engines", _batched_hf_engine, path, cfg.trainer.dtype, cfg.sampler.batch_size)
    render = PromptRenderer(cfg.task.kind, chat_tokenizer_for(spec.chat_template, policy.tokenizer,
                                                              "models.policy.chat_template"))
    train, held_out = run_queries(cfg.task.queries)

    # Principles: the writer's own code, as Roles.write_principles runs it.
    writes = writes_principles(cfg)
    seeds = [] if writes and not (c.principles or c.file or c.builtin) else seed_principles(c)
    written = PrincipleSet(seeds, source="config")
    if writes:
        w, wspec = cfg.writer, cfg.models.writer
        same = (wspec.path, wspec.gguf_file) == (spec.path, spec.gguf_file)
        engine = policy if same else timed("engines", _batched_hf_engine, str(resolve_model_path(
            wspec.path, wspec.gguf_file)), "float32", cfg.sampler.batch_size)
        core = PrincipleWriterCore(engine, chat_tokenizer_for(wspec.chat_template, engine.tokenizer,
                                                              "models.writer.chat_template"),
                                   candidates=w.candidates, retries=w.retries, paraphrases=w.paraphrases,
                                   temperature=w.temperature)
        written = timed("principles", core.write, cfg.task.description, seeds, len(seeds) or c.num_principles,
                        fallback_to_seeds=True, seed=cfg.run.seed)
        del engine
    principles = PrincipleSet.from_dict(given_principles) if given_principles else written
    check_constitutions(principles.principles, train, c)
    check_constitutions(principles.principles, held_out, c, n=e.n or c.n, field="evaluation.n")

    def sample(k: int, queries: list) -> list:
        """As StageLoop.sample_examples: each query under its N constitutions, the filters applied."""
        plan = constitutions_per_query(queries, principles.principles, c, c.n, seed=cfg.run.seed, tag=k)
        prompts = [[render(con.text, q.text) for con in cons] for q, cons in plan]
        seeds = [derive_seed(cfg.run.seed, "sample", cfg.sampler.seed, k, q.id, j)
                 for q, cons in plan for j in range(len(cons))]
        flat = policy.generate([p for ps in prompts for p in ps], sampling_from(cfg.sampler), seeds)
        filt, kept, at = ResponseFilter.from_config(cfg.sampler.filters), [], 0
        for (q, cons), ps in zip(plan, prompts, strict=True):
            gens = [g[0] for g in flat[at:at + len(ps)]]
            at += len(ps)
            if not filt.example_reason([g.text for g in gens], [g.truncated for g in gens]):
                kept.append(SamiExample(q, cons, [g.text for g in gens], ps))
        return kept

    def evaluate(k: int, base: dict | None, previous: dict | None) -> dict | None:
        if not e.enabled or not held_out:
            return None
        return evaluate_iteration(policy, held_out, principles.principles, e, cfg.task.kind, render, k, base,
                                  cfg.run.seed, cfg.sampler, c, judge_policy=None, task_description=cfg.task.description,
                                  baseline_report=previous if e.judge.baseline == "previous" else None)

    def weights() -> dict:
        return {name: t.detach().clone() for name, t in policy.model.state_dict().items()}

    base_weights = weights() if cfg.trainer.init == "base" else None
    base = timed("evaluation", evaluate, 0, None, None)
    reports, steps, previous = [base], [], base
    for k in range(1, cfg.run.iterations + 1):
        n = cfg.run.train_queries  # the window of training queries, as StageLoop.iteration_queries moves it
        start = ((k - 1) * n) % len(train) if n and n < len(train) else 0
        queries = (train + train)[start:start + n] if n and n < len(train) else train
        examples = timed("sampling", sample, k, queries)
        if not examples:
            raise UserError(f"iteration {k}: every sampled example was dropped by the response filters")
        current = weights() if e.on_degeneration == "rollback" else None
        if base_weights is not None:
            policy.model.load_state_dict(base_weights)
        stats = timed("training", plain_train, policy.model, policy.tokenizer, examples, cfg.trainer,
                      max_prompt_tokens=cfg.task.max_prompt_tokens, seed=derive_seed(cfg.run.seed, "train", k))
        timed("training", policy.model.save_pretrained, f"{out_dir}/iter-{k}")
        steps.append(stats["steps"])
        report = timed("evaluation", evaluate, k, base, previous)
        reports.append(report)
        previous = report or previous
        action = (report or {}).get("degeneration", {}).get("action")
        if action == "rollback" and current is not None:
            policy.model.load_state_dict(current)
        elif action == "stop":
            break
    return {"stages": stages, "train_steps": steps, "reports": [_brief(r) for r in reports if r],
            "principles": written.to_dict(), "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the table

def _brief(report: dict) -> dict:
    """What the table shows of an evaluation report: the iteration, MI bound, principle rates, guard action."""
    mi = report.get("mi_bound")
    return {"iteration": report.get("iteration"), "mi_bound": mi.get("mi_bound") if isinstance(mi, dict) else mi,
            "verifiable": {p: {k: v for k, v in r.items()
                               if k in ("positive_follows", "antithesis_follows_principle", "antithesis_follows")}
                           for p, r in (report.get("verifiable") or {}).items()},
            "degeneration": (report.get("degeneration") or {}).get("action")}


def _rates(brief: dict) -> str:
    """As the demo's table prints them: the share following the principle under the principle / the antithesis."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    return ", ".join(f"{p} {pct(r.get('positive_follows'))}/{pct(r.get('antithesis_follows_principle'))}"
                     for p, r in brief["verifiable"].items())


def _print(cfg: Any, ours: dict | None, plain: dict | None) -> None:
    c = cfg.constitutions
    print(f"\nwhole demo: {cfg.models.policy.path}, {cfg.run.iterations} iterations, "
          f"train_queries {cfg.run.train_queries or 'all'}, N {c.n}, max_tokens {cfg.sampler.max_tokens}, "
          f"eval seeds {cfg.evaluation.seeds}" + (f", plain threads {plain['threads']}" if plain else ""))
    print(f"{'stage':<24}{'ours s':>9}{'plain s':>9}{'ours/plain':>12}")
    rows = [(LABELS[s], s) for s in STAGES] + [("total", "total")]
    for label, key in rows:
        a = (ours["total_s"] if key == "total" else ours["stages"][key]) if ours else None
        b = (plain["total_s"] if key == "total" else plain["stages"][key]) if plain else None
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        print(f"{label:<24}{a if a is not None else float('nan'):>9.1f}"
              f"{b if b is not None else float('nan'):>9.1f}{ratio:>12}")
    for name, r in (("ours", ours), ("plain", plain)):
        if r is None:
            continue
        print(f"{name}: training steps per iteration {r['train_steps']}")
        for b in r["reports"]:
            mi = "-" if b["mi_bound"] is None else f"{b['mi_bound']:.3f}"
            print(f"  iteration {b['iteration']}: MI bound {mi}; following the principle under +/-: {_rates(b)}"
                  + (f"; guard {b['degeneration']}" if b["degeneration"] not in (None, "none") else ""))
    if ours and plain:
        print(f"ours / plain, whole demo: {ours['total_s'] / plain['total_s']:.2f}x")
    print(json.dumps({"ours": ours, "plain": plain}, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE on the demo's config")
    p.add_argument("--iterations", type=int, help="run.iterations (default: the demo's)")
    p.add_argument("--skip-ours", action="store_true", help="only the plain loop (with its own principles)")
    p.add_argument("--skip-plain", action="store_true", help="only the demo")
    p.add_argument("--plain-threads", type=int, help="torch threads of the plain loop (default: torch's own)")
    args = p.parse_args()
    overrides = args.overrides + ([f"run.iterations={args.iterations}"] if args.iterations else [])

    with tempfile.TemporaryDirectory(prefix="bench-demo-whole-") as tmp:
        storage = str(Path(tmp) / "runs")
        cfg = demo_config(storage, overrides)
        ours = plain = None
        if not args.skip_ours:
            ours = _ours(cfg)
            import ray

            ray.shutdown()  # the plain loop gets the machine to itself
        if not args.skip_plain:
            plain, total = run_spawned(_plain, storage, overrides, (ours or {}).get("principles"),
                                       str(Path(tmp) / "plain"), args.plain_threads)
            plain["total_s"] = total
            plain["stages"]["other"] = total - sum(v for k, v in plain["stages"].items() if k != "other")
        _print(cfg, ours, plain)


if __name__ == "__main__":
    main()
