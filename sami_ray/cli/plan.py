"""`sami-ray plan`: the GPUs and per-GPU memory a run config needs, before anything is started.

Training memory is what DeepSpeed 0.19.8 allocates for the trainer's settings (`trainer_memory`), counted per
component and checked by measurement (tests/integration/test_plan_memory.py). With p the parameters' bytes (2 for
bf16, 4 for fp32), m the master weights' bytes (trainer.master_weights) and k optimizer states (AdamW 2, RMSprop 1),
ZeRO-3 holds per parameter, split over the workers:
  weights p + gradients p + master weights m + optimizer states k * m
  (bf16 with fp32 master: 2 + 2 + 4 + 4k; pure bf16: 2 + 2 + 2 + 2k; fp32: 4 + 4 + 4 + 4k. DeepSpeed keeps its own
  master copy even when it has the parameters' precision.)
plus, while it steps, a master-precision copy of one sub-group's gradients, and a gradient reduce bucket of fixed
size. With offload_optimizer, gradients, master weights and states live in CPU memory (with a persistent
master-precision copy of the gradients); with offload_params, the weights do. Stages 0-2 are counted from
DeepSpeed's code and measured on one worker (how they split over several is read from the code, not measured).
Not measured, but counted: the largest layer, which ZeRO-3 gathers whole to compute it (a MoE block at once), and an
allowance for activations.
vLLM engines hold bf16 weights split over tensor-parallel ranks plus a KV cache sized by gpu_memory_utilization.
The engines counted are the ones the run starts, read from the same `RoleSpec`s the roles start them with
(roles.role_specs): models, replicas, tensor parallelism and memory utilisation per role, GPUs per resources.<role>.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import ModelSpec, RunConfig, TrainerConfig
from ..errors import UserError
from ..roles import RoleSpec, engine_roles
from ..train.ds_config import REDUCE_BUCKET_ELEMENTS, SUB_GROUP_ELEMENTS

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
OPTIMIZER_STATES = {"adamw": 2, "rmsprop": 1}  # torch AdamW: exp_avg, exp_avg_sq; RMSprop: square_avg

# Parameter counts (billions) and layers of models our job configs name, for specs that are not local folders.
KNOWN_MODELS = {
    "mistral-7b": (7.24, 32),
    "mixtral-8x7b": (46.7, 32),
    "smollm2-135m": (0.135, 30),
    "llama-3-8b": (8.03, 32),
    "llama-3-70b": (70.6, 80),
}


def _config_json(path: Path) -> dict | None:
    cfg_file = path / "config.json"
    return json.loads(cfg_file.read_text()) if cfg_file.exists() else None


def params_from_config_json(path: Path) -> float | None:
    """Parameter count (billions) estimated from an HF config.json: embeddings, attention, MLP/experts."""
    c = _config_json(path)
    if c is None:
        return None
    h, layers, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("vocab_size")
    if not (h and layers and vocab):
        return None
    inter = c.get("intermediate_size", 4 * h)
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or h // heads
    attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    experts = c.get("num_local_experts", 1)
    mlp = 3 * h * inter * experts + (h * experts if experts > 1 else 0)
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return (layers * (attn + mlp + 2 * h) + embed + h) / 1e9


def _known(spec: ModelSpec) -> tuple[float, int] | None:
    key = spec.path.lower()
    return next((v for name, v in KNOWN_MODELS.items() if name in key), None)


def model_params_b(spec: ModelSpec) -> float:
    if spec.params_b:
        return spec.params_b
    p = Path(spec.path).expanduser()
    if p.is_dir():
        est = params_from_config_json(p)
        if est:
            return est
    known = _known(spec)
    if known:
        return known[0]
    raise UserError(f"plan: cannot tell the size of model {spec.path!r}; set its params_b (billions) in the config")


def model_layers(spec: ModelSpec) -> int | None:
    """The model's number of layers, where its config.json or our table tells."""
    p = Path(spec.path).expanduser()
    c = _config_json(p) if p.is_dir() else None
    if c and c.get("num_hidden_layers"):
        return int(c["num_hidden_layers"])
    known = _known(spec)
    return known[1] if known else None


# ---------------------------------------------------------------- the trainer

MODEL_STATES = ("weights", "grads", "master", "master_grads", "optimizer_states", "step_buffer")


@dataclass
class TrainerMemory:
    """Bytes one trainer worker holds, by component: on its GPU, and in CPU memory (what DeepSpeed offloads)."""

    gpu: dict[str, float]
    host: dict[str, float]
    bytes_per_param: float  # the model states per parameter of one worker training alone


