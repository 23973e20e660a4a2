"""Where Ray runs: an embedded local instance by default, or a running cluster (``--address`` / ``RAY_ADDRESS``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SHARED_STORAGE_SCHEMES = ("s3://", "gs://", "gcs://", "abfss://", "hdfs://")


EMBEDDED = "embedded local Ray"  # what connect() returns when it started its own Ray (callers test for it)


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Start or join Ray; returns a description for the user. Reuses a Ray already initialized in this process."""
    import ray

    if ray.is_initialized():
        return "the Ray instance already running in this process"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"Ray cluster at {address}"
    # address="local" always starts a fresh instance owned by this process: never attach to someone else's.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    return EMBEDDED


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
