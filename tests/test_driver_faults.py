"""Faults around the driver (issue 13): a bad option, an address where no Ray runs, a trial process killed from
outside, Tune itself failing. Each is one clear line and an exit status, and loses nothing already recorded."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import cli, executor, nas, sweep
from tests.conftest import run_cli, start_gated_cli, wait_until
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
