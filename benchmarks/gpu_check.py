"""The GPU check: the SAMI training step on as large a Mixtral-shaped model as one GPU holds, shared-prefix against
reference, and one DeepSpeed ZeRO-3 step in one process. Prints ONE table. See docs/GPU_CHECK.md.

Run it through scripts/gpu_check.sh (it sets PYTHONPATH and the CUDA allocator):

    scripts/gpu_check.sh            # CUDA, bf16, Mixtral-8x7B layers, as many as fit
    scripts/gpu_check.sh --small    # a tiny Mixtral on CPU in seconds (tests/unit/test_gpu_check.py runs this)

Rows:
  device              the accelerator, torch and transformers, dtype, the peak FLOP/s that MFU is measured against
  step shared_prefix  PairScorer "shared_prefix": forward + backward of the SAMI loss + a plain SGD step
  step reference      the same, on the same model, with PairScorer "reference"
  deepspeed zero3     the job's DeepSpeed config (build_ds_config) and optimizer (RMSprop), ZeRO-3, world size 1

MFU = 6 x active parameters x tokens run (padding included) / step time / peak FLOP/s. Active parameters are what a
token passes through: all but the input embedding and the experts it is not routed to. Recomputation under
activation checkpointing is not counted (model FLOPs, not hardware FLOPs), nor is attention's quadratic term.

This process imports only torch, transformers and sami_ray's step modules (train.step, sami.data, sami.loss): a bare
GPU machine has neither pydantic nor DeepSpeed. DeepSpeed runs in a child process, from the interpreter's own
install or from the wheels in .gpu_wheels/ (`scripts/gpu_check.sh --wheels` makes them), installed with pip into a
prefix inside that folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench_train_step import build_model, mixtral_config, peak_read, peak_reset, random_example

ROOT = Path(__file__).resolve().parent.parent

# One layer of Mixtral-8x7B (32 such layers make its 46.7B parameters), and a tiny one for the CPU check.
SHAPES = {
    "mixtral": {"vocab": 32000, "hidden": 4096, "intermediate": 14336, "experts": 8, "top_k": 2, "heads": 32,
                "kv_heads": 8},
    "small": {"vocab": 1024, "hidden": 128, "intermediate": 256, "experts": 4, "top_k": 2, "heads": 4, "kv_heads": 2},
}
MAX_LAYERS = 32
H200_BF16_DENSE_TFLOPS = 989.0
DS_MARK = "GPU_CHECK_DS "  # the child's one result line


@dataclass
class Row:
    name: str
    result: str  # ok | oom | skipped | failed
    model: str = ""
    tokens: int | None = None
    step_s: float | None = None
    tok_s: float | None = None
    mfu: float | None = None  # a fraction
    peak_gib: float | None = None
    step_gib: float | None = None
    notes: str = ""


# ---------------------------------------------------------------- sizes


@dataclass
class Sizes:
    """Parameter counts as functions of the layer count, from meta-device models (nothing allocated)."""

    fixed: int
    per_layer: int
    fixed_active: int
    per_layer_active: int

    def total(self, layers: int) -> int:
        return self.fixed + layers * self.per_layer

    def active(self, layers: int) -> int:
        return self.fixed_active + layers * self.per_layer_active


def _counts(model) -> tuple[int, int]:
    """(all parameters, active ones): a token skips the embedding lookup's matmul and the experts not picked."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    skipped = experts * (cfg.num_local_experts - cfg.num_experts_per_tok) / cfg.num_local_experts
    return total, int(total - model.get_input_embeddings().weight.numel() - skipped)


def model_sizes(shape: dict) -> Sizes:
    import torch
    from transformers import AutoModelForCausalLM

    counts = []
    for layers in (1, 2):
        with torch.device("meta"):
            counts.append(_counts(AutoModelForCausalLM.from_config(mixtral_config(layers=layers, **shape))))
    (t1, a1), (t2, a2) = counts
    return Sizes(fixed=t1 - (t2 - t1), per_layer=t2 - t1, fixed_active=a1 - (a2 - a1), per_layer_active=a2 - a1)


