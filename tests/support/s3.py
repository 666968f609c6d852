"""Real S3 endpoints for tests: moto server subprocesses, one per session or one a test can kill or freeze.

The fixtures `s3_server` and `moto_process` are registered for every test by `pytest_plugins` in tests/conftest.py;
benchmarks import the classes (`from tests.support.s3 import MotoProcess`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ACCESS_KEY = "AKIASAMIRAYTEST00001"
SECRET_KEY = "sami-ray-test-secret-never-printed-0000"  # tests check that this string leaks nowhere
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout} s")


@dataclass
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def new_bucket(self, prefix: str = "bkt") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for `CheckpointStore.open` that reach this endpoint."""
        kw: dict[str, Any] = {"endpoint_url": self.url, "region": REGION, "access_key_id": ACCESS_KEY,
                              "secret_access_key": SECRET_KEY}
        kw.update(overrides)
        return kw


class MotoProcess:
    """`moto_server` in its own process on a fixed free port, so a test can kill it, freeze it and restart it."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = S3Endpoint(f"http://127.0.0.1:{self.port}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoProcess:
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _wait_ready(self.endpoint.url, proc=self.proc)
        return self

    def kill(self) -> None:
        """Die at once, as a crashed server does; all of its (in-memory) state is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process must be able to die
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """Stop answering but keep all state: connections hang until `thaw`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """A moto S3 server subprocess on a free port of 127.0.0.1, for the whole test session.

    Not in-process: moto's Flask app would put Flask's context proxies into this process, and vLLM's start-up
    scan of every module's globals fails on them ("Working outside of application context").
    """
    mp = MotoProcess().start()
    try:
        yield mp.endpoint
    finally:
        mp.kill()


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    """A moto server subprocess the test may kill, freeze and restart."""
    mp = MotoProcess().start()
    try:
        yield mp
    finally:
        mp.kill()


class OutageProxy:
    """A TCP proxy in front of an S3 endpoint that goes down for `outage_s` seconds when it first sees a request
    whose bytes contain `trigger` (e.g. the key of a model file being uploaded): that connection is cut and new
    ones are refused until the outage ends. Everything else passes through unchanged."""

    def __init__(self, upstream_port: int, trigger: bytes, outage_s: float = 10.0):
        import threading

        self.upstream_port, self.trigger, self.outage_s = upstream_port, trigger, outage_s
        self.down_until = 0.0
        self.outages = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _down(self) -> bool:
        return time.monotonic() < self.down_until

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self._down():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.trigger in data:
                    with self._lock:
                        if self.outages == 0:
                            self.outages += 1
                            self.down_until = time.monotonic() + self.outage_s
                if self._down():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # shutdown first: it wakes the other direction's blocked recv
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.sock.close()
