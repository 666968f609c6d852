"""What every generation backend offers: sample, score, reload weights, and say which weights it holds.

The sampler actors, the principle writer and the Serve deployment talk to this protocol only, so vLLM (GPU or CPU)
and plain transformers are interchangeable behind them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..sami.sampling import Generation, SamplingSpec
from ..sami.seeds import derive_seed
from ..sami.tokens import encode_pair, encode_prompt

__all__ = ["Engine", "Generation", "SamplingSpec", "encode_pair", "encode_prompt", "prompt_seeds"]


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
        """Per-token log-probs of each response given its prompt, tokenised by `encode_pair` (the prompt as a
        sampler sees it, BOS first when the tokenizer adds one; the response without special tokens; no EOS)."""
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
