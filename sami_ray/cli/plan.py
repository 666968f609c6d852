"""`sami-ray plan`: the GPUs and per-GPU memory a run config needs, before anything is started.

Training memory under ZeRO-3 is per-parameter state split across the trainer's GPUs, plus activations.
Bytes per parameter: bf16 parameters + bf16 gradients + one bf16 RMSprop state = 6 (the paper's Mixtral setup);
mixed-precision AdamW keeps fp32 master weights and two fp32 moments = 2 + 2 + 12 = 16; fp32 AdamW = 4 + 4 + 8 = 16.
vLLM engines hold bf16 weights split over tensor-parallel ranks plus a KV cache sized by gpu_memory_utilization.
The engines counted are the ones the run starts, read from the same `RoleSpec`s the roles start them with
(roles.role_specs): models, replicas, tensor parallelism and memory utilisation per role, GPUs per resources.<role>.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import ModelSpec, RunConfig
from ..errors import UserError
from ..roles import RoleSpec, engine_roles

GIB = 1024 ** 3

# Parameter counts (billions) of models our job configs name, for specs that are not local folders.
KNOWN_PARAMS_B = {
    "mistral-7b": 7.24,
    "mixtral-8x7b": 46.7,
    "smollm2-135m": 0.135,
    "llama-3-8b": 8.03,
    "llama-3-70b": 70.6,
}


def training_bytes_per_param(dtype: str, optimizer: str) -> float:
    if dtype == "bfloat16":
        return 6.0 if optimizer == "rmsprop" else 16.0
    return 12.0 if optimizer == "rmsprop" else 16.0


def params_from_config_json(path: Path) -> float | None:
    """Parameter count (billions) estimated from an HF config.json: embeddings, attention, MLP/experts."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        return None
    c = json.loads(cfg_file.read_text())
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


def model_params_b(spec: ModelSpec) -> float:
    if spec.params_b:
        return spec.params_b
    p = Path(spec.path).expanduser()
    if p.is_dir():
        est = params_from_config_json(p)
        if est:
            return est
    key = spec.path.lower()
    for name, b in KNOWN_PARAMS_B.items():
        if name in key:
            return b
    raise UserError(f"plan: cannot tell the size of model {spec.path!r}; set its params_b (billions) in the config")


@dataclass
class RoleNeed:
    role: str
    gpus: int
    per_gpu_gb: float
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
        lines = [f"{'role':<10}{'GPUs':>6}{'GiB/GPU':>10}  detail"]
        for r in self.roles:
            detail = ", ".join(f"{k}={v}" for k, v in r.detail.items())
            lines.append(f"{r.role:<10}{r.gpus:>6}{r.per_gpu_gb:>10.1f}  {detail}")
        avail = "?" if self.gpus_available is None else str(self.gpus_available)
        lines.append(f"total GPUs: {self.gpus_total} (cluster: {avail}, {self.gpu_memory_gb:g} GiB each)")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _engine_need(spec: RoleSpec, params_b: float, gpu_gb: float) -> RoleNeed:
    """GPUs and per-GPU memory of one engine role, read from its RoleSpec (what the role itself starts)."""
    eng, replicas = spec.engine, spec.sampler.replicas
    tp, util = eng.tensor_parallel_size, eng.gpu_memory_utilization
    weights = params_b * 1e9 * 2 / GIB / tp
    kv = max(util * gpu_gb - weights, 0.0)
    gpus = tp * replicas if spec.resources.num_gpus > 0 else 0
    return RoleNeed(ROLE_NAMES[spec.name], gpus, round(util * gpu_gb, 1),
                    {"replicas": replicas, "tensor_parallel": tp, "weights_gb_per_gpu": round(weights, 1),
                     "kv_cache_gb_per_gpu": round(kv, 1)})


ROLE_NAMES = {"policy": "sampler", "writer": "writer", "judge": "judge"}  # as plan's table shows them


def plan_run(cfg: RunConfig) -> Plan:
    """GPU needs of writer, samplers, judge and trainer; problems name the config field to change."""
    res, gpu_gb = cfg.resources, cfg.resources.gpu_memory_gb
    problems: list[str] = []
    roles: list[RoleNeed] = []
    policy_b = model_params_b(cfg.models.policy)
    for spec in engine_roles(cfg):  # the engines the run starts, from the same specs the roles start them with
        need = _engine_need(spec, policy_b if spec.name == "policy" else model_params_b(spec.model), gpu_gb)
        util = spec.engine.gpu_memory_utilization
        if spec.resources.num_gpus > 0 and need.detail["weights_gb_per_gpu"] > util * gpu_gb:
            engine_field, res_field = cfg.ROLE_FIELDS[spec.name][1:]
            problems.append(f"{need.role}: {need.detail['weights_gb_per_gpu']} GiB of weights per GPU exceed "
                            f"{util:g} x {gpu_gb:g} GiB; raise {res_field}.num_gpus (and "
                            f"{engine_field}.tensor_parallel_size with it)")
        roles.append(need)
    t = cfg.trainer
    workers = t.num_workers
    per_param = training_bytes_per_param(t.dtype, t.optimizer)
    states_gb = policy_b * 1e9 * per_param / GIB
    sharded = states_gb / workers if t.zero_stage == 3 else states_gb
    offloaded = 0.0
    if t.offload_optimizer:
        offloaded += policy_b * 1e9 * (per_param - (4 if t.dtype == "bfloat16" else 8)) / GIB / workers
    if t.offload_params:
        offloaded += policy_b * 1e9 * (2 if t.dtype == "bfloat16" else 4) / GIB / workers
    ref_gb = policy_b * 1e9 * (2 if t.dtype == "bfloat16" else 4) / GIB / workers if t.beta > 0 else 0.0
    # Activations: a rough allowance of 10% of the GPU, more without activation checkpointing.
    act = gpu_gb * (0.1 if t.activation_checkpointing else 0.25)
    per_gpu = max(sharded - offloaded, 0) + ref_gb + act
    trainer_gpus = workers * max(1, int(res.trainer.num_gpus)) if res.trainer.num_gpus > 0 else 0
    roles.append(RoleNeed("trainer", trainer_gpus, round(per_gpu, 1), {
        "bytes_per_param": per_param, "states_gb_total": round(states_gb, 1),
        "states_gb_per_gpu": round(sharded - offloaded, 1), "reference_gb_per_gpu": round(ref_gb, 1),
        "activations_gb": round(act, 1), "zero_stage": t.zero_stage}))
    if res.trainer.num_gpus > 0 and per_gpu > gpu_gb:
        problems.append(f"trainer: needs {per_gpu:.1f} GiB per GPU but a GPU has {gpu_gb:g} GiB; raise "
                        "trainer.num_workers, enable trainer.offload_optimizer or trainer.activation_checkpointing, "
                        "or use trainer.dtype=bfloat16 with trainer.optimizer=rmsprop")
    by_role = {r.role: r.gpus for r in roles}
    # The sampler pool and a local judge live through the run; the writer's GPUs are free again before training
    # when resources.release_writer is set.
    total = by_role["sampler"] + by_role.get("judge", 0)
    if res.release_writer:
        total += max(by_role.get("writer", 0), by_role["trainer"])
    else:
        total += by_role.get("writer", 0) + by_role["trainer"]
    if res.gpus_available is not None and total > res.gpus_available:
        problems.append(f"the config needs {total} GPUs but resources.gpus_available is {res.gpus_available}")
    return Plan(roles, total, gpu_gb, res.gpus_available, problems)
