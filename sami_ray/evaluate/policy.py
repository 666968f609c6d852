"""What evaluation needs from a model: sample answers and score given answers, in the engines' one shape.

The stage loop passes its sampler pool (vLLM actors), tests pass an engine or a plain transformers wrapper;
evaluation never imports vLLM or Ray itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..sami.sampling import Generation, SamplingSpec
from ..sami.seeds import derive_seed


@runtime_checkable
class Policy(Protocol):
    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        """`spec.n` generations per prompt; prompt i sampled with `seeds[i]`."""
        ...

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Per-token log-probs of `responses[k]` given `prompts[k]` (the prompt string followed directly by the
        response string, no EOS appended)."""
        ...


def sampling_from(sampler_cfg: object | None, n: int = 1) -> SamplingSpec:
    """Evaluation samples as the sampler is configured (defaults without a config)."""
    if sampler_cfg is None:
        return SamplingSpec(n=n)
    return SamplingSpec(n=n, temperature=float(sampler_cfg.temperature), top_p=float(sampler_cfg.top_p),
                        max_tokens=int(sampler_cfg.max_tokens), stop=list(sampler_cfg.stop))


def generate_texts(policy: Policy, prompts: list[str], spec: SamplingSpec, seed: int, keys: list | None = None
                   ) -> list[list[str]]:
    """`spec.n` texts per prompt; prompt i's seed derives from `seed` and `keys[i]` (default: its position)."""
    if not prompts:
        return []
    keys = keys if keys is not None else list(range(len(prompts)))
    out = policy.generate(list(prompts), spec, [derive_seed(seed, key) for key in keys])
    return [[g.text for g in gens] for gens in out]


def generate_one(policy: Policy, prompts: list[str], spec: SamplingSpec, seed: int, keys: list | None = None
                 ) -> list[str]:
    """One answer per prompt."""
    return [choices[0] if choices else "" for choices in generate_texts(policy, prompts, spec, seed, keys)]
