"""What evaluation needs from a model: sample answers and score given answers. Nothing else.

The driver passes its sampler pool (vLLM actors), tests pass a plain transformers wrapper; evaluation never imports
vLLM or Ray itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Policy(Protocol):
    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 seed: int) -> list[list[str]]:
        """`n` completions per prompt (outer list aligned with `prompts`)."""
        ...

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of `responses[k]` given `prompts[k]` (the prompt string followed directly by the
        response string, no EOS appended)."""
        ...


@dataclass(frozen=True)
class Sampling:
    """How evaluation samples: one answer per (query, constitution, seed) unless `n` says otherwise."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 80

    @classmethod
    def from_sampler(cls, sampler_cfg: object | None) -> Sampling:
        if sampler_cfg is None:
            return cls()
        return cls(float(sampler_cfg.temperature), float(sampler_cfg.top_p), int(sampler_cfg.max_tokens))


def generate_one(policy: Policy, prompts: list[str], sampling: Sampling, seed: int) -> list[str]:
    """One answer per prompt."""
    if not prompts:
        return []
    out = policy.generate(prompts, n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                          max_tokens=sampling.max_tokens, seed=seed)
    return [choices[0] if choices else "" for choices in out]
