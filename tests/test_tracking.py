"""MLflow tracking of trials: a run ends FINISHED, FAILED or KILLED, never RUNNING, whatever fails on the way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import tracking


def _trial(tmp_path: Path) -> SimpleNamespace:
    """A finished trial as the callback sees it: a Ray Train-style checkpoint folder in its last result."""
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    (checkpoint / "weights.pt").write_bytes(b"weights")
    return SimpleNamespace(trial_id="t1", config={"lr": 0.1}, checkpoint=None, status="TERMINATED",
                           last_result={"checkpoint_path": str(checkpoint)})


def _started(tmp_path: Path, experiment: str) -> tuple[tracking.SweepTracker, tracking.MlflowTrialCallback,
                                                      SimpleNamespace]:
    """A sweep's parent run and one trial whose child run the callback has started."""
    tracker = tracking.SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment)
    tracker.start_parent("sweep", {"metric": "val_error"}, {})
    callback = tracking.MlflowTrialCallback(tracker)
    trial = _trial(tmp_path)
    callback.on_trial_start(0, [trial], trial)
    return tracker, callback, trial


def test_a_child_run_whose_artifact_upload_fails_ends_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    tracker, callback, trial = _started(tmp_path, "upload")
    run_id = callback.run_id(trial)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(tracker.client, "log_artifacts", disk_full)
    callback.on_trial_complete(0, [trial], trial)  # must not raise: the sweep goes on
    callback.on_experiment_end([trial])  # and the experiment's end must not turn it KILLED
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "artifact upload failed" in run.data.tags["error"] and "No space left" in run.data.tags["error"]
    assert callback.failed == ["t1"]
    assert "warning: trial t1: artifact upload failed" in capsys.readouterr().err


def test_a_child_run_with_its_artifacts_ends_finished(tmp_path: Path) -> None:
    tracker, callback, trial = _started(tmp_path, "upload")
    callback.on_checkpoint(0, [trial], trial, SimpleNamespace(path=trial.last_result["checkpoint_path"]))
    callback.on_trial_complete(0, [trial], trial)
    run = tracker.client.get_run(callback.run_id(trial))
    assert run.info.status == "FINISHED" and run.data.tags["checkpoint"] == trial.last_result["checkpoint_path"]
    run_id = run.info.run_id
    paths = {a.path for a in tracker.client.list_artifacts(run_id, "checkpoint")}
    assert paths == {"checkpoint/weights.pt"}


def test_a_trial_cut_off_by_an_interrupt_ends_killed_and_is_counted(tmp_path: Path) -> None:
    """Tune calls a trial an interrupt cut off TERMINATED; its run ends KILLED, and the executor counts it."""
    tracker, callback, trial = _started(tmp_path, "cut")
    assert tracker.cut_off_children() == 0
    callback.on_experiment_end([trial])  # no on_trial_complete came: the interrupt cut it off
    assert tracker.client.get_run(callback.run_id(trial)).info.status == "KILLED"
    assert tracker.cut_off_children() == 1


def test_a_store_created_by_two_processes_at_once_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    """Two processes opening a new sqlite store at once collide on "table ... already exists" (seen when a test
    polled the store while the NAS CLI created it: the CLI died); the loser retries instead of failing."""
    import mlflow.tracking
    from sqlalchemy.exc import OperationalError

    real = mlflow.tracking.MlflowClient
    calls: list[int] = []

    def racing_client(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first open loses the race
            raise OperationalError("CREATE TABLE x", {}, Exception("table metric_rollups already exists"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", racing_client)
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    client = tracking.open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(calls) == 2 and client.search_experiments()[0].name == "Default"
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", lambda *a, **k: (_ for _ in ()).throw(
        OperationalError("SELECT", {}, Exception("no such table: experiments"))))
    with pytest.raises(OperationalError):  # any other store error is not a race: it is raised at once
        tracking.open_client(f"sqlite:///{tmp_path / 'other.db'}")
