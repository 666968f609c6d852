"""The DeepSpeed config of a training run, built from `TrainerConfig`.

Optimizer and LR schedule are torch objects handed to `deepspeed.initialize` (see optim.py), so the config holds
only what DeepSpeed itself manages: ZeRO stage and offload, precision, accumulation, clipping.
"""

from __future__ import annotations

from typing import Any

from ..config import TrainerConfig

# Below this many parameters ZeRO-3 would keep every tensor whole under DeepSpeed's default persistence threshold
# (1e5 elements); a threshold of 0 partitions everything, which tiny test models need to be sharded at all.
SMALL_MODEL_PARAMS = 100_000_000
# DeepSpeed's defaults, stated so that `plan` counts the buffers they size: ZeRO keeps a gradient reduce bucket of
# this many elements (allocated whole on every rank), and ZeRO-3 steps the optimizer one sub-group of this many
# elements at a time (each needing a master-precision copy of its gradients while it steps).
REDUCE_BUCKET_ELEMENTS = 500_000_000
SUB_GROUP_ELEMENTS = 1_000_000_000


def worker_clips(cfg: TrainerConfig) -> bool:
    """At ZeRO stage 0 in fp32 DeepSpeed clips with torch and throws the gradient norm away; there the training
    worker clips itself, in the one pass that also gives the norm it reports."""
    return cfg.zero_stage == 0 and cfg.dtype == "float32"


def build_ds_config(cfg: TrainerConfig, *, world_size: int, num_params: int | None = None) -> dict[str, Any]:
    """A DeepSpeed config dict. One DeepSpeed "sample" is one micro-batch of `micro_batch_queries` queries."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "reduce_bucket_size": REDUCE_BUCKET_ELEMENTS}
    if cfg.zero_stage == 3:
        small = num_params is not None and num_params < SMALL_MODEL_PARAMS
        zero.update({
            "stage3_param_persistence_threshold": 0 if small else 100_000,
            "stage3_gather_16bit_weights_on_model_save": True,
            "sub_group_size": SUB_GROUP_ELEMENTS,
            "overlap_comm": False,  # no side streams on CPU; on GPU the gain is small for this step's shape
        })
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if cfg.offload_optimizer and cfg.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.grad_accum * world_size,
        "zero_optimization": zero,
        "bf16": _bf16(cfg.dtype, cfg.master_weights),
        "fp16": {"enabled": False},
        # torch AdamW/RMSprop: no C++ op to compile (FusedAdam / DeepSpeedCPUAdam cost 80-100 s on CPU).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    # Always set: DeepSpeed's own default clips at 1.0, so leaving it out would clip where the config says not to,
    # or clip a second time after the worker did.
    clips_here = cfg.max_grad_norm is not None and not worker_clips(cfg)
    config["gradient_clipping"] = cfg.max_grad_norm if clips_here else 0.0
    return config


def _bf16(dtype: str, master_weights: str) -> dict[str, Any]:
    """Without the two master options DeepSpeed keeps fp32 master weights and fp32 optimizer states under bf16;
    with them, master weights, their gradients and the (torch) optimizer's states are all bf16."""
    bf16: dict[str, Any] = {"enabled": dtype == "bfloat16"}
    if master_weights == "bfloat16":  # TrainerConfig allows it only with dtype bfloat16 and ZeRO 1-3
        bf16.update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    return bf16


def inference_ds_config(train_config: dict[str, Any]) -> dict[str, Any]:
    """The frozen reference model's config: the same sharding, no optimizer, no offload of optimizer state."""
    zero = {k: v for k, v in train_config["zero_optimization"].items() if k != "offload_optimizer"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": train_config["gradient_accumulation_steps"],
        "train_batch_size": train_config["train_batch_size"],
        "zero_optimization": zero,
        "bf16": {"enabled": train_config["bf16"]["enabled"]},  # no optimizer: no master weights
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
    }
