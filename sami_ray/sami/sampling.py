"""What a generation is asked for and what it gives back: plain data shared by the algorithm and the engines.

The engines (sami_ray/engines) implement sampling behind a protocol that takes a `SamplingSpec` and returns
`Generation`s; the algorithm (the principle writer) builds the one and reads the other without importing an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample; `seed` is the base of the per-prompt seeds when none are given (see `prompt_seeds`)."""

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