def trainer_memory(t: TrainerConfig, num_params: float, *, layer_params: float | None = None,
                   gpu_gb: float = 0.0) -> TrainerMemory:
    """What one of the trainer's workers holds for a model of `num_params` parameters (see the module doc)."""
    gpu, host = _model_states(t, float(num_params))
    alone_gpu, alone_host = _model_states(t.model_copy(update={"num_workers": 1}), 1.0)
    per_param = sum(v for part in (alone_gpu, alone_host) for k, v in part.items() if k != "step_buffer")
    p = DTYPE_BYTES[t.dtype]
    if t.zero_stage >= 1:
        gpu["reduce_bucket"] = p * REDUCE_BUCKET_ELEMENTS
    if t.zero_stage == 3 and layer_params:
        gpu["gathered_layer"] = p * layer_params  # ZeRO-3 gathers a whole layer (a MoE block) to compute it
    if t.beta > 0:  # the frozen reference model, sharded as the trained one (inference_ds_config)
        on_host = t.offload_params and t.zero_stage == 3
        (host if on_host else gpu)["reference"] = p * num_params / (t.num_workers if t.zero_stage == 3 else 1)
    # Activations: a rough allowance of 10% of the GPU, more without activation checkpointing.
    gpu["activations"] = gpu_gb * GIB * (0.1 if t.activation_checkpointing else 0.25)
    return TrainerMemory(gpu, host, per_param)


