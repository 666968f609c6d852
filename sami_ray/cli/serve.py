"""`sami-ray serve CHECKPOINT`: a Ray Serve deployment answering OpenAI-style completions and chat completions.

The checkpoint is a model folder, `builtin:NAME`, or a run URI (its latest committed model). When the environment
variable SAMI_RAY_SERVE_TOKEN is set, every request needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from ray import serve

from ..config import EngineOptions, load_config
from ..errors import UserError
from ..sami.prompts import has_chat_template

TOKEN_ENV = "SAMI_RAY_SERVE_TOKEN"


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(default=128, gt=0, le=8192)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: list[str] | str | None = None
    seed: int | None = None


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=256, gt=0, le=8192)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: list[str] | str | None = None
    seed: int | None = None


def token_digest(token: str | None) -> str | None:
    """Only a digest of the token travels to the replicas: the secret itself is never stored in the cluster."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def _check_token(request: Request, expected_digest: str | None) -> None:
    if not expected_digest:
        return
    got = request.headers.get("authorization", "")
    presented = got[len("Bearer "):] if got.startswith("Bearer ") else ""
    if not hmac.compare_digest(token_digest(presented) or "", expected_digest):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")


def _require_token(request: Request) -> None:
    """Runs before the body is parsed, so an unauthenticated request gets 401 whatever it sends, never a 422."""
    _check_token(request, serve.get_replica_context().servable_object.token_digest)


# Every route needs the token (when one is set); the check is a dependency so it precedes body validation.
api = FastAPI(title="sami-ray serve", dependencies=[Depends(_require_token)])


def _finish(generation) -> str:
    return "length" if generation.truncated else "stop"


def _stops(stop: list[str] | str | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


@serve.deployment(name="sami-serve", max_ongoing_requests=16)
@serve.ingress(api)
class CompletionServer:
    def __init__(self, model_path: str, backend: str, engine_options: dict, model_name: str,
                 token_sha256: str | None = None):
        from ..engines import make_engine

        self.model_name = model_name
        self.token_digest = token_sha256
        self.engine = make_engine(model_path, backend, EngineOptions(**engine_options))
        self.tokenizer = self.engine.tokenizer  # both backends hold the model's tokenizer
        self.lock = threading.Lock()  # one engine, one request at a time inside it

    def _generate(self, prompts: list[str], req) -> list[list]:
        from ..engines.base import SamplingSpec

        spec = SamplingSpec(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
                            stop=_stops(req.stop),
                            seed=req.seed if req.seed is not None else secrets.randbelow(2**31))
        with self.lock:
            return self.engine.generate(prompts, spec)

    @api.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "sami-ray"}]}

    @api.post("/v1/completions")
    def completions(self, req: CompletionRequest) -> dict:
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        outs = self._generate(prompts, req)
        choices = [{"index": i * req.n + j, "text": g.text, "finish_reason": _finish(g), "logprobs": None}
                   for i, gens in enumerate(outs) for j, g in enumerate(gens)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices}

    @api.post("/v1/chat/completions")
    def chat(self, req: ChatRequest) -> dict:
        messages = [m.model_dump() for m in req.messages]
        if has_chat_template(self.tokenizer):
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"
        gens = self._generate([prompt], req)[0]
        choices = [{"index": j, "message": {"role": "assistant", "content": g.text}, "finish_reason": _finish(g)}
                   for j, g in enumerate(gens)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices}


def resolve_checkpoint(checkpoint: str, storage_overrides: dict | None = None) -> tuple[Path, str]:
    """(local safetensors folder, a display name) for a model (folder, builtin:NAME, hub id org/name, s3:// model
    folder) or a run (local or s3://: its latest committed model)."""
    from ..models import require_safetensors, resolve_model_path
    from ..storage import CheckpointStore
    from ..storage.run import RunStore

    settings = storage_overrides or {}
    name = Path(checkpoint.rstrip("/")).name or checkpoint
    local = Path(checkpoint).expanduser()
    remote = checkpoint.startswith("s3://")
    if not remote and not local.exists() and not checkpoint.startswith("builtin:"):
        return resolve_model_path(checkpoint, storage=settings), name  # a hub id, or the resolver's error
    store = CheckpointStore.open(checkpoint, **settings) if remote or local.is_dir() else None
    if checkpoint.startswith("builtin:") or (store is not None and store.exists("config.json")):
        return resolve_model_path(checkpoint, storage=settings), name
    run = RunStore(store or CheckpointStore.open(checkpoint, **settings),
                   cache_dir=tempfile.mkdtemp(prefix="sami-ray-serve-"))
    latest = run.latest_model()
    if latest is None:
        raise UserError(f"{checkpoint}: neither a model folder nor a run with a committed model")
    return require_safetensors(run.require(latest[1])), f"{name}/{latest[1]}"


def build_app(checkpoint: str, config: str | None = None, overrides: list[str] | None = None,
              replicas: int | None = None):
    cfg = load_config(config, overrides or []) if (config or overrides) else load_config(None)
    # A run URI is read with the config's storage settings (S3 endpoint, region, credentials), as the run wrote it.
    path, name = resolve_checkpoint(checkpoint, cfg.storage.model_dump(exclude={"uri"}))
    res = cfg.resources.sampler
    deployment = CompletionServer.options(
        num_replicas=replicas or cfg.sampler.replicas,
        ray_actor_options={"num_cpus": res.num_cpus, "num_gpus": res.num_gpus})
    return deployment.bind(str(path), cfg.sampler.backend, cfg.sampler.engine.model_dump(), name,
                           token_digest(os.environ.get(TOKEN_ENV)))


def serve_checkpoint(checkpoint: str, config: str | None, overrides: list[str], *, host: str = "127.0.0.1",
                     port: int = 8000, replicas: int | None = None, blocking: bool = True) -> None:
    from ..runtime import ensure_ray

    cfg = load_config(config, overrides or []) if (config or overrides) else load_config(None)
    ensure_ray(cfg.resources)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(checkpoint, config, overrides, replicas), name="sami-serve", route_prefix="/",
              blocking=blocking)
