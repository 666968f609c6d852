"""`sami-ray plan`: the GPUs and per-GPU memory a run config needs, before anything is started.

Training memory under ZeRO-3 is per-parameter state split across the trainer's GPUs, plus activations.
Bytes per parameter: bf16 parameters + bf16 gradients + one bf16 RMSprop state = 6 (the paper's Mixtral setup);
mixed-precision AdamW keeps fp32 master weights and two fp32 moments = 2 + 2 + 12 = 16; fp32 AdamW = 4 + 4 + 8 = 16.
vLLM engines hold bf16 weights split over tensor-parallel ranks plus a KV cache sized by gpu_memory_utilization.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import ModelSpec, RunConfig
from ..errors import UserError

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


def _engine_need(role: str, params_b: float, tp: int, util: float, gpu_gb: float, replicas: int) -> RoleNeed:
    weights = params_b * 1e9 * 2 / GIB / tp
    kv = max(util * gpu_gb - weights, 0.0)
    return RoleNeed(role, tp * replicas, round(util * gpu_gb, 1),
                    {"replicas": replicas, "tensor_parallel": tp, "weights_gb_per_gpu": round(weights, 1),
                     "kv_cache_gb_per_gpu": round(kv, 1)})


def plan_run(cfg: RunConfig) -> Plan:
    """GPU needs of writer, samplers and trainer; problems name the config field to change."""
    res, gpu_gb = cfg.resources, cfg.resources.gpu_memory_gb
    problems: list[str] = []
    roles: list[RoleNeed] = []
    policy_b = model_params_b(cfg.models.policy)
    eng = cfg.sampler.engine
    sampler = _engine_need("sampler", policy_b, eng.tensor_parallel_size, eng.gpu_memory_utilization, gpu_gb,
                           cfg.sampler.replicas)
    if sampler.detail["weights_gb_per_gpu"] > eng.gpu_memory_utilization * gpu_gb:
        problems.append(f"sampler: {sampler.detail['weights_gb_per_gpu']} GiB of weights per GPU exceed "
                        f"{eng.gpu_memory_utilization:g} x {gpu_gb:g} GiB; raise sampler.engine.tensor_parallel_size")
    roles.append(sampler)
    if cfg.models.writer is not None and cfg.constitutions.write_with_writer:
        writer_b = model_params_b(cfg.models.writer)
        tp = max(1, int(res.writer.num_gpus) or 1)
        roles.append(_engine_need("writer", writer_b, tp, eng.gpu_memory_utilization, gpu_gb, 1))
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
    roles.append(RoleNeed("trainer", workers, round(per_gpu, 1), {
        "bytes_per_param": per_param, "states_gb_total": round(states_gb, 1),
        "states_gb_per_gpu": round(sharded - offloaded, 1), "reference_gb_per_gpu": round(ref_gb, 1),
        "activations_gb": round(act, 1), "zero_stage": t.zero_stage}))
    if per_gpu > gpu_gb:
        problems.append(f"trainer: needs {per_gpu:.1f} GiB per GPU but a GPU has {gpu_gb:g} GiB; raise "
                        "trainer.num_workers, enable trainer.offload_optimizer or trainer.activation_checkpointing, "
                        "or use trainer.dtype=bfloat16 with trainer.optimizer=rmsprop")
    uses_gpu = res.trainer.num_gpus > 0 or res.sampler.num_gpus > 0
    by_role = {r.role: r.gpus for r in roles}
    if res.release_writer:  # the writer's GPUs are free again before training starts
        total = by_role["sampler"] + max(by_role.get("writer", 0), by_role["trainer"])
    else:
        total = sum(by_role.values())
    total = total if uses_gpu else 0
    if res.gpus_available is not None and total > res.gpus_available:
        problems.append(f"the config needs {total} GPUs but resources.gpus_available is {res.gpus_available}")
    return Plan(roles, total, gpu_gb, res.gpus_available, problems)
