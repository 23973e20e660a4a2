"""`python -m orchestrator.sweep` end to end: a real sweep into MLflow, resume after an interrupt, bad input,
and a two-worker DDP trial through Ray Train."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env, run_cli

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
    assert len(children) == 8  # p_L in 4 values x 2 schedules, one seed
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
    assert len(swept) == 8
    # The final table's first row is the child run with the lowest val_error (ties: any of the tied runs).
    table = result.stdout[result.stdout.index("best trials of 'sd_rates'"):]
    first_row = re.search(r"([0-9a-f]{5}_\d{5})\s*│[^\n]*?│\s*([0-9.e-]+)\s*│\s*2\s*│\s*OK", table)
    first_trial, first_value = first_row.groups()
    best_value = min(r.data.metrics["val_error"] for r in children)
    tied = {r.data.tags["ray.trial_id"] for r in children if r.data.metrics["val_error"] == best_value}
    assert first_trial in tied and float(first_value) == pytest.approx(best_value, abs=5e-4)
    assert parent.data.tags["best_trial_id"] in tied


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_trials(tmp_path: Path, ray_address: str) -> None:
    args = ["sd_rates", "--seeds", "1", "--max-concurrent", "1", "--address", ray_address, *TINY]
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *args], cwd=tmp_path,
                               env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "mlflow.db"
    deadline = time.time() + 300
    finished_before: dict[str, int] = {}
    while time.time() < deadline and process.poll() is None:
        time.sleep(2)
        if store.exists():
            try:
                _, children = child_runs(store, "sd_rates")
            except Exception:  # the store is still being created
                continue
            finished_before = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}
            if len(finished_before) >= 2:
                break
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    process.send_signal(signal.SIGINT)  # a user's Ctrl-C
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "--resume" in err
    parent, children = child_runs(store, "sd_rates")
    assert parent.info.status == "KILLED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)  # nothing left RUNNING
    finished_before = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}
    assert 2 <= len(finished_before) < 8

    result = run_cli("orchestrator.sweep", ["sd_rates", "--resume", "--address", ray_address], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(store, "sd_rates")
    assert parent.info.status == "FINISHED" and len(children) == 8
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    for run in children:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        assert steps == [1, 2], f"trial {run.data.tags['ray.trial_id']} reported epochs {steps}"
    for run_id, end_time in finished_before.items():  # finished trials were not run again
        assert client.get_run(run_id).info.end_time == end_time


def _bad_space(tmp_path: Path) -> str:
    path = tmp_path / "bad_trainable.yaml"
    path.write_text("trainable: no_such_method\nmetric: val_error\nmode: min\n")
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
        (lambda tmp: ["sd_rates", "--set", "dataset=cifar10", f"data_dir={tmp / 'missing'}"], "does not exist"),
        (lambda tmp: ["sd_rates", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    ],
    ids=["unknown-trainable", "out-of-range", "unknown-key", "malformed-space", "missing-cifar", "no-server"],
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
    from orchestrator import sweep

    args = ["sd_rates", "--seeds", "1", "--workers", "2", "--cpus-per-trial", "2", "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--set", "p_L=0.5", "sd_schedule=linear",
            "epochs=2", "depth=8", "limit_train_batches=4", "batch_size=32"]
    assert sweep.main(args) == 0
    _, children = child_runs(tmp_path / "mlflow.db", "sd_rates")
    assert len(children) == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    in_sync = client.get_metric_history(children[0].info.run_id, "replicas_in_sync")
    assert [(m.step, m.value) for m in in_sync] == [(1, 1.0), (2, 1.0)]
    losses = [m.value for m in client.get_metric_history(children[0].info.run_id, "train_loss")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert "checkpoint" in {a.path for a in client.list_artifacts(children[0].info.run_id)}


def test_failed_trial_ends_failed_not_running(tmp_path: Path, ray_address: str) -> None:
    """Files that exist but are corrupt pass the up-front check and fail inside the trial: its run is FAILED."""
    from orchestrator import sweep

    data = tmp_path / "cifar"
    data.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (data / name).write_bytes(b"this is not a pickle")
    args = ["sd_rates", "--seeds", "1", "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--set", "p_L=1.0", "sd_schedule=linear", "dataset=cifar10", f"data_dir={data}", "epochs=1"]
    assert sweep.main(args) == 1
    parent, children = child_runs(tmp_path / "mlflow.db", "sd_rates")
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in children] == ["FAILED"]
    assert "data_batch_1" in children[0].data.tags["error"]
