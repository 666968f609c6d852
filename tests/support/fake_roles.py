"""In-memory stand-ins for the run's roles, with the shapes the stage loop uses: a policy that answers from the
prompt, a trainer that writes a tiny safetensors folder naming its generation, and counters of what was done.

With them the whole stage loop (principles, samples, training, evaluation with the degeneration guard, commits,
resume, corrupt stages) runs in milliseconds, so its decisions are unit-tested without Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sami_ray.sami.constitutions import PrincipleSet
from sami_ray.sami.sampling import Generation

EVASIVE = "I understand these instructions clearly."


class FakePolicy:
    """Answers on topic (the query's words as a bulleted or plain list); from `degenerate_from` on, evasively."""

    def __init__(self, generation: int, degenerate: bool):
        self.generation, self.degenerate = generation, degenerate

    def _answer(self, prompt: str) -> str:
        if self.degenerate:
            return EVASIVE
        query = prompt.rsplit("QUERY:", 1)[-1].strip()
        words = re.findall(r"[A-Za-z]+", query)[:6]
        bullets = "bulleted" in prompt.split("QUERY:")[0]
        body = [f"{w} matters in generation {self.generation}." for w in words]
        return "\n".join(f"- {line}" for line in body) if bullets else " ".join(body)

    def generate(self, prompts: list[str], spec, seeds: list[int] | None = None) -> list[list[Generation]]:
        return [[Generation(self._answer(p), num_tokens=8)] * spec.n for p in prompts]

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        # A response scores higher under the prompt whose constitution it follows: enough for a positive bound.
        return [[-0.5 if ("- " in r) == ("bulleted" in p) else -2.0] * max(1, len(r.split()) // 4)
                for p, r in zip(prompts, responses, strict=True)]


@dataclass
class TrainResult:
    model_dir: str
    metrics: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)


class FakeRoles:
    """The `roles.Roles` shape. `fail_training_at` makes iteration k's training raise (a crash mid-run)."""

    def __init__(self, root: Path, degenerate_from: int | None = None, fail_training_at: int | None = None):
        self.base = root / "base-model"
        _write_model(self.base, 0)
        self.degenerate_from, self.fail_training_at = degenerate_from, fail_training_at
        self.trained: list[int] = []  # iterations trained, in order
        self.generated = 0  # prompts answered
        self.loaded: list[int] = []  # generations the policy was asked to hold, in order
        self.shut = 0
        self.early: list[tuple] = []  # start_training's arguments, one per call
        self.train_args: list[tuple] = []  # train's (init model, storage target, seed), one per call

    def base_model(self) -> Path:
        return self.base

    def render(self, constitution: str, query: str) -> str:
        return f"{constitution}\nQUERY: {query}"

    def policy(self, model: str | None):
        gen = json.loads((Path(model or self.base) / "config.json").read_text())["generation"]
        self.loaded.append(gen)
        roles = self

        class Counting(FakePolicy):
            def generate(self, prompts, spec, seeds=None):
                roles.generated += len(prompts)
                return super().generate(prompts, spec, seeds)

        return Counting(gen, self.degenerate_from is not None and gen >= self.degenerate_from)

    def forget_policy_weights(self) -> None:
        pass

    def write_principles(self, description, seeds, seed) -> PrincipleSet:
        return PrincipleSet(list(seeds), source="writer")

    def chat_tokenizer(self, role: str = "policy"):
        return None  # the plain prompt frame, as `render` above

    def judge(self):
        return None

    def start_training(self, init_model: str | None, storage, seed: int) -> bool:
        self.early.append((init_model, storage[1], seed))
        return False  # the real roles' early launch is tested with a real worker group

    def train(self, examples_path: Path, init_model: str | None, output_dir: Path, storage, seed: int
              ) -> TrainResult:
        self.train_args.append((init_model, storage[1], seed))
        k = len(Path(examples_path).read_text().splitlines())  # examples exist and are readable
        assert k > 0
        iteration = int(re.search(r"iter-(\d+)", str(storage[1])).group(1))
        if self.fail_training_at == iteration:
            raise RuntimeError(f"training crashed at iteration {iteration}")
        gen = json.loads((Path(init_model or self.base) / "config.json").read_text())["generation"] + 1
        _write_model(Path(output_dir), gen)
        self.trained.append(iteration)
        return TrainResult(str(output_dir), [{"step": 1, "loss": 0.5}], {"loss": 0.5, "mi_bound": 0.2})

    def shutdown(self) -> None:
        self.shut += 1


def _write_model(folder: Path, generation: int) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"generation": generation}))
    save_file({"w": torch.full((4,), float(generation))}, str(folder / "model.safetensors"))
