"""A multi-node Ray cluster on 127.0.0.1 for tests: a head and worker nodes, each a ``ray start --block`` process.

Every node is a separate Ray node (its own raylet, object store and worker processes) with logical resources, as on a
real cluster, so Ray schedules trials across nodes, retries them when a node dies, and the autoscaler (with Ray's
``fake_multinode`` provider) adds and removes nodes. Each ``ray start`` runs in a session of its own; a node is
killed by the pids of that session (never ``ray stop``, which stops every Ray on the machine). The cluster's temp dir
is short (Unix socket paths are limited to 107 bytes) and removed at the end.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.services import LOOPBACK, free_port

# Ray marks a node dead after it misses this many health checks of this period: 5 x 1 s here instead of 5 x 3 s, so a
# killed node's trials are retried sooner. Every node and driver of the cluster reads the same value.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


def session_pids(sid: int) -> list[int]:
    """Every live process of the session ``sid`` (a ``ray start`` and all it spawned)."""
    pids = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (only processes this test started: the session is ours)."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Node:
    """One ``ray start`` process (and its session) of the cluster."""

    name: str
    process: subprocess.Popen

    @property
    def sid(self) -> int:
        return self.process.pid  # start_new_session: the session id is the leader's pid


class LoopbackCluster:
    """Head and workers on 127.0.0.1, each with its own logical CPUs/GPUs/custom resources; see the module doc."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        # Token auth as on a real cluster (Ray 2.60 turns it on for a new head anyway, with ~/.ray/auth_token): this
        # cluster's own token, given to every node and to every driver the test starts through ``self.env``.
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, **FAST_HEALTH_CHECKS, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[Node] = []

    # -- nodes -----------------------------------------------------------------------------------------------
    def start_head(self, num_cpus: float, resources: Mapping[str, float] | None = None,
                   autoscaling_config: Path | None = None, env: Mapping[str, str] | None = None) -> Node:
        args = ["--head", "--port", str(self.port), "--temp-dir", str(self.root / "ray"),
                "--include-dashboard", "false"]
        if autoscaling_config:
            args += ["--autoscaling-config", str(autoscaling_config)]
        node = self._start("head", args, num_cpus, 0, resources, env)
        self.wait_for(lambda: _listens(self.port), "the head's GCS port", timeout=90)
        return node

    def add_worker(self, num_cpus: float, num_gpus: float = 0, resources: Mapping[str, float] | None = None) -> Node:
        """Start a worker node and wait until it has joined and its ``ray start`` still runs. Ray gives a new node
        30 s (a constant in ``ray/_private/node.py``) to register, then ``ray start`` gives up and kills it: on this
        2-core machine under a full test run that happened. A node that gave up is started again, twice at most."""
        expected = len(self.alive_nodes()) + 1  # the nodes before it have joined (or died): each add waits
        for _ in range(3):
            node = self._start(f"worker{len(self.nodes)}", ["--address", self.address], num_cpus, num_gpus,
                               resources, None)
            def joined_or_gave_up(started: Node = node) -> bool:
                return len(self.alive_nodes()) >= expected or started.process.poll() is not None

            self.wait_for(joined_or_gave_up, f"{node.name} to join", timeout=120)
            time.sleep(1)  # a node that joined just before its ray start gave up is seen dead here
            if node.process.poll() is None and len(self.alive_nodes()) >= expected:
                return node
            kill_session(node.sid)
        raise AssertionError(f"no worker node could join the cluster at {self.address}:\n{self.logs()}")

    def _start(self, name: str, args: list[str], num_cpus: float, num_gpus: float,
               resources: Mapping[str, float] | None, env: Mapping[str, str] | None) -> Node:
        # `ray start` through this Python (the `ray` script may not be on PATH, e.g. in a venv not activated).
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args,
                   "--node-ip-address", LOOPBACK, "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
                   "--resources", json.dumps(dict(resources or {})), "--disable-usage-stats",
                   # One machine, several nodes: each node's agent needs its own port (Ray's default is fixed).
                   "--dashboard-agent-listen-port", str(free_port())]
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process's life)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**self.env, **(env or {})})
        node = Node(name, process)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The live nodes: ``{"node_id", "resources"}`` each."""
        return [n for n in self.node_table() if n["alive"]]

    def node_table(self) -> list[dict[str, Any]]:
        """Every node the GCS knows (alive and dead), asked by a short-lived Python with this cluster's token (the
        test process itself may hold another Ray with another token, so it does not ask in-process)."""
        result = subprocess.run([sys.executable, "-c", _NODE_TABLE, self.address], env=self.env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            return []
        return json.loads(result.stdout.strip().splitlines()[-1])

    def node_pids(self, node_id: str) -> list[int]:
        """Every process of node ``node_id``: its raylet, the workers the raylet started (trial processes among
        them), and its agents (their command lines name the node). Found among this cluster's sessions only; a
        node the fake autoscaler started lives in the head's session, one started by ``ray start`` in its own."""
        pids: set[int] = set()
        for node in self.nodes:
            for pid in session_pids(node.sid):
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    if any(node_id in arg for arg in proc.cmdline()[1:]):
                        pids.add(pid)
                        if proc.name() == "raylet":
                            pids.update(child.pid for child in proc.children(recursive=True))
        return sorted(pids)

    def kill_node(self, node_id: str) -> None:
        """``kill -9`` every process of ``node_id`` at once, as when its machine goes away (a preempted spot
        instance): the raylet, the trial processes on it, its agents. The GCS marks it dead after missed health
        checks; Tune retries its trials elsewhere; the autoscaler replaces it."""
        pids = self.node_pids(node_id)
        if not any(psutil.Process(pid).name() == "raylet" for pid in pids):
            raise AssertionError(f"no raylet of node {node_id} among this cluster's processes")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            kill_session(node.sid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def logs(self) -> str:
        """The tail of every node's ``ray start`` output, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.log")))


_NODE_TABLE = """
import json, sys
from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=30)
print(json.dumps([{"node_id": key.hex(), "alive": info.state == 0, "resources": dict(info.resources_total)}
                  for key, info in nodes.items()]))
"""


def _listens(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def loopback_cluster(env: Mapping[str, str] | None = None) -> Iterator[LoopbackCluster]:
    cluster = LoopbackCluster(env)
    try:
        yield cluster
    finally:
        cluster.shutdown()
