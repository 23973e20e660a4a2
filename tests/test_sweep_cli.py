"""`python -m orchestrator.sweep` end to end: a real sweep into MLflow, resume after an interrupt, bad input,
a two-worker DDP trial through Ray Train; and the final table's ranking and completion status."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import spaces, sweep
from tests.conftest import run_cli, run_gated_cli, start_gated_cli, wait_until
from trainables import registry

TINY = ["--set", "epochs=2", "depth=8", "limit_train_batches=2", "batch_size=32"]


def child_runs(store: Path, experiment: str) -> tuple[object, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_sd_rates_sweep_through_the_cli(tmp_path: Path, ray_address: str) -> None:
    result = run_cli("orchestrator.sweep", ["sd_rates", "--seeds", "1", "--address", ray_address, *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(tmp_path / "mlflow.db", "sd_rates")
    assert parent.info.status == "FINISHED" and parent.data.tags["trainable"] == "resnet"
    # p_L in 4 values x 2 schedules, one seed, less the no-SD net under the second schedule (the same net: it used
    # to run twice)
    assert len(children) == 7
    assert "1 grid combination(s) run once: p_L=1.0 sd_schedule=uniform (= p_L=1.0 sd_schedule=linear)" in result.stdout
    assert parent.data.tags["collapsed"] == "p_L=1.0 sd_schedule=uniform (= p_L=1.0 sd_schedule=linear)"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    swept = set()
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["search_space"] == "sd_rates" and run.data.tags["ray.trial_id"]
        assert run.data.params["depth"] == "8" and run.data.params["epochs"] == "2"
        swept.add((run.data.params["p_L"], run.data.params["sd_schedule"]))
        for metric in ("val_error", "train_loss", "lr", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "checkpoint"} <= artifacts
    assert len(swept) == 7 and ("1.0", "uniform") not in swept
    # The final table's first row is the child run with the lowest val_error (ties: any of the tied runs).
    table = result.stdout[result.stdout.index("best trials of 'sd_rates'"):]
    first_row = re.search(r"([0-9a-f]{5}_\d{5})\s*│[^\n]*?│\s*([0-9.e-]+)\s*│\s*2\s*│\s*OK", table)
    first_trial, first_value = first_row.groups()
    best_value = min(r.data.metrics["val_error"] for r in children)
    tied = {r.data.tags["ray.trial_id"] for r in children if r.data.metrics["val_error"] == best_value}
    assert first_trial in tied and float(first_value) == pytest.approx(best_value, abs=5e-4)
    assert parent.data.tags["best_trial_id"] in tied


def _held_space(tmp_path: Path, gate: Path) -> Path:
    """Four trials of the test trainable ``gated``, one at a time; the third (x=2) is held after its first epoch."""
    path = tmp_path / "held.yaml"
    path.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 2, gate: '{gate}'}}\n"
                    "space:\n  x: {grid: [0, 1, 2, 3]}\n")
    return path


def test_interrupted_sweep_resumes_without_rerunning_trials(tmp_path: Path, ray_address: str) -> None:
    """Ctrl-C while the third trial is held after its first epoch (no timing: it waits on a file), then --resume:
    the finished trials are not run again, the held one continues from its epoch-1 checkpoint."""
    gate, store = tmp_path / "gate", tmp_path / "mlflow.db"
    space = _held_space(tmp_path, gate)
    process = start_gated_cli("orchestrator.sweep", [str(space), "--max-concurrent", "1", "--address", ray_address],
                              tmp_path)

    def held_trial_checkpointed() -> bool:  # its first report's checkpoint is registered: a resume continues it
        _, children = child_runs(store, "held")
        return any(r.data.params["x"] == "2" and "checkpoint" in r.data.tags for r in children)

    wait_until(held_trial_checkpointed, "the held trial's first checkpoint", process)
    process.send_signal(signal.SIGINT)  # a user's Ctrl-C
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    resume = re.search(r"continue with: (.*)", err).group(1).split()
    parent, children = child_runs(store, "held")
    assert parent.info.status == "KILLED"
    assert {r.data.params["x"]: r.info.status for r in children} == {"0": "FINISHED", "1": "FINISHED",
                                                                     "2": "KILLED"}  # nothing left RUNNING
    # The interrupted run's table says the held trial did not reach its budget.
    assert re.search(r"│\s*2\s*│\s*1\.2\s*│\s*1\s*│\s*partial", out), out[-2000:]
    finished_before = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}

    gate.write_text("open")
    assert resume[:3] == ["python", "-m", "orchestrator.sweep"]
    result = run_gated_cli("orchestrator.sweep", [*resume[3:], "--address", ray_address], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(store, "held")
    assert parent.info.status == "FINISHED" and len(children) == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    for run in children:
        assert run.info.status == "FINISHED"
        epochs = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == [(1, 1.0), (2, 2.0)], f"x={run.data.params['x']} reported {epochs}"
    for run_id, end_time in finished_before.items():  # finished trials were not run again
        assert client.get_run(run_id).info.end_time == end_time


def _result(trial_id: str, config: dict, **metrics: float) -> SimpleNamespace:
    """What a Tune ``Result`` offers the final table."""
    return SimpleNamespace(metrics={"trial_id": trial_id, **metrics}, config=config, error=None,
                           path=f"/results/{trial_id}")


def test_an_interrupted_rl_trial_is_partial_not_ok() -> None:
    """The final table's completion check uses the declared budget (DQN: frames, counted by env_frames); it used to
    look for an ``epochs`` key and called every RL trial OK."""
    space = spaces.SweepSpace(name="dqn_two", path=Path("dqn_two.yaml"), trainable="dqn", metric="eval_return_mean",
                              mode="max")
    table = sweep.results_table([
        _result("cut", {"frames": 1000}, eval_return_mean=20.0, env_frames=400, training_iteration=2),
        _result("done", {"frames": 1000}, eval_return_mean=10.0, env_frames=1000, training_iteration=5),
    ], space)
    assert list(zip(table["trial_id"], table["status"], strict=True)) == [("cut", "partial"), ("done", "OK")]


def test_a_trial_that_never_reported_is_not_ok() -> None:
    """An interrupt while trials are pending leaves results with no metrics and no config; they read "OK" before."""
    space = spaces.SweepSpace(name="dqn_two", path=Path("dqn_two.yaml"), trainable="dqn", metric="eval_return_mean",
                              mode="max")
    pending = SimpleNamespace(metrics={}, config=None, error=None, path="/results/dqn_00001_1_seed=1")
    table = sweep.results_table([pending, _result("done", {"frames": 10}, eval_return_mean=1.0, env_frames=10,
                                                          training_iteration=1)], space)
    assert list(table["status"]) == ["OK", "no report"]


def test_final_table_ranks_by_the_declared_direction(tmp_path: Path, registered) -> None:
    """A space file without ``mode`` ranks by the trainable's declared direction (val_error: lower first)."""
    registered("ranked", lambda config, ctx: None, defaults={"epochs": 1, "seed": 0},
               metrics={"val_error": "min", "val_accuracy": "max"}, primary="val_error")
    path = tmp_path / "ranked.yaml"
    path.write_text("trainable: ranked\n")
    space = spaces.load_space(str(path))
    space.validate(registry.get("ranked"))
    assert (space.metric, space.mode) == ("val_error", "min")
    table = sweep.results_table([_result("worse", {"epochs": 1}, val_error=0.3, epoch=1),
                                 _result("better", {"epochs": 1}, val_error=0.1, epoch=1)], space)
    assert list(table["trial_id"]) == ["better", "worse"]
    space.metric, space.mode = "val_accuracy", None
    table = sweep.results_table([_result("worse", {"epochs": 1}, val_accuracy=0.7, epoch=1),
                                 _result("better", {"epochs": 1}, val_accuracy=0.9, epoch=1)], space)
    assert list(table["trial_id"]) == ["better", "worse"]


