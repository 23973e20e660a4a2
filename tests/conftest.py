"""Shared fixtures: one Ray instance for the whole test session, and a way to run the CLIs as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_address() -> str:
    """A local Ray owned by this test session (never someone else's); CLIs under test join it with --address.

    Four logical CPUs on a 2-core machine: a two-worker DDP trial needs its own CPU share plus one per worker.
    """
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell in ``tmp_path``: no inherited tracking URI or Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = env.get("HOME", str(tmp_path))
    return env


def run_cli(module: str, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd``, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cwd), capture_output=True, text=True,
        timeout=timeout,
    )
