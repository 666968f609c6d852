"""Several Ray nodes on this one machine that do not share a disk: a head (the driver's node) and worker nodes, each
worker in its own mount namespace with a private tmpfs over /tmp and the home cache folders.

A worker node so started sees the installed environment, the network (127.0.0.1: the head, the S3 server) and its
own empty disk; nothing the driver wrote. Needs root (unshare, mount). Every node runs in a process group of its
own and is stopped by it, never by `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def can_isolate_nodes() -> str | None:
    """Why worker nodes with their own disk cannot be started here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for unshare --mount"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare --mount refused: {probe.stderr.decode().strip()}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """Kill the node's whole process group at once (raylet, object store, its workers): a lost machine."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


class LocalCluster:
    """`start()` the head, `add_worker(...)` nodes, `stop()` them all. `env` is what a job on it should see."""

    def __init__(self, root: Path, hide: tuple[str, ...] = ()):
        self.root = Path(root)
        # Short: Ray's unix socket paths live under the temp dir and must stay within 107 bytes.
        self.temp = tempfile.mkdtemp(prefix="raymn-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.hide = ("/tmp", str(Path.home() / ".cache"), *hide)
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.nodes: dict[str, Node] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, num_cpus: int = 2) -> None:
        cmd = [RAY, "start", "--head", f"--port={self.port}", f"--num-cpus={num_cpus}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats",
               f"--temp-dir={self.temp}", f"--resources={json.dumps({marker('head'): 1})}", "--block"]
        self.nodes["head"] = self._spawn("head", cmd)
        self._wait_for_node("head")

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> Node:
        """A worker node with its own /tmp and caches; the environment and the checkout stay visible. Its
        resources also hold a marker naming it (`marker(name)`), by which tests find which node ran what."""
        start = [RAY, "start", f"--address={self.address}", f"--num-cpus={num_cpus}",
                 f"--resources={json.dumps({**resources, marker(name): 1})}", "--disable-usage-stats", "--block"]
        script = self._private_disk_script() + " && exec " + " ".join(_quote(a) for a in start)
        self.nodes[name] = self._spawn(name, ["unshare", "--mount", "--propagation", "private", "bash", "-c", script])
        self._wait_for_node(name)
        return self.nodes[name]

    def kill(self, name: str) -> None:
        """Lose a node as a machine is lost: its processes die at once and it is gone from this cluster."""
        self.nodes.pop(name).kill()

    def _private_disk_script(self) -> str:
        """Mount empty tmpfs over the hidden folders; folders this process needs that lie under one of them (the
        environment, the checkout) are bind-mounted back on top."""
        keep = [p for p in {sys.prefix, str(Path(__file__).resolve().parents[2])}
                if any(p == h or p.startswith(h.rstrip("/") + "/") for h in self.hide)]
        lines = ["set -e"]
        for i, path in enumerate(keep):
            lines += [f"mkdir -p /run/sami-keep-{i}", f"mount --bind {_quote(path)} /run/sami-keep-{i}"]
        lines += [f"mkdir -p {_quote(h)} && mount -t tmpfs tmpfs {_quote(h)}" for h in self.hide]
        for i, path in enumerate(keep):
            lines += [f"mkdir -p {_quote(path)}", f"mount --bind /run/sami-keep-{i} {_quote(path)}"]
        return " && ".join(lines)

    def _spawn(self, name: str, cmd: list[str]) -> Node:
        log = self.root / f"node-{name}.log"
        out = log.open("ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return Node(name, proc, log)

    def _wait_for_node(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            node = self.nodes[name]
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {name} exited:\n{node.log.read_text()[-3000:]}")
            if name in self.node_names().values():
                return
            time.sleep(1)
        raise TimeoutError(f"Ray node {name} did not join within {timeout:.0f} s")

    def node_names(self) -> dict[str, str]:
        """{node id: name} of the nodes the cluster counts as alive."""
        p = subprocess.run([RAY, "list", "nodes", f"--address={self.address}", "--format=json", "--detail",
                            "--limit=100"], capture_output=True, text=True, env=self.env, timeout=60)
        if p.returncode != 0:
            return {}
        try:
            nodes = json.loads(p.stdout)
        except json.JSONDecodeError:
            return {}
        return {n["node_id"]: name for n in nodes if n.get("state") == "ALIVE"
                for name in [name_of(n.get("resources_total") or {})] if name}

    def ray(self, *args: str, timeout: float = 120) -> str:
        """The `ray` command against this cluster, as a user runs it."""
        p = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if p.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        return p.stdout + p.stderr

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            try:
                os.killpg(node.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for node in self.nodes.values():
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def marker(name: str) -> str:
    """The custom resource that names a node of this harness."""
    return f"node_{name}"


def name_of(resources: dict) -> str | None:
    """The harness name of a node, from its resources (None for a node it did not start)."""
    return next((k.removeprefix("node_") for k in resources if k.startswith("node_") and "." not in k), None)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