def _bad_space(tmp_path: Path) -> str:
    path = tmp_path / "bad_trainable.yaml"
    path.write_text("trainable: no_such_method\nmetric: val_error\nmode: min\n")
    return str(path)


def _contradicting_space(tmp_path: Path) -> str:
    path = tmp_path / "contradicting.yaml"
    path.write_text("trainable: resnet\nmetric: val_error\nmode: max\n")
    return str(path)


def _malformed_space(tmp_path: Path) -> str:
    path = tmp_path / "malformed.yaml"
    path.write_text("trainable: resnet\nmetric: val_error\nspace:\n  p_L: {grid: [0.5, 1.0]\n")
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: [_bad_space(tmp)], "unknown trainable 'no_such_method'"),
        (lambda tmp: ["sd_rates", "--set", "p_L=1.5"], "p_L=1.5 is out of range"),
        (lambda tmp: ["sd_rates", "--set", "no_such_key=1"], "no config key"),
        (lambda tmp: [_malformed_space(tmp)], "not valid YAML"),
        (lambda tmp: [_contradicting_space(tmp)], "mode max contradicts trainable 'resnet'"),
        (lambda tmp: ["sd_rates", "--set", "dataset=cifar10", f"data_dir={tmp / 'missing'}"], "does not exist"),
        (lambda tmp: ["sd_rates", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    ],
    ids=["unknown-trainable", "out-of-range", "unknown-key", "malformed-space", "contradicting-mode", "missing-cifar",
         "no-server"],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, make_args, message: str) -> None:
    result = run_cli("orchestrator.sweep", make_args(tmp_path), tmp_path, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_two_ddp_workers_keep_identical_replicas(tmp_path: Path, ray_address: str) -> None:
    """A trial with --workers 2 runs a Ray Train TorchTrainer (gloo); every epoch the ranks compare a hash of all
    their parameters, and stochastic depth (p_L=0.5) must not desynchronize them."""

    args = ["sd_rates", "--seeds", "1", "--workers", "2", "--cpus-per-trial", "2", "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--set", "p_L=0.5", "sd_schedule=linear",
            "epochs=2", "depth=8", "limit_train_batches=4", "batch_size=32"]
    assert sweep.main(args) == 0
    _, children = child_runs(tmp_path / "mlflow.db", "sd_rates")
    assert len(children) == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    in_sync = client.get_metric_history(children[0].info.run_id, "replicas_in_sync")
    assert [(m.step, m.value) for m in in_sync] == [(1, 1.0), (2, 1.0)]
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "train_loss")] == [1, 2]
    assert "checkpoint" in {a.path for a in client.list_artifacts(children[0].info.run_id)}


class TrialFailedError(RuntimeError):
    pass


def fail_after_first_epoch(config: dict, ctx) -> None:
    """Reports epoch 1, then fails: an error inside the trial that no up-front check can see."""
    ctx.report({"epoch": 1, "val_error": 0.5})
    raise TrialFailedError("the trial's own code failed after epoch 1")


def test_failed_trial_ends_failed_not_running(tmp_path: Path, ray_address: str, registered) -> None:
    """A trial that errors: its run is FAILED with the error as a tag, the parent FAILED, the exit status 1."""
    registered("fails_in_trial", fail_after_first_epoch, defaults={"epochs": 2, "seed": 0},
               metrics={"val_error": "min"}, primary="val_error")
    path = tmp_path / "failing.yaml"
    path.write_text("trainable: fails_in_trial\n")
    args = [str(path), "--storage", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert sweep.main(args) == 1
    parent, children = child_runs(tmp_path / "mlflow.db", "failing")
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in children] == ["FAILED"]
    assert "the trial's own code failed after epoch 1" in children[0].data.tags["error"]