def _model_states(t: TrainerConfig, n: float) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes of weights, gradients, master weights and optimizer states one worker holds: on its GPU, on its CPU."""
    p = DTYPE_BYTES[t.dtype]
    m = DTYPE_BYTES[t.master_weights] if t.dtype == "bfloat16" else 4
    k = OPTIMIZER_STATES[t.optimizer]
    shard = n / t.num_workers
    off_opt = t.offload_optimizer and t.zero_stage >= 1  # as build_ds_config sets it
    off_params = t.offload_params and t.zero_stage == 3
    gpu: dict[str, float] = {}
    host: dict[str, float] = {}

    def put(name: str, nbytes: float, on_host: bool = False) -> None:
        (host if on_host else gpu)[name] = nbytes

    if t.zero_stage == 3:
        put("weights", p * shard, off_params)
        put("grads", p * shard, off_opt)
        put("master", m * shard, off_opt)
        put("optimizer_states", k * m * shard, off_opt)
        if off_opt:
            put("master_grads", m * shard, True)  # kept for every offloaded sub-group
        else:
            put("step_buffer", m * min(SUB_GROUP_ELEMENTS, shard))  # one sub-group's gradients while it steps
    elif t.zero_stage in (1, 2):
        put("weights", p * n)
        # In backward the gradients are whole (stage 1) or partitioned (stage 2) in the parameters' precision; at the
        # step they are folded into a master-precision partition: whichever is larger.
        low = p * (n if t.zero_stage == 1 else shard)
        if off_opt:
            put("grads", low)
            put("master_grads", m * shard, True)
        else:
            put("grads", max(low, m * shard))
        put("master", m * shard, off_opt)
        put("optimizer_states", k * m * shard, off_opt)
    elif t.dtype == "bfloat16":  # stage 0: DeepSpeed's BF16_Optimizer, fp32 master and states split over workers
        put("weights", p * n)
        put("grads", p * n)
        put("master_grads", 4 * n)
        put("master", 4 * shard)
        put("optimizer_states", k * 4 * shard)
    else:  # stage 0 in fp32: the torch optimizer steps the parameters themselves
        put("weights", p * n)
        put("grads", p * n)
        put("optimizer_states", k * p * n)
    return gpu, host


# ---------------------------------------------------------------- the plan

@dataclass
class RoleNeed:
    role: str
    gpus: int
    per_gpu_gb: float
    components_gb: dict[str, float] = field(default_factory=dict)  # per GPU
    fits: bool = True
    detail: dict = field(default_factory=dict)


@dataclass
class Plan:
    roles: list[RoleNeed]
    gpus_total: int
    gpu_memory_gb: float
    gpus_available: int | None
    problems: list[str]

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"roles": [asdict(r) for r in self.roles], "gpus_total": self.gpus_total,
                "gpu_memory_gb": self.gpu_memory_gb, "gpus_available": self.gpus_available,
                "problems": self.problems, "fits": self.fits}

    def table(self) -> str:
        lines = [f"{'role':<10}{'GPUs':>6}{'GiB/GPU':>10}{'fits':>6}  GiB per GPU by component; detail"]
        for r in self.roles:
            parts = ", ".join(f"{k} {v:g}" for k, v in r.components_gb.items() if v)
            detail = ", ".join(f"{k}={v}" for k, v in r.detail.items()
                               if not k.endswith("_gb_per_gpu") and k != "cpu_components_gb")  # shown apart
            lines.append(f"{r.role:<10}{r.gpus:>6}{r.per_gpu_gb:>10.1f}{'yes' if r.fits else 'NO':>6}  {parts}; "
                         f"{detail}")
            if r.detail.get("cpu_components_gb"):
                cpu = ", ".join(f"{k} {v:g}" for k, v in r.detail["cpu_components_gb"].items())
                lines.append(f"{'':<32}offloaded to CPU memory, GiB per worker: {cpu}")
        avail = "?" if self.gpus_available is None else str(self.gpus_available)
        lines.append(f"total GPUs: {self.gpus_total} (cluster: {avail}, {self.gpu_memory_gb:g} GiB each)")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _gb(nbytes: float) -> float:
    return round(nbytes / GIB, 1)


def _engine_need(spec: RoleSpec, params_b: float, gpu_gb: float) -> RoleNeed:
    """GPUs and per-GPU memory of one engine role, read from its RoleSpec (what the role itself starts)."""
    eng, replicas = spec.engine, spec.sampler.replicas
    tp, util = eng.tensor_parallel_size, eng.gpu_memory_utilization
    weights = params_b * 1e9 * 2 / GIB / tp
    kv = max(util * gpu_gb - weights, 0.0)
    gpus = tp * replicas if spec.resources.num_gpus > 0 else 0
    return RoleNeed(ROLE_NAMES[spec.name], gpus, round(util * gpu_gb, 1),
                    {"weights": round(weights, 1), "kv_cache": round(kv, 1)}, weights <= util * gpu_gb,
                    {"replicas": replicas, "tensor_parallel": tp, "weights_gb_per_gpu": round(weights, 1),
                     "kv_cache_gb_per_gpu": round(kv, 1)})


# as plan's table shows them; "datagen" is models.sampler, the model that samples the training data
ROLE_NAMES = {"policy": "sampler", "writer": "writer", "judge": "judge", "sampler": "datagen"}


def _trainer_need(cfg: RunConfig, params_b: float) -> RoleNeed:
    t, res, gpu_gb = cfg.trainer, cfg.resources, cfg.resources.gpu_memory_gb
    layers = model_layers(cfg.models.policy)
    mem = trainer_memory(t, params_b * 1e9, layer_params=params_b * 1e9 / layers if layers else None,
                         gpu_gb=gpu_gb)
    per_gpu = sum(mem.gpu.values()) / GIB
    gpus = t.num_workers * max(1, int(res.trainer.num_gpus)) if res.trainer.num_gpus > 0 else 0
    detail = {"bytes_per_param": mem.bytes_per_param, "zero_stage": t.zero_stage, "dtype": t.dtype,
              "master_weights": t.master_weights, "optimizer": t.optimizer}
    if mem.host:
        detail["cpu_gb_per_worker"] = _gb(sum(mem.host.values()))
        detail["cpu_components_gb"] = {k: _gb(v) for k, v in mem.host.items()}
    return RoleNeed("trainer", gpus, round(per_gpu, 1), {k: _gb(v) for k, v in mem.gpu.items()},
                    per_gpu <= gpu_gb, detail)


def plan_run(cfg: RunConfig) -> Plan:
    """GPU needs of writer, samplers, judge and trainer; problems name the config field to change."""
    res, gpu_gb = cfg.resources, cfg.resources.gpu_memory_gb
    problems: list[str] = []
    roles: list[RoleNeed] = []
    policy_b = model_params_b(cfg.models.policy)
    for spec in engine_roles(cfg):  # the engines the run starts, from the same specs the roles start them with
        need = _engine_need(spec, policy_b if spec.name == "policy" else model_params_b(spec.model), gpu_gb)
        util = spec.engine.gpu_memory_utilization
        if spec.resources.num_gpus > 0 and not need.fits:
            engine_field, res_field = cfg.ROLE_FIELDS[spec.name][1:]
            problems.append(f"{need.role}: {need.detail['weights_gb_per_gpu']} GiB of weights per GPU exceed "
                            f"{util:g} x {gpu_gb:g} GiB; raise {res_field}.num_gpus (and "
                            f"{engine_field}.tensor_parallel_size with it)")
        roles.append(need)
    trainer = _trainer_need(cfg, policy_b)
    roles.append(trainer)
    if res.trainer.num_gpus > 0 and not trainer.fits:
        biggest = sorted(trainer.components_gb.items(), key=lambda kv: -kv[1])[:3]
        problems.append(f"trainer: needs {trainer.per_gpu_gb:.1f} GiB per GPU but a GPU has {gpu_gb:g} GiB (most: "
                        + ", ".join(f"{k} {v:g}" for k, v in biggest) + "); raise trainer.num_workers, set "
                        "trainer.master_weights=bfloat16 (with trainer.dtype=bfloat16), enable "
                        "trainer.offload_optimizer or trainer.offload_params, or trainer.activation_checkpointing")
    by_role = {r.role: r.gpus for r in roles}
    # The sampler pool and a local judge live through the run; the writer's GPUs are free again before training
    # when resources.release_writer is set. models.sampler (datagen) takes the pool's GPUs in turn with the policy
    # (Roles.sampler): its memory is checked on them above, and it adds no GPUs.
    total = by_role["sampler"] + by_role.get("judge", 0)
    if res.release_writer:
        total += max(by_role.get("writer", 0), by_role["trainer"])
    else:
        total += by_role.get("writer", 0) + by_role["trainer"]
    if res.gpus_available is not None and total > res.gpus_available:
        problems.append(f"the config needs {total} GPUs but resources.gpus_available is {res.gpus_available}")
    return Plan(roles, total, gpu_gb, res.gpus_available, problems)
