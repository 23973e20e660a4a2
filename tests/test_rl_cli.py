"""`python -m orchestrator.rl` end to end: a two-trial DQN sweep into MLflow, playing its checkpoint back, and bad
input as one clear line. Budgets are a few hundred CartPole steps: these check the plumbing, test_dqn.py learning."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_gated_cli, start_gated_cli, wait_until
from tests.test_sweep_cli import child_runs

TINY_DQN = ["--env", "CartPole-v1", "--frames", "400", "--set", "iteration_steps=200", "learning_starts=100",
            "eval_interval=1", "eval_episodes=1"]


def _two_lr_space(tmp_path: Path) -> Path:
    path = tmp_path / "dqn_two.yaml"
    path.write_text("trainable: dqn\nspace:\n  lr: {grid: [0.0005, 0.001]}\n")  # ranks by the primary metric
    return path


def test_dqn_sweep_writes_nested_runs_and_plays_back(tmp_path: Path, ray_address: str) -> None:
    space = _two_lr_space(tmp_path)
    result = run_cli("orchestrator.rl", ["dqn", *TINY_DQN, "--sweep", str(space), "--address", ray_address],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = child_runs(tmp_path / "mlflow.db", "dqn_two")
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["lr"] for r in children) == ["0.0005", "0.001"]
    for run in children:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        for name in ("eval_return_mean", "env_frames", "frames_per_second", "epsilon", "q_mean"):
            assert name in metrics, f"{name} missing from {sorted(metrics)}"
        assert metrics["env_frames"] >= 400
        assert metrics["eval_age"] == 0.0  # eval_interval=1: the last iteration evaluated

    checkpoints = sorted((tmp_path / "ray_results").rglob("trainable.json"))
    assert checkpoints, "no RL checkpoint was written"
    produced = json.loads(checkpoints[-1].read_text())
    assert produced["trainable"] == "dqn" and produced["config"]["env"] == "CartPole-v1"
    trial_dir = checkpoints[-1].parent.parent  # play accepts a trial directory: its latest checkpoint
    gif = tmp_path / "episode.gif"
    played = run_cli("orchestrator.rl", ["play", str(trial_dir), "--episodes", "2", "--gif", str(gif)], tmp_path)
    assert played.returncode == 0, played.stderr[-3000:]
    assert played.stdout.count("episode ") == 2 and "mean return" in played.stdout
    assert gif.is_file() and gif.stat().st_size > 0


def test_interrupted_rl_trial_is_partial_in_the_final_table(tmp_path: Path, ray_address: str) -> None:
    """SIGTERM (what Slurm, Kubernetes and ``timeout`` send) while an RL trial (budget: frames) is held after its
    first report: the same interrupt as Ctrl-C (it used to end the driver with Ray's ``sys.exit``, leaving the runs
    RUNNING and no resume command): exit 143, the parent run KILLED, the final table calls the trial partial (it
    used to say OK: the completion check looked for an ``epochs`` key), and --resume completes it."""
    gate = tmp_path / "gate"
    process = start_gated_cli("orchestrator.rl", ["gated_rl", "--frames", "300", "--address", ray_address,
                                                  "--set", "hold=true", f"gate={gate}"], tmp_path)

    def first_checkpoint() -> bool:
        _, children = child_runs(tmp_path / "mlflow.db", "gated_rl")
        return any("checkpoint" in r.data.tags for r in children)

    wait_until(first_checkpoint, "the RL trial's first checkpoint", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    parent, children = child_runs(tmp_path / "mlflow.db", "gated_rl")
    assert parent.info.status == "KILLED" and [r.info.status for r in children] == ["KILLED"]
    assert "continue with: python -m orchestrator.rl gated_rl --resume" in err
    # columns: trial_id, eval_return_mean, env_frames, status
    assert re.search(r"│\s*10\s*│\s*100\s*│\s*partial", out), out[-2000:]
    gate.write_text("open")
    result = run_gated_cli("orchestrator.rl", ["gated_rl", "--resume", "--address", ray_address], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"│\s*30\s*│\s*300\s*│\s*OK", result.stdout), result.stdout[-2000:]


def _corrupt_checkpoint(tmp: Path) -> str:
    folder = tmp / "corrupt"
    folder.mkdir()
    (folder / "trainable.json").write_text("{not json")
    return str(folder)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: ["dqn", "--env", "NoSuchEnv-v9"], "unknown environment 'NoSuchEnv-v9'"),
        (lambda tmp: ["dqn", "--env", "CartPole-v1", "--set", "lr=-1"], "lr"),
        (lambda tmp: ["dqn", "--sweep", "sd_rates"], "is for trainable 'resnet', not 'dqn'"),
        (lambda tmp: ["dqn", "--env", "CartPole-v1", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
        (lambda tmp: ["play", str(tmp / "missing")], "does not exist"),
        (lambda tmp: ["play", _corrupt_checkpoint(tmp)], "corrupt checkpoint"),
    ],
    ids=["unknown-env", "out-of-range", "wrong-space", "no-server", "missing-checkpoint", "corrupt-checkpoint"],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, make_args, message: str) -> None:
    result = run_cli("orchestrator.rl", make_args(tmp_path), tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-3:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_record_then_crr_and_bc_on_the_same_data(tmp_path: Path, ray_address: str) -> None:
    data = tmp_path / "data"
    recorded = run_cli("orchestrator.rl", ["record", "--env", "CartPole-v1", "--policy", "random", "--episodes", "6",
                                           "--out", str(data), "--address", ray_address], tmp_path)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert '"episodes": 6' in recorded.stdout
    tiny = ["--env", "CartPole-v1", "--data", str(data), "--address", ray_address,
            "--set", "train_rows=512", "updates_per_iteration=2", "evaluation_episodes=1"]
    # CRR with 4 seeds fills the session's 4 CPUs: before offline trials reserved a CPU for Ray Data's read tasks in
    # their own placement group, 4 one-CPU trials left none for the reads and the sweep hung.
    for algo, extra in (("crr", ["--weight-type", "binary", "--seeds", "4"]), ("bc", [])):
        result = run_cli("orchestrator.rl", [algo, *tiny, *extra], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        parent, children = child_runs(tmp_path / "mlflow.db", algo)
        assert parent.info.status == "FINISHED" and len(children) == (4 if algo == "crr" else 1)
        for run in children:
            assert run.info.status == "FINISHED" and run.data.params["data"] == str(data)
            assert "eval_return_mean" in run.data.metrics
            assert ("weight_type" in run.data.params) == (algo == "crr")
