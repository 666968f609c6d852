"""The judge path against a real OpenAI-style chat-completions server on 127.0.0.1, started by the test:
a fair judge, a slow one (timeouts), one that fails with 500 (first attempt or always), one that answers garbage,
one that wants an API key, and an address nobody listens on."""

import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sami_ray.config import JudgeConfig
from sami_ray.errors import UserError
from sami_ray.evaluate.judge import OpenAIJudge, PairItem, judge_from_config, judge_pairs

_ANSWERS = re.compile(r"\[Answer A\]\n(.*?)\n\[End of Answer A\].*?\[Answer B\]\n(.*?)\n\[End of Answer B\]", re.S)
SECRET = "sk-test-do-not-log-1234"


def _list_lines(text: str) -> int:
    return sum(line.startswith("- ") for line in text.splitlines())


class JudgeHandler(BaseHTTPRequestHandler):
    attempts: Counter = Counter()
    auth_seen: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def do_POST(self):  # noqa: N802 - http.server's naming
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": "not found"})
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model, prompt = req["model"], req["messages"][0]["content"]
        JudgeHandler.auth_seen.append(self.headers.get("Authorization"))
        JudgeHandler.attempts[(model, prompt)] += 1
        if model == "slow":
            time.sleep(1.0)
        if model == "broken" or (model == "flaky" and JudgeHandler.attempts[(model, prompt)] == 1):
            return self._reply(500, {"error": "internal"})
        if model == "keyed" and self.headers.get("Authorization") != f"Bearer {SECRET}":
            return self._reply(401, {"error": "bad key"})
        if model == "garbage":
            text = "Both answers have merit; I cannot pick."
        else:  # prefers the answer with more '- ' lines; a tie when equal
            a, b = _ANSWERS.search(prompt).groups()
            la, lb = _list_lines(a), _list_lines(b)
            text = "Reason: list formatting. " + ("[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]")
        self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


PAIRS = [
    PairItem("How do I bake bread?", "1. Answer as a bulleted list.", "- mix\n- knead\n- bake", "Mix, knead, bake.",
             "writing"),
    PairItem("How do I fix a tire?", "1. Answer as a bulleted list.", "Patch the tube.", "- find hole\n- patch",
             "writing"),
    PairItem("How do I sleep?", "1. Answer as a bulleted list.", "Go to bed early.", "Avoid screens at night.",
             "roleplay"),
]


def judge(url, model, **kw):
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_s", 0.01)
    return OpenAIJudge(url, model, api_key_env="SAMI_TEST_JUDGE_KEY", **kw)


def test_fair_judge_over_http(server_url):
    out = judge_pairs(judge(server_url, "fair"), PAIRS)
    # pair 1 won twice, pair 2 lost twice, pair 3 tied twice: (2 + 0 + 0.5 * 2) / 6
    assert (out["wins"], out["losses"], out["ties"]) == (2, 2, 2)
    assert out["win_rate"] == pytest.approx(0.5)
    assert out["position_consistency"] == 1.0 and out["errors"] == 0 and out["unparseable"] == 0
    assert out["by_category"]["writing"]["win_rate"] == 0.5 and out["by_category"]["roleplay"]["win_rate"] == 0.5


def test_timeouts_are_retried_then_counted(server_url):
    j = judge(server_url, "slow", timeout_s=0.3, max_retries=1)
    t0 = time.perf_counter()
    out = judge_pairs(j, PAIRS[:1])
    assert out["errors"] == 2 and out["win_rate"] is None
    assert out["error_kinds"] == {"timeout": 2}
    assert time.perf_counter() - t0 < 30  # bounded, not a hang
    prompts = [k for k in JudgeHandler.attempts if k[0] == "slow"]
    assert prompts and all(JudgeHandler.attempts[k] == 2 for k in prompts)  # one try plus one retry each


def test_500_is_retried(server_url):
    out = judge_pairs(judge(server_url, "flaky", max_retries=2), PAIRS)
    assert out["errors"] == 0 and out["win_rate"] == pytest.approx(0.5)
    broken = judge_pairs(judge(server_url, "broken", max_retries=2), PAIRS[:2])
    assert broken["errors"] == 4 and broken["error_kinds"] == {"http 500": 4} and broken["win_rate"] is None
    assert all(JudgeHandler.attempts[k] == 3 for k in JudgeHandler.attempts if k[0] == "broken")


def test_garbage_verdicts_are_reported(server_url):
    out = judge_pairs(judge(server_url, "garbage"), PAIRS[:2])
    assert out["unparseable"] == 4 and out["win_rate"] is None and out["errors"] == 0
    assert out["unparseable_examples"][0].startswith("Both answers have merit")


def test_api_key_from_env_and_never_logged(server_url, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("SAMI_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(UserError, match=r"HTTP 401.*SAMI_TEST_JUDGE_KEY") as e:
        judge_pairs(judge(server_url, "keyed"), PAIRS[:1])
    assert SECRET not in str(e.value)
    monkeypatch.setenv("SAMI_TEST_JUDGE_KEY", SECRET)
    cfg = JudgeConfig(kind="openai", url=server_url, model="keyed", api_key_env="SAMI_TEST_JUDGE_KEY")
    out = judge_pairs(judge_from_config(cfg), PAIRS)
    assert out["win_rate"] == pytest.approx(0.5)
    assert f"Bearer {SECRET}" in JudgeHandler.auth_seen
    assert SECRET not in caplog.text and SECRET not in json.dumps(out)


def test_unreachable_judge_names_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nobody listens there
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(UserError, match=rf"127\.0\.0\.1:{port}.*evaluation\.judge\.url"):
        judge_pairs(judge(url, "fair", max_retries=1), PAIRS[:1])
