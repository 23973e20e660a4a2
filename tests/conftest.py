"""Shared fixtures: one Ray instance for the whole test session, and a way to run the CLIs as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def start_gated_cli(module: str, args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m module args`` with the test-only trainables of :mod:`tests.gated` registered, in the background."""
    return subprocess.Popen([sys.executable, "-m", "tests.gated", module, *args], cwd=cwd, env=cli_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_gated_cli(module: str, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """:func:`run_cli` with the test-only trainables of :mod:`tests.gated` registered."""
    return subprocess.run([sys.executable, "-m", "tests.gated", module, *args], cwd=cwd, env=cli_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def trial_runs(store: Path, experiment: str) -> list:
    """The child (trial) runs of MLflow ``experiment`` in the sqlite ``store``; none while it does not exist yet (a
    poll of a command still starting)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def wait_until(condition: Callable[[], Any], what: str, process: subprocess.Popen, timeout: float = 300) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned); fail if ``process`` ends first or after
    ``timeout`` seconds (a generous bound on a hang, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 (the MLflow store may not exist yet)
            value = None
        if value:
            return value
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the command ended (exit {process.returncode}) before {what}: {err[-3000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's in-process training: on a shared 2-core machine two threads make training
    many times slower (NOTES); restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registered() -> Iterator[Callable[..., Any]]:
    """``registered(name, train_fn, **register_kwargs)`` registers a test-only trainable for one test; every one is
    unregistered afterwards."""
    from trainables import registry

    names: list[str] = []

    def add(name: str, train: Callable[..., None], **kwargs: Any) -> Any:
        registry.register(name, **kwargs)(train)
        names.append(name)
        return registry.get(name)

    yield add
    for name in names:
        registry.unregister(name)
