"""The one rule for turning a (prompt, response) pair into token ids, shared by the trainer and every scorer.

The prompt is tokenised as the tokenizer does by default for a text prompt (special tokens on: a BOS first when
the tokenizer adds one), which is exactly what vLLM does when it samples from a text prompt. The response is
tokenised without special tokens and appended. So the ids the trainer and the engines score are the ids the
sampler saw, for Llama/Mistral-style tokenizers (BOS) as for those that add nothing (GPT-2, Qwen).
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode_pair", "encode_prompt", "encode_response", "truncate_prompt"]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """A text prompt's ids as a sampler sees them: the tokenizer's default special tokens (BOS when it adds one).

    An empty prompt that gives no ids becomes the BOS (or EOS): a response needs a token before it to be scored."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        bos = getattr(tokenizer, "bos_token_id", None)
        token = bos if bos is not None else getattr(tokenizer, "eos_token_id", None)
        if token is None:
            raise ValueError("an empty prompt needs a BOS or EOS token to stand in for it; the tokenizer has none")
        ids = [token]
    return ids


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """A response's ids: tokenised alone, without special tokens (no BOS before it, no EOS added)."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Prompt ids and response ids; the scored sequence is their concatenation."""
    return encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)


def truncate_prompt(ids: list[int], max_tokens: int | None, bos_token_id: int | None = None) -> list[int]:
    """Prompt ids cut from the left to at most `max_tokens` (the query end stays); a leading BOS stays first."""
    if not max_tokens or len(ids) <= max_tokens:
        return list(ids)
    if bos_token_id is not None and ids and ids[0] == bos_token_id:
        keep = max_tokens - 1
        return [ids[0]] + (list(ids[len(ids) - keep:]) if keep > 0 else [])
    return list(ids[len(ids) - max_tokens:])
