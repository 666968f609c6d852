"""Training on Ray Train + DeepSpeed. `train`, `TrainingLaunch` and `TrainResult` load on first use:
`sami_ray.train.step` (torch only) must import without the trainer's config (pydantic, yaml), since
scripts/gpu_check.sh runs the step on a bare GPU machine that has neither."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import TrainingLaunch, TrainResult, train

__all__ = ["TrainResult", "TrainingLaunch", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