def layer_ladder(sizes: Sizes, budget_bytes: float, bytes_per_param: float, forced: int | None) -> list[int]:
    """The layer counts to try, largest first: what the budget allows, then smaller rungs after an OOM."""
    if forced:
        return [forced]
    top = int((budget_bytes / bytes_per_param - sizes.fixed) // sizes.per_layer)
    top = max(1, min(MAX_LAYERS, top))
    return sorted({top, top * 3 // 4, top // 2, top // 4, 1} - {0}, reverse=True)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def describe(shape: dict, layers: int, sizes: Sizes) -> str:
    return (f"{layers}L h{shape['hidden']} {shape['experts']}e/top{shape['top_k']} "
            f"{_count(sizes.total(layers))} ({_count(sizes.active(layers))} active)")


def _is_oom(e: BaseException) -> bool:
    """torch's OutOfMemoryError, or a library's own allocation failure (cuBLAS workspace, NCCL) said in words."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------- the plain step


def _timed(step, device: str, steps: int) -> dict:
    """One warm-up step (kernels, allocator, .grad buffers), then `steps` timed ones: median time and peak memory.
    The loss is the warm-up's, taken before any update: on the same weights every row must show the same number."""
    out = step()
    loss = out.sami_loss
    base = peak_reset(device)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        out = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = peak_read(device)
    return {"step_s": statistics.median(times), "tokens": out.input_tokens, "peak_mib": peak,
            "base_mib": base, "loss": loss}


def _plain_attempt(args, shape: dict, layers: int) -> dict:
    """Both implementations on one model of `layers` layers; an OOM in the shared-prefix step propagates."""
    import torch

    from sami_ray.train.step import PairScorer, sami_objective

    model = build_model(mixtral_config(layers=layers, **shape), args.device, args.dtype)
    if args.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = [random_example(n=args.n, prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                            vocab=shape["vocab"], seed=args.seed)]
    # Plain SGD keeps no state: parameters and gradients alone (4 bytes a parameter in bf16) bound the size. At lr 0
    # it still does its work while the weights stay as built, so the reference's loss must equal the shared prefix's.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    impl_notes = f"experts {model.config._experts_implementation}, attn {model.config._attn_implementation}"

    def runner(impl: str):
        scorer = PairScorer(model, impl, chunk_size=args.chunk, pad_token_id=0)

        def step():
            out = sami_objective(scorer(batch), None, batch_size=1, n=args.n)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # .grad stays allocated: the step's memory is its own
            return out
        return step

    results = {"shared_prefix": _timed(runner("shared_prefix"), args.device, args.steps), "notes": impl_notes}
    oom = None
    try:
        results["reference"] = _timed(runner("reference"), args.device, args.steps)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not _is_oom(e):
            raise
        oom = str(e).splitlines()[0][:120]
    if oom is not None:
        optimizer.zero_grad(set_to_none=False)
        _free(args.device)
        results["reference"] = {"oom": oom}
    return results


def plain_rows(args, shape: dict, sizes: Sizes, peak_flops: float | None, budget: float | None) -> list[Row]:
    bytes_per_param = 4 if args.dtype == "bfloat16" else 8
    ladder = layer_ladder(sizes, budget or 0, bytes_per_param, args.layers)
    failed: list[int] = []
    for layers in ladder:
        res = None
        try:
            res = _plain_attempt(args, shape, layers)
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            failed.append(layers)
        _free(args.device)
        if res is None:
            continue
        model = describe(shape, layers, sizes)
        tried = f"; OOM at {failed} layers first" if failed else ""
        rows = []
        for impl in ("shared_prefix", "reference"):
            r = res[impl]
            if "oom" in r:
                rows.append(Row(f"step {impl}", "oom", model, notes=r["oom"]))
                continue
            rows.append(_measured_row(f"step {impl}", r, model, sizes.active(layers), peak_flops,
                                      f"loss {r['loss']:.5f}, sgd, {res['notes']}{tried}"))
        sp, ref = res["shared_prefix"], res["reference"]
        if "oom" not in ref:
            ref_mem, sp_mem = ref["peak_mib"] - ref["base_mib"], sp["peak_mib"] - sp["base_mib"]
            rows[0].notes += (f"; reference/this: time {ref['step_s'] / sp['step_s']:.2f}x, "
                              f"step memory {ref_mem / max(sp_mem, 1e-9):.2f}x")
        return rows
    why = f"out of memory at every size tried: {failed} layers"
    return [Row("step shared_prefix", "oom", notes=why), Row("step reference", "oom", notes=why)]


def _measured_row(name: str, r: dict, model: str, active: int, peak_flops: float | None, notes: str) -> Row:
    tok_s = r["tokens"] / r["step_s"]
    mfu = 6 * active * tok_s / peak_flops if peak_flops else None
    return Row(name, "ok", model, r["tokens"], r["step_s"], tok_s, mfu, r["peak_mib"] / 1024,
               (r["peak_mib"] - r["base_mib"]) / 1024, notes)


# ---------------------------------------------------------------- DeepSpeed (a child process)


def deepspeed_source(wheels: Path) -> tuple[str | None, str]:
    """Where the child finds DeepSpeed: ("", why) when this interpreter has it, (site folder, why) after installing
    the carried wheels, or (None, why not)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        return "", "this interpreter's deepspeed"
    if not any(wheels.glob("deepspeed-*.whl")):
        return None, (f"no deepspeed module and no deepspeed wheel in {wheels} (make one with "
                      "`scripts/gpu_check.sh --wheels` and carry that folder)")
    return _install_wheels(wheels)


def _install_wheels(wheels: Path) -> tuple[str | None, str]:
    """pip with --prefix sees what the interpreter has, so only the missing requirements come from the folder
    (--target would ignore them and want torch too); a prefix also sidesteps an externally managed interpreter."""
    import shutil

    prefix = wheels / "prefix"
    shutil.rmtree(prefix, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--prefix", str(prefix),
           "--no-warn-script-location", "--disable-pip-version-check", "--quiet", "deepspeed"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"pip install from {wheels} failed: {e}"
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        return None, f"pip install from {wheels} failed: {lines[-1] if lines else proc.returncode}"
    found = sorted(prefix.glob("**/deepspeed/__init__.py"))
    if not found:
        return None, f"pip installed no deepspeed package under {prefix}"
    site = found[0].parent.parent
    installed = sorted(p.name.split("-")[0] for p in site.glob("*.dist-info"))
    return str(site), f"installed from wheels: {', '.join(installed)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_row(args, shape: dict, sizes: Sizes, peak_flops: float | None, budget: float | None) -> Row:
    if args.deepspeed == "off":
        return Row("deepspeed zero3", "skipped", notes="--deepspeed off")
    site, why = deepspeed_source(Path(args.wheels))
    if site is None:
        return Row("deepspeed zero3", "skipped", notes=why)
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               DS_ACCELERATOR="cuda" if args.device == "cuda" else "cpu",
               DEEPSPEED_TIMEOUT="5")  # minutes: a stuck collective ends the child, not the check
    if site:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, __file__, "--ds-child", *sys.argv[1:]]
    if budget:
        cmd += ["--budget-gib", str(budget / 2**30)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.ds_timeout)
    except subprocess.TimeoutExpired:
        return Row("deepspeed zero3", "failed", notes=f"no result within {args.ds_timeout} s; {why}")
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(DS_MARK)]
    if proc.returncode != 0 or not found:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        print("\n".join(["deepspeed child, last lines:", *tail[-40:]]), file=sys.stderr)
        return Row("deepspeed zero3", "failed", notes=f"exit {proc.returncode}: {tail[-1] if tail else ''}; {why}")
    r = json.loads(found[-1][len(DS_MARK):])
    model = describe(shape, r["layers"], sizes)
    if "oom" in r:
        return Row("deepspeed zero3", "oom", model, notes=r["oom"])
    tried = f"; OOM at {r['failed']} layers first" if r["failed"] else ""
    return _measured_row("deepspeed zero3", r, model, sizes.active(r["layers"]), peak_flops,
                         f"loss {r['loss']:.5f}, deepspeed {r['version']}, {r['optimizer']}, {why}{tried}")


def ds_child(args, shape: dict, sizes: Sizes) -> dict:
    """One process, world size 1: the worker's order (leaf MoE blocks, PairScorer, external LM head weight, torch
    optimizer, deepspeed.initialize), then engine.backward / engine.step as in the training loop."""
    import deepspeed
    import torch
    from deepspeed.utils import set_z3_leaf_modules

    from sami_ray.config import TrainerConfig  # pydantic is here: DeepSpeed itself needs it
    from sami_ray.train.ds_config import build_ds_config
    from sami_ray.train.optim import build_optimizer
    from sami_ray.train.step import PairScorer, sami_objective
    from sami_ray.train.worker import _moe_block_classes, _skip_shm_op

    cfg = TrainerConfig(zero_stage=3, dtype=args.dtype, optimizer="rmsprop", lr=5e-7, grad_accum=1,
                        activation_checkpointing=args.ckpt, logprob_chunk_size=args.chunk)
    if args.device == "cuda":
        torch.cuda.set_device(0)  # before the NCCL group, which binds to the current device
    _skip_shm_op()
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    batch = [random_example(n=args.n, prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                            vocab=shape["vocab"], seed=args.seed)]
    # bf16 weights and gradients, fp32 master weights, fp32 gradients for the optimizer, one fp32 RMSprop state.
    bytes_per_param = 16
    budget = args.budget_gib * 2**30 if args.budget_gib else 0
    ladder = layer_ladder(sizes, budget, bytes_per_param, args.ds_layers)
    failed: list[int] = []

    def attempt(layers: int) -> dict:
        model = build_model(mixtral_config(layers=layers, **shape), args.device, args.dtype)
        if cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        set_z3_leaf_modules(model, _moe_block_classes(model))
        ds_config = build_ds_config(cfg, world_size=1, num_params=sizes.total(layers))
        scorer = PairScorer(model, cfg.step_impl, cfg.logprob_chunk_size, 0)
        scorer.register_for_zero3()
        engine, *_ = deepspeed.initialize(model=scorer, optimizer=build_optimizer(scorer.parameters(), cfg),
                                          config=ds_config)

        def step():
            out = sami_objective(engine(batch), None, batch_size=1, n=args.n)
            engine.backward(out.loss)
            engine.step()
            return out
        try:
            return _timed(step, args.device, args.steps)
        finally:
            engine.destroy()

    for layers in ladder:
        res = None
        try:
            res = attempt(layers)
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            failed.append(layers)
        _free(args.device)
        if res is not None:
            return {**res, "layers": layers, "failed": failed, "version": deepspeed.__version__,
                    "optimizer": f"{cfg.optimizer} (torch)"}
    return {"layers": ladder[-1], "oom": f"out of memory at every size tried: {failed} layers"}


# ---------------------------------------------------------------- the table


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row]) -> None:
    header = ("check", "result", "model", "tokens run", "step s", "tok/s", "MFU", "peak GiB", "step GiB", "notes")
    cells = [header] + [(r.name, r.result, r.model, _fmt(r.tokens, "d"), _fmt(r.step_s, ".3f"), _fmt(r.tok_s, ".0f"),
                         "-" if r.mfu is None else f"{100 * r.mfu:.1f}%", _fmt(r.peak_gib, ".3f"),
                         _fmt(r.step_gib, ".3f"), r.notes) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    for i, c in enumerate(cells):
        line = "  ".join(v.ljust(w) if k < 3 else v.rjust(w) for k, (v, w) in enumerate(zip(c[:-1], widths, strict=True)))
        print(f"{line}  {c[-1]}".rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * len(widths) + len("notes")))


def device_row(args, peak_flops: float | None) -> tuple[Row, float | None]:
    """The device row and the memory budget for weights (bytes), sized from the GPU's own memory."""
    import torch
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, {args.dtype}"
    peak = f", peak {peak_flops / 1e12:.0f} TFLOP/s" if peak_flops else ", no peak FLOP/s (no MFU)"
    if args.device != "cuda":
        return Row("device", "cpu", f"{torch.get_num_threads()} thread(s)", notes=versions + peak), None
    props = torch.cuda.get_device_properties(0)
    budget = args.mem_fraction * props.total_memory
    return Row("device", "cuda", f"{props.name} {props.total_memory / 2**30:.1f} GiB",
               notes=f"{versions}{peak}, weights+grads budget {args.mem_fraction:.0%}"), budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a tiny Mixtral (CPU unless --device cuda), seconds")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda, or cpu with --small")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--layers", type=int, help="fixed layer count for the plain steps instead of sizing from memory")
    p.add_argument("--mem-fraction", type=float, default=0.7,
                   help="share of GPU memory for weights + gradients when sizing (the rest: activations, logits)")
    p.add_argument("--peak-tflops", type=float,
                   help=f"peak dense bf16 TFLOP/s for MFU (default {H200_BF16_DENSE_TFLOPS:.0f} on cuda: H200; "
                        "none on cpu)")
    p.add_argument("--n", type=int, help="constitutions per query (default 4; 2 with --small)")
    p.add_argument("--prompt-tokens", type=int, help="default 512 (48 with --small)")
    p.add_argument("--response-tokens", type=int, help="default 128 (12 with --small)")
    p.add_argument("--chunk", type=int, default=512, help="log-prob chunk size (positions)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    p.add_argument("--no-ckpt", dest="ckpt", action="store_false", help="no activation checkpointing")
    p.add_argument("--threads", type=int, default=1, help="torch threads on cpu")
    p.add_argument("--deepspeed", choices=["auto", "off"], default="auto")
    p.add_argument("--wheels", default=str(ROOT / ".gpu_wheels"), help="carried wheels (deepspeed and its deps)")
    p.add_argument("--ds-layers", type=int, help="fixed layer count for the DeepSpeed step")
    p.add_argument("--ds-timeout", type=int, default=300, help="seconds for the DeepSpeed child")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ds-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-gib", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.small else "cuda")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    small = {"n": 2, "prompt_tokens": 48, "response_tokens": 12, "layers": 2, "ds_layers": 2}
    full = {"n": 4, "prompt_tokens": 512, "response_tokens": 128}
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = H200_BF16_DENSE_TFLOPS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run `scripts/gpu_check.sh --small` for the CPU check", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    shape = SHAPES["small" if args.small else "mixtral"]
    sizes = model_sizes(shape)
    if args.ds_child:
        print(DS_MARK + json.dumps(ds_child(args, shape, sizes)), flush=True)
        return 0
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else None
    dev, budget = device_row(args, peak_flops)
    try:
        rows = [dev, *plain_rows(args, shape, sizes, peak_flops, budget)]
    except Exception as e:  # the table still comes out; the traceback goes to stderr
        traceback.print_exc()
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows = [dev, Row("step shared_prefix", "failed", notes=why), Row("step reference", "failed", notes=why)]
    _free(args.device)  # out here: the traceback held the model while the except block ran
    rows.append(deepspeed_row(args, shape, sizes, peak_flops, budget))
    print_table(rows)
    return 1 if any(r.result == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
