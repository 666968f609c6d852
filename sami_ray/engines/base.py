"""What every generation backend offers: sample, score, reload weights, and say which weights it holds.

The sampler actors, the principle writer and the Serve deployment talk to this protocol only, so vLLM (GPU or CPU)
and plain transformers are interchangeable behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample; `seed` is the base of the per-prompt seeds (prompt i uses seed + i unless told otherwise)."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 80
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingSpec.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSpec.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Generation:
    text: str
    truncated: bool = False  # stopped by max_tokens rather than by EOS or a stop string
    num_tokens: int = 0


@runtime_checkable
class Engine(Protocol):
    version: int  # 0 for the weights the engine started with, +1 per load_weights
    tokenizer: Any  # the model's own (chat template, token counts): callers need not load it again

    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        """`spec.n` generations per prompt; `seeds[i]` (default spec.seed + i) makes prompt i reproducible
        whatever else is in the batch."""
        ...

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of each response given its prompt (tokenised apart and joined, no EOS added)."""
        ...

    def load_weights(self, path: str) -> int:
        """Replace the weights with those of an HF safetensors folder of the same architecture; the new version."""
        ...


def prompt_seeds(spec: SamplingSpec, count: int, seeds: list[int] | None) -> list[int]:
    if seeds is None:
        return [spec.seed + i for i in range(count)]
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
