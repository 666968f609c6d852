"""What every generation backend offers: sample, score, reload weights, and say which weights it holds.

The sampler actors, the principle writer and the Serve deployment talk to this protocol only, so vLLM (GPU or CPU)
and plain transformers are interchangeable behind them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..sami.sampling import Generation, SamplingSpec
from ..sami.seeds import derive_seed

__all__ = ["Engine", "Generation", "SamplingSpec", "encode_pair", "prompt_seeds"]


@runtime_checkable
class Engine(Protocol):
    version: int  # 0 for the weights the engine started with, +1 per load_weights
    tokenizer: Any  # the model's own (chat template, token counts): callers need not load it again

    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        """`spec.n` generations per prompt; `seeds[i]` (default: derived from spec.seed and i) makes prompt i
        reproducible whatever else is in the batch."""
        ...

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of each response given its prompt (tokenised apart and joined, no EOS added)."""
        ...

    def load_weights(self, path: str) -> int:
        """Replace the weights with those of an HF safetensors folder of the same architecture; the new version."""
        ...


def prompt_seeds(spec: SamplingSpec, count: int, seeds: list[int] | None) -> list[int]:
    """The given per-prompt seeds, or seeds derived from `spec.seed` and each prompt's position."""
    if seeds is None:
        return [derive_seed(spec.seed, i) for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} prompts")
    return list(seeds)


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and a response, tokenised apart: the layout the trainer and the MI bound use."""
    p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if not p:
        # A response needs a token before it to be scored; the BOS (or EOS) stands in for an empty prompt.
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        p = [bos]
    return p, r
