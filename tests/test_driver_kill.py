"""The driver killed outright (``kill -9``: the OOM killer, a lost login node): nothing closes the MLflow runs, and
Tune's experiment state on disk may be older than what MLflow recorded. ``--resume`` must then finish the experiment
with no trial run twice in the record, none lost, the search's controller where it was, and no run left RUNNING."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_gated_cli, start_gated_cli, wait_until
from tests.test_sweep_cli import child_runs

# Tune saves its experiment state every this many seconds (auto: 10 s or more), and at forced points (a trial's
# num_to_keep-th checkpoint since the last save). The killed drivers set it high, so the tests see the oldest state a
# kill can leave whatever the machine's speed (a periodic save in between would make them pass without the fix).
STATE_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"


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


def test_a_killed_sweep_driver_resumes_without_rerunning_or_losing_trials(tmp_path: Path, ray_address: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep driver killed while the third trial is held after its first epoch: Tune last saved its state at the
    second trial's last checkpoint (its end and the third trial came after), MLflow has all of it."""
    gate, store = tmp_path / "gate", tmp_path / "mlflow.db"
    space = tmp_path / "held.yaml"
    space.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 2, gate: '{gate}'}}\n"
                     "space:\n  x: {grid: [0, 1, 2]}\n")
    monkeypatch.setenv(STATE_PERIOD, "3600")  # only Tune's forced saves: its state as old as it can be
    process = start_gated_cli("orchestrator.sweep", [str(space), "--max-concurrent", "1", "--address", ray_address],
                              tmp_path)
    monkeypatch.delenv(STATE_PERIOD)

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
    assert sorted(r.data.params["x"] for r in children) == ["0", "1", "2"]  # none lost, none doubled
    for run in children:
        assert run.info.status == "FINISHED"
        assert _epochs(client, run) == [(1, 1.0), (2, 2.0)], f"x={run.data.params['x']} reported {_epochs(client, run)}"
    for run_id, end_time in finished_before.items():  # finished trials were not run again
        assert client.get_run(run_id).info.end_time == end_time
    assert not [r for r in _runs(client, "held") if r.info.status == "RUNNING"]


def _uninterrupted_tokens(trials: int) -> list[list[int]]:
    """The tokens an uninterrupted search of the test below proposes, trial by trial: the same searcher (REINFORCE,
    seed 0, the CLI's defaults) fed what ``gated_nas_child`` reports at its last epoch, in order."""
    import torch

    from orchestrator.searchers import make_searcher

    torch.set_num_threads(1)  # as the driver
    searcher = make_searcher("reinforce", "mnasnet", {}, trials=trials, num_blocks=1, seed=0, target_ms=1.0,
                             lr=0.01, reward_kind="soft")
    proposed = []
    for index in range(trials):
        tokens = searcher.suggest(f"t{index}")["tokens"]
        proposed.append(list(tokens))
        searcher.on_trial_complete(f"t{index}", {"val_accuracy": min(0.99, 0.5 + 0.05 * sum(tokens) + 0.02),
                                                 "latency_ms": 0.5 + 0.1 * sum(tokens)})
    return proposed


