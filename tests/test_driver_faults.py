"""Faults around the driver (issues 13 and 18): a bad option, an address where no Ray runs, a storage that cannot be
written, a trial process killed from outside, Tune itself failing. Each is one clear line and an exit status, and
loses nothing already recorded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import cli, cluster, executor, nas, sweep
from tests import services
from tests.conftest import run_cli, run_gated_cli, start_gated_cli, wait_until
from tests.test_sweep_cli import child_runs


@pytest.mark.parametrize(("main", "args", "names"), [
    (nas.main, ["--controller", "nope"], "'ppo'"),
    (sweep.main, ["sd_rates", "--scheduler", "nope"], "'asha'"),
], ids=["nas-controller", "sweep-scheduler"])
def test_a_bad_choice_is_one_line_naming_the_choices(capsys, main, args, names: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == cli.EXIT_USER_ERROR
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and names in err, err


def _not_ray_server() -> int:
    """A port on every interface that answers like a web server (what a mistyped port often reaches)."""
    server = socket.create_server(("0.0.0.0", 0))

    def answer() -> None:
        while True:
            conn, _ = server.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize("where", ["nothing-listens", "not-ray"])
def test_an_address_without_ray_is_one_line_not_a_hang(tmp_path: Path, where: str) -> None:
    """It used to retry Ray's GCS connect for minutes; the timeout here only bounds a hang."""
    address = "127.0.0.1:1" if where == "nothing-listens" else f"127.0.0.1:{_not_ray_server()}"
    result = run_cli("orchestrator.sweep", ["sd_rates", "--address", address], tmp_path, timeout=90)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr[-2000:]
    assert lines == [lines[-1]] and lines[-1].startswith(f"error: no Ray cluster at {address}"), lines
    assert "ray start --head" in lines[-1]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was recorded for a run that never started


def _held_sweep(tmp_path: Path, gate: Path) -> Path:
    path = tmp_path / "killed.yaml"
    path.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 1, gate: '{gate}'}}\n"
                    "space:\n  x: {grid: [0, 1, 2]}\n")
    return path


@pytest.mark.parametrize("max_failures", [None, 0], ids=["default-retries", "no-retries"])
def test_a_killed_trial_process_is_a_trial_failure(tmp_path: Path, ray_address: str, max_failures) -> None:
    """``kill -9`` of a trial's process (what the OOM killer does): by default the trial is retried from its last
    checkpoint and the sweep finishes; with ``--max-failures 0`` that trial's run ends FAILED with the reason and the
    other trials still run. Either way the driver goes on (Tune logs the trial's error; the driver does not crash)."""
    gate, store = tmp_path / "gate", tmp_path / "mlflow.db"
    flags = [] if max_failures is None else ["--max-failures", str(max_failures)]
    process = start_gated_cli("orchestrator.sweep", [str(_held_sweep(tmp_path, gate)), "--max-concurrent", "1",
                                                     "--address", ray_address, *flags], tmp_path)
    pid_file = Path(f"{gate}.pid")
    pid = int(wait_until(lambda: pid_file.is_file() and pid_file.read_text(), "the held trial's pid", process))
    os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    parent, children = child_runs(store, "killed")
    by_x = {r.data.params["x"]: r for r in children}
    assert {x: r.info.status for x, r in by_x.items() if x != "1"} == {"0": "FINISHED", "2": "FINISHED"}
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    held = by_x["1"]
    epochs = [(m.step, m.value) for m in client.get_metric_history(held.info.run_id, "epoch")]
    if max_failures is None:
        assert process.returncode == 0, err[-3000:]
        assert parent.info.status == "FINISHED" and held.info.status == "FINISHED"
        assert epochs == [(1, 1.0), (2, 2.0)]  # the retry continued from the epoch-1 checkpoint
    else:
        assert process.returncode == 1, err[-3000:]
        assert parent.info.status == "FAILED" and held.info.status == "FAILED"
        assert "died" in held.data.tags["error"].lower() or "actor" in held.data.tags["error"].lower()
        assert epochs == [(1, 1.0)]


