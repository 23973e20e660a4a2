"""Servers the tests start on loopback and stop by pid: an MLflow tracking server, an S3 endpoint (moto), and a proxy
that records which processes talk to a server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own loopback server)
            return response.status == 200
    except OSError:
        return False


def wait_for(condition: object, what: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll ``condition()`` until true; fail if ``process`` exits first or after ``timeout`` s (a bound on a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:g} s")
        time.sleep(0.2)


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on a sqlite store in ``folder``, on 127.0.0.1 only, in its own session (its workers stop
    with it: :func:`stop`)."""
    log = (folder / f"mlflow-server-{port}.log").open("a")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: a lighter start
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", LOOPBACK, "--port", str(port),
         "--workers", "1"], cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True)
    wait_for(lambda: answers(f"http://{LOOPBACK}:{port}/health"), "the MLflow server", server)
    return server


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the session a server was started in (the server and its workers; nothing else)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def s3_client(endpoint: str) -> object:
    """A boto3 S3 client of :func:`s3_server`'s endpoint, with :data:`S3_KEYS`."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_KEYS["AWS_DEFAULT_REGION"])


@contextlib.contextmanager
def s3_server(bucket: str = "bucket") -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server mode) with one empty ``bucket``; yields its URL. Clients need
    :data:`S3_KEYS` and ``AWS_ENDPOINT_URL`` (pyarrow, which Tune writes with, reads both from the environment)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        s3 = s3_client(endpoint)

        def bucket_made() -> bool:
            try:
                s3.create_bucket(Bucket=bucket)
                return True
            except Exception:  # noqa: BLE001 (not listening yet)
                return False

        wait_for(bucket_made, "the S3 server", server)
        yield endpoint
    finally:
        stop(server)


class PidRecordingProxy:
    """A TCP proxy in front of ``target_port`` that records the pid of every process that connects through it (the
    peer of each accepted loopback connection, looked up in the kernel's socket table). Point a client at
    ``self.port`` and read ``self.client_pids``: who talked to the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.client_pids: set[int] = set()
        self.unknown_peers = 0
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._listener.accept()
            except OSError:
                return
            pid = _pid_of_peer(peer[1], self.port)
            if pid is None:
                self.unknown_peers += 1
            else:
                self.client_pids.add(pid)
            upstream = socket.create_connection((LOOPBACK, self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _pid_of_peer(peer_port: int, our_port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp4"):
        if conn.laddr and conn.raddr and conn.laddr.port == peer_port and conn.raddr.port == our_port:
            return conn.pid
    return None


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
