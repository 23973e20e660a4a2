"""Where Ray runs: an embedded local instance by default, or a running cluster (``--address`` / ``RAY_ADDRESS``)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

SHARED_STORAGE_SCHEMES = ("s3://", "gs://", "gcs://", "abfss://", "hdfs://")
PROBE_TIMEOUT_S = 10.0  # per connect and per read: an address that answers nothing fails in ~20 s, not never
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a gRPC client sends first (RFC 9113, 3.4)
HTTP2_SETTINGS = 0x4  # the frame type a gRPC server answers the preface with


EMBEDDED = "embedded local Ray"  # what connect() returns when it started its own Ray (callers test for it)


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Start or join Ray; returns a description for the user. Reuses a Ray already initialized in this process."""
    import ray

    from orchestrator import cli

    if ray.is_initialized():
        return "the Ray instance already running in this process"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_listens(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as err:
            if _is_auth_failure(err):
                raise ClusterError(token_refusal(address)) from None
            if isinstance(err, ConnectionError):
                raise ClusterError(f"could not join the Ray cluster at {address}: {err}") from None
            raise
        where = f"Ray cluster at {address}"
    else:
        # address="local" always starts a fresh instance owned by this process: never attach to someone else's.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
        where = EMBEDDED
    cli.forward_sigterm()  # ray.init replaced our SIGTERM handler with its own sys.exit
    return where


class ClusterError(RuntimeError):
    """No Ray cluster at the address the user gave, or one that refuses us (a user error: one line, exit 2)."""


def _is_auth_failure(err: BaseException) -> bool:
    """Whether ``ray.init`` failed on Ray's token authentication: an ``AuthenticationError`` itself (no token
    here), or, when the cluster refused the token after its retries (~20 s), a ``ConnectionError`` caused by a
    ``RuntimeError`` that carries the GCS client's ``AuthenticationError`` only as text (Ray 2.60)."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen) or (
                f"{AuthenticationError.__module__}.{AuthenticationError.__name__}" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def token_refusal(address: str) -> str:
    """The one line for a driver a token-protected cluster refused: what the cluster requires, and which part of
    this process's settings is missing or wrong (Ray's own message is a paragraph, after a traceback)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if mode != "token":
        here = f"RAY_AUTH_MODE is {mode!r} here" if mode else "RAY_AUTH_MODE is not set here"
    elif os.environ.get("RAY_AUTH_TOKEN"):
        here = "the token in RAY_AUTH_TOKEN is not the cluster's"
    elif token_path:
        readable = os.path.isfile(token_path) and os.path.getsize(token_path) > 0
        here = (f"the token in RAY_AUTH_TOKEN_PATH={token_path} is not the cluster's" if readable
                else f"RAY_AUTH_TOKEN_PATH={token_path} cannot be read or is empty")
    else:
        default = Path.home() / ".ray" / "auth_token"
        here = (f"the token in {default} is not the cluster's" if default.is_file()
                else f"no token here (no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or {default})")
    return (f"the Ray cluster at {address} refused this driver: it requires Ray's token authentication "
            f"(RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or "
            f"~/.ray/auth_token), and {here}")


def check_ray_listens(address: str) -> None:
    """Fail in seconds, with one line, where ``ray.init(address)`` would retry for minutes: nothing listens at the
    address, or what answers is not a gRPC server (Ray's GCS and its client server both are). Ray's own connect
    cannot be bounded from Python: its retries run in C++ and ignore signals until they give up."""
    import ray._private.services

    hint = "start one with `ray start --head` or drop --address (an embedded local Ray is the default)"
    if address.startswith("ray://"):
        target = address.removeprefix("ray://")
        target = target if ":" in target else f"{target}:10001"
    else:
        try:  # "auto" -> the latest `ray start` on this machine; localhost -> this node's IP, as ray.init does
            target = ray._private.services.canonicalize_bootstrap_address(address)
        except (ConnectionError, ValueError) as err:
            raise ClusterError(f"no Ray cluster at '{address}' ({err}); {hint}") from None
        if not target:
            raise ClusterError(f"no Ray cluster found for --address {address}; {hint}")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT, ray://HOST[:PORT] or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S) as conn:
            conn.sendall(HTTP2_PREFACE)
            frame = conn.recv(9)
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterError(f"no Ray cluster at {address} ({_resolved(address, target)}{reason}); {hint}") from None
    if len(frame) < 4 or frame[3] != HTTP2_SETTINGS:
        raise ClusterError(f"no Ray cluster at {address} ({_resolved(address, target)}something answers there, but "
                           f"not a gRPC server as Ray's is); {hint}")


def _resolved(address: str, target: str) -> str:
    return "" if target in address else f"{target}: "


def default_storage() -> str:
    """Tune's storage path for local runs: ``./ray_results`` next to MLflow's ``mlflow.db``."""
    return str(Path.cwd() / "ray_results")


def normalize_storage(storage: str | None) -> str:
    """An absolute local path or a URI (``s3://...``)."""
    if not storage:
        return default_storage()
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


class StorageError(RuntimeError):
    """Tune's storage cannot be written (a user error: one line, exit 2)."""


def check_storage(storage: str) -> None:
    """Fail with one line, before Ray starts or MLflow is touched, where Tune could not write its experiment state:
    otherwise the parent run is recorded and Ray started, and Tune fails on its first save with a traceback (a local
    path) or retries an S3 endpoint that is not there. Writes nothing that stays: a probe folder, removed again
    (beside the storage folder when that does not exist yet, so a failed check leaves no folder behind)."""
    import pyarrow.fs

    probe_name = f".deeprepro-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if "://" not in storage:
        existing = Path(storage)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"cannot write to the storage {storage}: {existing} is a file, not a folder")
        try:
            (existing / probe_name).mkdir()
            (existing / probe_name).rmdir()
        except OSError as err:
            raise StorageError(f"cannot write to the storage {storage}: creating a folder in {existing} failed "
                               f"({err.strerror or err})") from None
        return
    hint = ("check the bucket, the endpoint (AWS_ENDPOINT_URL or ?endpoint_override=HOST:PORT&scheme=http) and the "
            "credentials")
    try:  # the same filesystem Tune uses (pyarrow's, from the URI) and what Tune does first: create its folder
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        fs.create_dir(f"{path.rstrip('/')}/{probe_name}", recursive=True)
        fs.delete_dir(f"{path.rstrip('/')}/{probe_name}")
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        message = " ".join(str(err).split())[:300]
        raise StorageError(f"cannot write to the storage {storage}: {message}; {hint}") from None


def is_shared(storage: str) -> bool:
    """Whether every node of a cluster can reach ``storage`` (needed for checkpoints once there are several)."""
    return storage.startswith(SHARED_STORAGE_SCHEMES) or os.environ.get("DEEPREPRO_SHARED_STORAGE") == "1"


class RecordError(RuntimeError):
    """No resumable experiment record at the given place (a user error: one line, exit 2)."""


def read_record(path: str) -> dict[str, Any]:
    """The JSON record a CLI keeps beside its Tune experiment (parent run id, argv), local or on s3://."""
    import pyarrow.fs

    fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    try:
        with fs.open_input_stream(fs_path) as stream:
            return json.loads(stream.read().decode())
    except (FileNotFoundError, OSError):
        raise RecordError(f"nothing to resume at {path.rsplit('/', 1)[0]} (no {path.rsplit('/', 1)[1]})") from None


def write_record(path: str, record: dict[str, Any]) -> None:
    """Write :func:`read_record`'s JSON, creating the folder."""
    import pyarrow.fs

    fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as stream:
        stream.write(json.dumps(record, indent=2).encode())