def test_a_killed_search_driver_resumes_the_same_search(tmp_path: Path, ray_address: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The NAS driver killed while the third child is held before its first report: Tune's saved state has neither
    the second child's end nor the third child (whose id the searcher drew at random), MLflow has both. The resumed
    search trains exactly --trials children, each trial index once, each epoch once, and proposes what the
    uninterrupted search would have (the controller's weights, baseline, optimizer and RNG come back as they were,
    and it learns from every child exactly once)."""
    gate = tmp_path / "gate"
    args = ["--trainable", "gated_nas_child", "--trials", "4", "--blocks", "1", "--controller", "reinforce",
            "--max-concurrent", "1", "--epochs-per-child", "2", "--address", ray_address,
            "--set", f"gate={gate}", "hold_new_at=2"]
    monkeypatch.setenv(STATE_PERIOD, "3600")  # only Tune's forced saves: its state as old as it can be
    process = start_gated_cli("orchestrator.nas", args, tmp_path)
    monkeypatch.delenv(STATE_PERIOD)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    def children() -> list:
        return [r for r in _runs(client, "nas") if "mlflow.parentRunId" in r.data.tags]

    _kill_when_held(process, lambda: Path(f"{gate}.pid").is_file() and any(r.data.params["trial_index"] == "2"
                                                                            for r in children()))
    before = children()
    assert {r.data.params["trial_index"]: r.info.status for r in before} == {"0": "FINISHED", "1": "FINISHED",
                                                                            "2": "RUNNING"}
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}

    gate.write_text("open")
    result = run_gated_cli("orchestrator.nas", ["--resume", "--address", ray_address], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    after = children()
    assert sorted(int(r.data.params["trial_index"]) for r in after) == list(range(4))
    assert all(r.info.status == "FINISHED" for r in after)
    for run_id, end_time in finished_before.items():
        assert client.get_run(run_id).info.end_time == end_time
    for run in after:
        assert _epochs(client, run) == [(1, 1.0), (2, 2.0)], f"child {run.data.params['trial_index']}"
    tokens = {int(r.data.params["trial_index"]): [int(t) for t in r.data.params["tokens"].strip("[]").split(",")]
              for r in after}
    assert [tokens[i] for i in range(4)] == _uninterrupted_tokens(4)
    assert not [r for r in _runs(client, "nas") if r.info.status == "RUNNING"]


def test_a_driver_killed_before_or_after_tune_resumes(tmp_path: Path, ray_address: str) -> None:
    """Killed between its MLflow record and Tune's first save of the experiment (Ray still starting): the record
    and a RUNNING parent run exist, Tune's state does not. ``Tuner.restore`` has nothing to read; the resume starts
    the experiment under the same name and parent run and finishes it. Then killed after Tune finished, before the
    parent run was closed (the final table): the resume closes it and touches no trial."""
    from orchestrator import cluster, executor, tracking

    space = tmp_path / "early.yaml"
    space.write_text("trainable: gated\nconfig: {epochs: 2}\nspace:\n  x: {grid: [0]}\n")
    name, storage, store = "early-20260101-000000", cluster.normalize_storage(str(tmp_path / "ray_results")), \
        tmp_path / "mlflow.db"
    # What the driver wrote before Ray was up (executor.execute, step 2), with the argv it was given.
    tracker = tracking.SweepTracker(f"sqlite:///{store}", "early")
    tracker.start_recorded_parent(name, {"space": "early"}, {"trainable": "gated"},
                                  record_path=f"{storage}/{name}/{executor.RECORD}", argv=[str(space)])
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "RUNNING"

    result = run_gated_cli("orchestrator.sweep", [str(space), "--resume", "--name", name, "--address", ray_address],
                           tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(store, "early")
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert parent.info.run_id == tracker.parent_run_id and parent.info.status == "FINISHED"
    assert [r.data.params["x"] for r in children] == ["0"]
    assert all(r.info.status == "FINISHED" and _epochs(client, r) == [(1, 1.0), (2, 2.0)] for r in children)
    assert not [r for r in _runs(client, "early") if r.info.status == "RUNNING"]

    client.update_run(parent.info.run_id, status="RUNNING")  # what a kill during the final table leaves
    result = run_gated_cli("orchestrator.sweep", [str(space), "--resume", "--name", name, "--address", ray_address],
                           tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again, children_again = child_runs(store, "early")
    assert again.info.status == "FINISHED"
    assert [(r.info.run_id, r.info.end_time) for r in children_again] == [(r.info.run_id, r.info.end_time)
                                                                          for r in children]
    assert _epochs(client, children_again[0]) == [(1, 1.0), (2, 2.0)]
