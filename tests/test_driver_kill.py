"""The driver killed outright (``kill -9``: the OOM killer, a lost login node): nothing closes the MLflow runs, and
Tune's experiment state on disk may be older than what MLflow recorded. ``--resume`` must then finish the experiment
with no trial run twice in the record, none lost, the search's controller where it was, and no run left RUNNING."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import run_gated_cli, start_gated_cli, wait_until
from tests.test_sweep_cli import child_runs


def _runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def _epochs(client: MlflowClient, run) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]


def _kill_when_held(process, checkpointed) -> None:
    """SIGKILL the driver once the held trial's first checkpoint is registered (no timing: the trial waits on a
    file), and check what that leaves: the exit status of a kill, and no last word from the driver."""
    wait_until(checkpointed, "the held trial's first checkpoint", process)
    os.kill(process.pid, signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    assert "continue with" not in err  # it never got to say anything


def test_a_killed_sweep_driver_resumes_without_rerunning_or_losing_trials(tmp_path: Path, ray_address: str) -> None:
    gate, store = tmp_path / "gate", tmp_path / "mlflow.db"
    space = tmp_path / "held.yaml"
    space.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 2, gate: '{gate}'}}\n"
                     "space:\n  x: {grid: [0, 1, 2, 3]}\n")
    process = start_gated_cli("orchestrator.sweep", [str(space), "--max-concurrent", "1", "--address", ray_address],
                              tmp_path)

    def held_trial_checkpointed() -> bool:
        _, children = child_runs(store, "held")
        return any(r.data.params["x"] == "2" and "checkpoint" in r.data.tags for r in children)

    _kill_when_held(process, held_trial_checkpointed)
    parent, children = child_runs(store, "held")
    # What kill -9 leaves: nobody closed the parent or the held trial's run.
    assert parent.info.status == "RUNNING"
    assert {r.data.params["x"]: r.info.status for r in children} == {"0": "FINISHED", "1": "FINISHED",
                                                                     "2": "RUNNING"}
    finished_before = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}

    gate.write_text("open")
    result = run_gated_cli("orchestrator.sweep", [str(space), "--resume", "--address", ray_address], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(store, "held")
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["x"] for r in children) == ["0", "1", "2", "3"]  # none lost, none doubled
    for run in children:
        assert run.info.status == "FINISHED"
        assert _epochs(client, run) == [(1, 1.0), (2, 2.0)], f"x={run.data.params['x']} reported {_epochs(client, run)}"
    for run_id, end_time in finished_before.items():  # finished trials were not run again
        assert client.get_run(run_id).info.end_time == end_time
    assert not [r for r in _runs(client, "held") if r.info.status == "RUNNING"]