def test_tune_failing_in_the_driver_is_one_line_with_the_resume_command(capsys) -> None:
    """Anything Tune raises out of ``fit`` (its actor manager on an OOM kill, a storage error) used to be a
    traceback with no way back: now the children and the parent are closed and the resume command printed."""
    ended: dict[str, str] = {}
    tracker = SimpleNamespace(end_parent=lambda status: ended.setdefault("parent", status),
                              end_running_children=lambda status: ended.setdefault("children", status))

    def fit() -> None:
        raise RuntimeError("Caught unexpected exception:\nOutOfMemoryError: task was killed")

    code = executor.run_tune(tracker, fit, lambda results: None, 3, "python -m orchestrator.sweep x --resume")
    err = capsys.readouterr().err
    assert code == 1 and ended == {"children": "KILLED", "parent": "FAILED"}
    assert len(err.strip().splitlines()) == 1, err
    assert "OutOfMemoryError" in err and err.strip().endswith("continue with: python -m orchestrator.sweep x --resume")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server, started and killed by pid) with one bucket, ``bucket``."""
    with services.s3_server() as endpoint:
        yield endpoint


def _unwritable(tmp_path: Path, where: str, request: pytest.FixtureRequest) -> str:
    if where == "read-only-dir":
        folder = tmp_path / "read_only"
        folder.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root ignores the mode: the immutable attribute (ext4 and others) stops root too
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("root writes into a mode 555 folder, and this filesystem has no immutable attribute")
            request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        return str(folder / "rr")
    if where == "under-a-file":
        (tmp_path / "a_file").write_text("")
        return str(tmp_path / "a_file" / "rr")
    return {"proc": "/proc/x", "sysfs": "/sys/x/rr", "no-s3-endpoint": "s3://bucket/rr",
            "no-bucket": "s3://no-such-bucket/rr"}[where]


@pytest.mark.parametrize("where", ["proc", "sysfs", "under-a-file", "read-only-dir", "no-s3-endpoint", "no-bucket"])
def test_storage_that_cannot_be_written_is_one_line_before_ray_or_mlflow(tmp_path: Path, capsys, monkeypatch, request,
                                                                          s3_endpoint: str, where: str) -> None:
    """Tune used to fail on its first save (a traceback, after Ray started and the parent run was recorded) or retry
    an S3 endpoint that is not there. pyarrow, which Tune writes with, takes the endpoint from AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1" if where == "no-s3-endpoint" else s3_endpoint)
    for key, value in services.S3_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    storage = _unwritable(tmp_path, where, request)
    store = tmp_path / "mlflow.db"
    code = cli.run(sweep.main, ["sd_rates", "--storage", storage, "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: cannot write to the storage {storage}"), err
    assert not store.exists()  # nothing recorded for a run that never started
    assert not list(tmp_path.rglob(".deeprepro-probe-*"))


def test_storage_that_can_be_written_passes_the_check_and_keeps_nothing(tmp_path: Path, s3_endpoint: str,
                                                                         monkeypatch) -> None:
    """The other side of the check above: it is no blanket refusal, and its probe leaves nothing behind."""
    import pyarrow.fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for key, value in services.S3_KEYS.items():
        monkeypatch.setenv(key, value)
    cluster.check_storage(str(tmp_path / "new" / "rr"))
    assert list(tmp_path.iterdir()) == []  # not even the storage folder: Tune makes it
    cluster.check_storage("s3://bucket/sweeps/rr")
    fs, _ = pyarrow.fs.FileSystem.from_uri("s3://bucket/")
    left = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector("bucket", recursive=True))]
    assert not [path for path in left if ".deeprepro-probe" in path], left


def test_a_tracking_server_lost_mid_sweep_stops_with_the_resume_command(tmp_path: Path, ray_address: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The server killed while a trial is held, then the trial reports: the sweep stops (exit 1) with one line that
    says so and how to continue, no traceback, after at most MLflow's (bounded) retries of one write; what was
    recorded stays. With the server back on the same store, --resume finishes with nothing lost or written twice."""
    gate, port = tmp_path / "gate", services.free_port()
    uri = f"http://127.0.0.1:{port}"
    store = tmp_path / "server.db"  # read directly: the server is not always there
    server = services.start_mlflow_server(tmp_path, port)
    try:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the test's patience, not the default's
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        process = start_gated_cli("orchestrator.sweep", [str(_held_sweep(tmp_path, gate)), "--max-concurrent", "1",
                                                         "--address", ray_address, "--tracking-uri", uri], tmp_path)

        def held_trial_checkpointed() -> bool:
            _, children = child_runs(store, "killed")
            return any(r.data.params["x"] == "1" and "checkpoint" in r.data.tags for r in children)

        wait_until(held_trial_checkpointed, "the held trial's first checkpoint", process)
        services.stop(server)
        gate.write_text("open")
        _, err = process.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert process.returncode == 1, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert len(lines) == 1 and f"the MLflow tracking server {uri} stopped answering" in lines[0], err[-3000:]
        resume = lines[0].split("continue with: ")[1].split()
        parent, children = child_runs(store, "killed")
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        assert {r.data.params["x"]: r.info.status for r in children} == {"0": "FINISHED", "1": "RUNNING"}
        assert parent.info.status == "RUNNING"  # nothing could close it: the resume does
        held = next(r for r in children if r.data.params["x"] == "1")
        assert [(m.step, m.value) for m in client.get_metric_history(held.info.run_id, "epoch")] == [(1, 1.0)]
        finished = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}

        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
        server = services.start_mlflow_server(tmp_path, port)  # the same store, the same address (the record names it)
        result = run_gated_cli("orchestrator.sweep", [*resume[3:], "--address", ray_address], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        parent, children = child_runs(store, "killed")
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.params["x"] for r in children) == ["0", "1", "2"]
        for run in children:
            assert run.info.status == "FINISHED"
            epochs = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
            assert epochs == [(1, 1.0), (2, 2.0)], f"x={run.data.params['x']} reported {epochs}"
        for run_id, end_time in finished.items():
            assert client.get_run(run_id).info.end_time == end_time
    finally:
        services.stop(server)


def test_only_an_unreachable_server_counts_as_lost() -> None:
    """An answer from the server (a missing run, a bad request) is that call's error, as before; a request that never
    got an answer marks the server lost, and every later call then fails at once (no retries spent again)."""
    from mlflow.exceptions import MlflowException

    from orchestrator import recovery, tracking

    tracker = tracking.SweepTracker("http://127.0.0.1:1", "e")
    calls: list[str] = []

    def fails(message: str):
        def call(*args: object) -> None:
            calls.append(message)
            raise MlflowException(message)
        return call

    client = recovery.GuardedClient(SimpleNamespace(
        get_run=fails("Run 'x' not found"),
        set_tag=fails("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/set-tag failed with exception "
                      "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by "
                      "NewConnectionError(\"Failed to establish a new connection: [Errno 111] Connection refused\"))"),
    ), tracker)
    with pytest.raises(MlflowException, match="not found"):
        client.get_run("x")
    assert tracker.lost is None
    with pytest.raises(recovery.TrackingLostError, match=r"stopped answering \(Connection refused, on set_tag\)"):
        client.set_tag("x", "k", "v")
    with pytest.raises(recovery.TrackingLostError):
        client.get_run("x")
    assert len(calls) == 2  # the last call never reached the client
