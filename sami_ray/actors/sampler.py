"""The policy samplers: R Ray actors, each one engine, behind a pool that shards work and survives replica death.

Every prompt carries its own sampling seed (the caller derives it from the prompt's identity), so an answer does
not depend on which replica or batch it went to: a run with 1 or 4 replicas, or one where a replica died and its
batch was redone, samples the same answers.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Sequence

import ray

from .. import faults
from ..config import EngineOptions, RoleResources, SamplerConfig
from ..engines.base import Generation, SamplingSpec, prompt_seeds
from ..errors import UserError
from ..progress import Progress
from .placement import on_this_node, reserve, strategy

log = logging.getLogger(__name__)


class SamplerError(UserError):
    pass


@ray.remote(max_restarts=0)
class PolicySampler:
    """One engine in one actor. Named `sami-sampler-<pool>-<i>` in the dashboard."""

    def __init__(self, model: str, backend: str, options: dict, version: int = 0, storage: object = None,
                 gguf_file: str | None = None):
        from ..engines import make_engine
        from ..models import resolve_model_path

        # The model is resolved here, on this replica's node (its own cache), never on the driver's disk.
        self.storage = storage
        try:
            path = resolve_model_path(model, gguf_file, storage=storage)
        except UserError as e:
            raise on_this_node("sampler replica", e) from None
        self.engine = make_engine(str(path), backend, EngineOptions(**options))
        self.engine.version = version  # a replacement replica starts on the pool's current weights
        self.calls = 0

    def ready(self) -> int:
        faults.maybe_exit_sampler_start()  # tests only: die as a replica on a lost node does, before it is ready
        return self.engine.version

    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int]) -> list[list[Generation]]:
        self.calls += 1
        out = self.engine.generate(prompts, spec, seeds)
        faults.maybe_exit_sampler(self.calls)  # tests only: die with the batch done but not returned
        return out

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        return self.engine.score(prompts, responses)

    def load_weights(self, model: str) -> int:
        from ..models import resolve_model_path

        try:
            path = resolve_model_path(model, storage=self.storage)
        except UserError as e:
            raise on_this_node("sampler replica", e) from None
        return self.engine.load_weights(str(path))


class SamplerPool:
    """R sampler replicas on their own placement-group bundles, seen from outside as one engine (generate/score)."""

    def __init__(self, model: str, cfg: SamplerConfig, resources: RoleResources,
                 runtime_env: dict | None = None, ready_timeout_s: float = 600.0, *, storage: object = None,
                 gguf_file: str | None = None, role: str = "sampler"):
        """`model` is anything `models.resolve_model_path` takes (a folder, builtin:, a hub id, s3://); each
        replica resolves it on its own node, with `storage` (S3 settings) where it is an s3:// URI. `role` names
        the config section of `resources` in placement errors."""
        tp = cfg.engine.tensor_parallel_size
        if resources.num_gpus and resources.num_gpus < tp:
            raise SamplerError(f"resources.{role}.num_gpus={resources.num_gpus} is less than the engine's "
                               f"tensor_parallel_size={tp}: each replica needs its {tp} GPUs")
        if not resources.num_gpus and resources.num_cpus < tp:
            # On CPU each rank is a process of its own inside the replica's bundle, unseen by Ray's accounting.
            raise SamplerError(f"resources.{role}.num_cpus={resources.num_cpus} is less than the engine's "
                               f"tensor_parallel_size={tp}: on CPU each replica needs a CPU per rank")
        self.cfg, self.resources, self.runtime_env = cfg, resources, runtime_env
        self.model_path = str(model)
        self.storage, self.gguf_file = storage, gguf_file
        self.version = 0
        self.ready_timeout_s = ready_timeout_s
        self.tag = uuid.uuid4().hex[:6]
        self.pg = reserve(role, resources, cfg.replicas, name=f"sami-sampler-{self.tag}")
        self.replicas = [self._spawn(i) for i in range(cfg.replicas)]
        try:
            self._wait_ready(range(cfg.replicas))
        except BaseException:
            self.shutdown()  # no half-started pool keeps its resources
            raise

    # ------------------------------------------------------------ replicas

    def _spawn(self, i: int):
        return PolicySampler.options(
            name=f"sami-sampler-{self.tag}-{i}", num_cpus=self.resources.num_cpus,
            num_gpus=self.resources.num_gpus, scheduling_strategy=strategy(self.pg, i),
            runtime_env=self.runtime_env).remote(self.model_path, self.cfg.backend, self.cfg.engine.model_dump(),
                                                 self.version, self.storage, self.gguf_file)

    def _wait_ready(self, indices) -> None:
        refs = {self.replicas[i].ready.remote(): i for i in indices}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.ready_timeout_s)
        if pending:
            raise SamplerError(f"sampler replicas {sorted(refs[r] for r in pending)} did not start within "
                               f"{self.ready_timeout_s:.0f} s (model {self.model_path})")
        for r in ready:
            try:
                ray.get(r)
            except ray.exceptions.RayError as e:
                raise SamplerError(f"sampler replica {refs[r]} failed to start on {self.model_path}: "
                                   f"{_short(e)}") from None

    def _replace(self, i: int):
        """Start a fresh replica in bundle i (the dead one's); returns the ref of its `ready`."""
        try:
            ray.kill(self.replicas[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.replicas[i] = self._spawn(i)
        return self.replicas[i].ready.remote()

    def _run(self, method: str, batches: Sequence[tuple], desc: str | None = None) -> list:
        """Run `method(*batch)` for every batch over the replicas; results in batch order, each exactly once.

        A replica that dies takes its batch back to the queue and is replaced; the other replicas carry on.
        """
        results: list = [None] * len(batches)
        attempts = [0] * len(batches)
        starts = [0] * len(self.replicas)  # failed starts of each replica's replacement in a row
        queue = deque(range(len(batches)))
        idle = deque(range(len(self.replicas)))
        inflight: dict = {}  # ref -> (batch index or None for a replacement starting, replica index)
        bar = Progress(desc or method, len(batches), unit="batch")
        while queue or any(b is not None for b, _ in inflight.values()):
            while queue and idle:
                b, r = queue.popleft(), idle.popleft()
                inflight[getattr(self.replicas[r], method).remote(*batches[b])] = (b, r)
            if not inflight:
                raise SamplerError("no sampler replica is left to run the remaining batches")
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            b, r = inflight.pop(ref)
            try:
                value = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if b is None:
                    starts[r] += 1
                    if starts[r] > self.cfg.max_retries:
                        raise SamplerError(f"replacement sampler replica {r} failed to start {starts[r]} times (last: "
                                           f"{_short(e)}); see sampler.max_retries") from None
                    # Started before Ray has marked a lost node dead (it takes some seconds of missed heartbeats),
                    # a replacement is placed in its bundle on that node and dies with it; once the node is marked
                    # dead, Ray moves the bundle to a live node.
                    wait_s = 5.0 * starts[r]
                    log.warning("replacement sampler replica %d died while starting (%s); starting another in %.0f s",
                                r, _short(e), wait_s)
                    time.sleep(wait_s)
                    inflight[self._replace(r)] = (None, r)
                    continue
                attempts[b] += 1
                if attempts[b] > self.cfg.max_retries:
                    raise SamplerError(f"batch {b} failed {attempts[b]} times: its sampler replica died each time "
                                       f"(last: {_short(e)}); see sampler.max_retries") from None
                log.warning("sampler replica %d died during batch %d (%s); replacing it and retrying", r, b, _short(e))
                queue.appendleft(b)
                inflight[self._replace(r)] = (None, r)
                continue
            if b is None:
                starts[r] = 0
                log.info("replacement sampler replica %d is ready", r)
            else:
                results[b] = value
                bar.update()
            idle.append(r)
        bar.close()
        return results

    def _batched(self, n: int) -> list[range]:
        size = self.cfg.batch_size
        return [range(s, min(s + size, n)) for s in range(0, n, size)]

    # ------------------------------------------------------------ work

    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        """The engines' shape: `spec.n` generations per prompt, prompt i sampled with `seeds[i]` whichever
        replica and batch it lands in."""
        seeds = prompt_seeds(spec, len(prompts), seeds)
        chunks = self._batched(len(prompts))
        outs = self._run("generate", [([prompts[k] for k in c], spec, [seeds[k] for k in c]) for c in chunks],
                         desc=f"sampling {len(prompts)} prompts")
        flat = [g for out in outs for g in out]
        if len(flat) != len(prompts):
            raise SamplerError(f"sampler returned {len(flat)} answers for {len(prompts)} prompts")
        return flat

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        chunks = self._batched(len(prompts))
        outs = self._run("score", [([prompts[k] for k in c], [responses[k] for k in c]) for c in chunks],
                         desc=f"scoring {len(prompts)} answers")
        return [s for out in outs for s in out]

    # ------------------------------------------------------------ weights

    def load_weights(self, model: str) -> list[int]:
        """Every replica reloads `model` (resolved on its own node); a replica that died is replaced on the new
        weights. Returns the versions."""
        self.model_path, self.version, self.gguf_file = str(model), self.version + 1, None
        refs = {self.replicas[i].load_weights.remote(self.model_path): i for i in range(len(self.replicas))}
        for ref, i in refs.items():
            try:
                ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                log.warning("sampler replica %d died; starting a fresh one on %s", i, model)
                ray.get(self._replace(i))
        versions = self.versions()
        if set(versions) != {self.version}:
            raise SamplerError(f"after loading {model} the replicas report versions {versions}, "
                               f"expected {self.version} everywhere")
        return versions

    def versions(self) -> list[int]:
        return ray.get([r.ready.remote() for r in self.replicas])

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for r in self.replicas:
            try:
                ray.kill(r, no_restart=True)
            except Exception:
                pass
        self.replicas = []
        try:
            remove_placement_group(self.pg)
        except Exception:
            pass


def _short(e: BaseException, limit: int = 600) -> str:
    """The first line of an error; for a replica whose __init__ raised, the exception it raised (the last line of
    the traceback Ray carries as text), without the type when it is a user's mistake."""
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    if getattr(e, "actor_init_failed", False) and text:
        last = text[-1].strip()
        return re.sub(r"^sami_ray\.errors\.\w+: ", "", last)[:limit]
    return (text[0] if text else type(e).__name__)[:limit]


