"""Export the trained weights as a Hugging Face safetensors folder (config, tokenizer, model.safetensors).

Every rank takes part in gathering each ZeRO-3 partitioned parameter; rank 0 keeps a CPU copy, loads it into a
plain model built without DeepSpeed, and writes the folder with `save_pretrained` (which also writes the hub layout
of models whose in-memory layout differs, like Mixtral's fused experts). The folder appears whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_folder


def gather_state_dict(model: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """Full parameters (and persistent buffers) on rank 0, one parameter gathered at a time; {} elsewhere."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                # A gathered ZeRO-3 parameter is released when the block ends: keep a copy. A whole parameter
                # already in CPU memory is kept as it is (training is over; 0.5 GB less to copy at 135M).
                partitioned = hasattr(param, "ds_id")
                state[name] = param.data.detach().to("cpu", copy=partitioned)
    if rank == 0:
        persistent = set(model.state_dict(keep_vars=True).keys())
        for name, buf in model.named_buffers():
            if name in persistent:
                state[name] = buf.detach().to("cpu", copy=True)
    return state


def write_hf_folder(state: dict[str, torch.Tensor], init_model_path: str, out_dir: str | Path,
                    dtype: torch.dtype) -> Path:
    """Build a plain model from the init model's config, load `state`, save model and tokenizer atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # otherwise building a model here is a collective that only rank 0 joins
    out = Path(out_dir)
    config = AutoConfig.from_pretrained(init_model_path)
    with no_init_weights():  # the weights are about to be replaced: skip random initialisation
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"exported state does not fit the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(init_model_path).save_pretrained(tmp)
    return out
