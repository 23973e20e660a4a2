"""Who can reach a cluster's services and what a loader runs (issue 21): cluster.yaml's services listen on the head's
127.0.0.1, Ray's token authentication is on for every node and no credential is in the file, the documented IAM
policy grants one bucket prefix only; a token-protected two-node cluster on loopback refuses a driver without its
token while the sweep CLI given the token runs; and the loaders refuse a checkpoint that would run code when loaded.
docs/cluster.md ("Security") says the same for a user."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.multinode import LoopbackCluster, loopback_cluster

CLUSTER_YAML = REPO / "cluster.yaml"
CLUSTER_DOC = REPO / "docs" / "cluster.md"


# ---- cluster.yaml: services on loopback, the token on every node, no credentials -----------------------------------


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _flag_values(command: str, flag: str) -> list[str]:
    """Every value given to ``flag`` in a shell command line (``--flag=value`` or ``--flag value``)."""
    return re.findall(rf"{re.escape(flag)}(?:=|\s+)(\S+)", command)


def test_dashboard_and_mlflow_listen_on_the_heads_loopback_only(config: dict[str, Any]) -> None:
    """The dashboard's Jobs API runs code and MLflow lets anyone rewrite runs: only the head itself may reach them
    (users come in through SSH tunnels). Ray's default dashboard host is loopback too, but the file must say so."""
    head = config["head_start_ray_commands"]
    ray_start = [c for c in head if "ray start" in c]
    assert len(ray_start) == 1 and _flag_values(ray_start[0], "--dashboard-host") == ["127.0.0.1"], ray_start
    mlflow = [c for c in head if "mlflow server" in c]
    assert len(mlflow) == 1 and _flag_values(mlflow[0], "--host") == ["127.0.0.1"], mlflow
    everything = "\n".join(head + config["worker_start_ray_commands"] + config["setup_commands"])
    assert "0.0.0.0" not in everything
    assert not any("mlflow" in c or "dashboard" in c for c in config["worker_start_ray_commands"])


def test_every_ray_start_requires_the_token_which_the_head_makes_and_the_workers_receive(
        config: dict[str, Any]) -> None:
    """Ray 2.60: RAY_AUTH_MODE=token on every `ray start`; the head generates ~/.ray/auth_token before it starts
    (`ray get-auth-token --generate`), the launcher copies that file from the head to each worker
    (cluster_synced_files, run by the head's autoscaler before the worker's setup), and every later shell has the mode
    (a driver with an explicit --address uses the token only then). Nothing about the token comes from the laptop."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(re.search(r"RAY_AUTH_MODE=token\s+ray start", c) for c in starts), (key, starts)
    assert any(re.search(r"\bray get-auth-token --generate\b", c) for c in config["head_setup_commands"])
    assert config["cluster_synced_files"] == ["~/.ray/auth_token"]
    assert not any("auth_token" in remote or "auth_token" in local for remote, local in config["file_mounts"].items())
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    assert any("~/.ray/auth_token" in c for c in config["worker_setup_commands"]), "a worker checks the token came"


# Shapes of secrets that must never be in the YAML: AWS keys, a Ray token or MLflow password given inline, a PEM key.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS credential variable": r"aws_(?:secret_)?access_key(?:_id)?|aws_session_token",
    "Ray token given inline": r"RAY_AUTH_TOKEN\s*=",
    "MLflow password": r"MLFLOW_(?:TRACKING|AUTH_ADMIN)_PASSWORD|admin_password",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "long random string": r"(?<![\w/.-])[A-Za-z0-9+/]{40,}={0,2}(?![\w/.-])",
}


def secrets_in(text: str) -> list[str]:
    return [f"{name}: {match.group(0)[:24]}" for name, pattern in SECRET_PATTERNS.items()
            for match in re.finditer(pattern, text, flags=re.IGNORECASE)]


def test_no_credentials_in_the_yaml_and_every_node_has_an_instance_profile(config: dict[str, Any]) -> None:
    assert secrets_in(CLUSTER_YAML.read_text()) == []
    # The check finds what it is for (it is not vacuous): a key pair and an inline token.
    leaked = "setup_commands:\n  - export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYabcd\n" \
             "  - export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE RAY_AUTH_TOKEN=abc\n"
    assert {finding.split(":")[0] for finding in secrets_in(leaked)} == {
        "AWS access key id", "AWS credential variable", "Ray token given inline", "long random string"}
    for name, node_type in config["available_node_types"].items():
        arn = node_type["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert re.fullmatch(r"arn:aws:iam::\w+:instance-profile/[\w+=,.@-]+", arn), (name, arn)


def _documented_s3_policy() -> dict[str, Any]:
    text = CLUSTER_DOC.read_text()
    match = re.search(r"cat > s3-deeprepro\.json <<'JSON'\n(.*?)\nJSON\n", text, flags=re.DOTALL)
    assert match, "docs/cluster.md has no s3-deeprepro.json policy"
    return json.loads(match.group(1))


def test_the_documented_iam_policy_grants_one_bucket_prefix_only() -> None:
    """s3:ListBucket on the bucket, limited to the prefix by a condition; object actions on the prefix's objects;
    no wildcard action and no other resource."""
    statements = _documented_s3_policy()["Statement"]
    listing = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert len(listing) == 1 and listing[0]["Resource"] == "arn:aws:s3:::YOUR-BUCKET"
    assert all(p.startswith("deeprepro") for p in listing[0]["Condition"]["StringLike"]["s3:prefix"])
    objects = [s for s in statements if s is not listing[0]]
    assert len(objects) == 1 and objects[0]["Resource"] == "arn:aws:s3:::YOUR-BUCKET/deeprepro/*"
    assert set(objects[0]["Action"]) <= {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s.get("Action")) for s in statements)


@pytest.mark.parametrize(("env", "says"), [
    ({}, "RAY_AUTH_MODE is not set here"),
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE is 'disabled' here"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "{tmp}/missing"}, "RAY_AUTH_TOKEN_PATH={tmp}/missing cannot be"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "{tmp}/token"}, "in RAY_AUTH_TOKEN_PATH={tmp}/token is not the"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}, "the token in RAY_AUTH_TOKEN is not the cluster's"),
    ({"RAY_AUTH_MODE": "token"}, "no token here (no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or {tmp}/.ray/auth_token)"),
], ids=["no-mode", "disabled", "path-missing", "path-wrong", "env-wrong", "none"])
def test_a_refused_driver_is_told_which_token_setting_is_wrong(env: dict[str, str], says: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cluster import token_refusal

    (tmp_path / "token").write_text("a" * 64)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    line = token_refusal("10.0.0.1:6379")
    assert line.startswith("the Ray cluster at 10.0.0.1:6379 refused this driver: it requires Ray's token")
    assert says.format(tmp=tmp_path) in line.split("), and ", 1)[1] and "\n" not in line, line


# ---- Ray's token on a two-node loopback cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[LoopbackCluster]:
    """A CPU head with the driver resource and one worker with a logical GPU, both started with this cluster's own
    token (tests/multinode.py: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH)."""
    with loopback_cluster({"PYTHONPATH": str(REPO)}) as nodes:
        nodes.start_head(num_cpus=1, resources={"driver": 1})
        nodes.add_worker(num_cpus=2, num_gpus=1)
        yield nodes


def _without_token(cluster: LoopbackCluster, home: Path, **extra: str) -> dict[str, str]:
    """The cluster's environment without any of Ray's token settings, and a home without ~/.ray/auth_token."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH") and k != "MLFLOW_TRACKING_URI"}
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.slow
def test_a_driver_without_the_token_is_refused_and_the_sweep_with_it_runs(token_cluster: LoopbackCluster,
                                                                         tmp_path: Path) -> None:
    """Four drivers at once (the refused ones spend ~20 s in Ray's retries): a bare ``ray.init`` without any token
    and one with a wrong token are refused by the GCS; ``orchestrator.sweep`` without the token is one line naming
    the token settings and exit 2; the same sweep with the cluster's env (its token) runs its trial on the worker."""
    home = tmp_path / "home"
    home.mkdir()
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    space = tmp_path / "one.yaml"
    space.write_text("trainable: resnet\nconfig: {epochs: 1, depth: 8, limit_train_batches: 2, batch_size: 32}\n"
                     "space:\n  seed: {grid: [0]}\n")
    join = "import ray, sys; ray.init(address=sys.argv[1]); print('JOINED')"
    sweep = ["-m", "orchestrator.sweep", str(space), "--address", token_cluster.address, "--gpus-per-trial", "0.5",
             "--storage", str(tmp_path / "results")]
    runs = {
        "bare, no token": ([sys.executable, "-c", join, token_cluster.address], _without_token(token_cluster, home)),
        "bare, wrong token": ([sys.executable, "-c", join, token_cluster.address], _without_token(
            token_cluster, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong))),
        "sweep, no token": ([sys.executable, *sweep], _without_token(token_cluster, home)),
        # without an inherited MLFLOW_TRACKING_URI: the store is the working directory's (another test in the same
        # session may have set the variable: MLflow's fluent set_tracking_uri exports it)
        "sweep, token": ([sys.executable, *sweep], {**{k: v for k, v in token_cluster.env.items()
                                                      if k != "MLFLOW_TRACKING_URI"}, "PYTHONUNBUFFERED": "1"}),
    }
    (tmp_path / "ok").mkdir()  # the working directory (and MLflow store) of the sweep with the token
    processes = {name: subprocess.Popen(command, cwd=tmp_path / "ok" if name == "sweep, token" else tmp_path,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, (command, env) in runs.items()}
    results = {}
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=240)  # a bound on a hang, not a timing assumption
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results[name] = (process.returncode, out, err)

    for name in ("bare, no token", "bare, wrong token"):
        code, out, err = results[name]
        assert code != 0 and "JOINED" not in out, (name, out, err[-2000:])
        assert "AuthenticationError" in err and "token" in err.lower(), (name, err[-2000:])

    code, out, err = results["sweep, no token"]
    assert code == 2, (out[-1000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert f"the Ray cluster at {token_cluster.address} refused this driver" in errors[0]
    assert "RAY_AUTH_MODE=token" in errors[0] and "RAY_AUTH_TOKEN_PATH" in errors[0]
    assert not (tmp_path / "mlflow.db").exists(), "a refused sweep records nothing"

    code, out, err = results["sweep, token"]
    assert code == 0, (out[-2000:], err[-4000:])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}")
    runs_found = client.search_runs([client.get_experiment_by_name("one").experiment_id])
    children = [r for r in runs_found if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    head_id = next(n["node_id"] for n in token_cluster.alive_nodes() if "driver" in n["resources"])
    assert children[0].data.tags["ray.node_id"] != head_id, "the trial ran on the worker that joined with the token"


# ---- loaders refuse a checkpoint that would run code ----------------------------------------------------------------

MODULE_DIR = "algorithm/learner_group/learner/rl_module/default_policy"
CARTPOLE_DQN = {"env": "CartPole-v1", "network": "mlp"}


class RunsCode:
    """Unpickling this runs ``touch MARKER`` (``os.system``): a checkpoint that would execute code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _short_string(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def hidden_import(marker: Path) -> bytes:
    """A hand-made pickle that runs ``posix.system`` while the last two strings before its STACK_GLOBAL are
    "numpy", "dtype" (pushed and popped again): a scanner that pairs STACK_GLOBAL with the last strings it saw
    would pass it. (Checked by hand with ``pickle.loads``: it does create the marker.)"""
    return (b"\x80\x04" + _short_string("posix") + _short_string("system") + _short_string("numpy")
            + _short_string("dtype") + b"00" + b"\x93" + _short_string(f"touch {marker}") + b"\x85R.")


@pytest.fixture(scope="module")
def cartpole_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) DQN RLModule for CartPole in run_algorithm's checkpoint layout, with its trainable.json."""
    import gymnasium as gym

    from trainables import registry
    from trainables.rl.dqn.config import build_algo_config

    root = tmp_path_factory.mktemp("rl") / "cartpole"
    config = registry.get("dqn").resolve(CARTPOLE_DQN)
    env = gym.make("CartPole-v1")
    env.action_space.seed(0)  # a trained module's spaces carry a seeded NumPy Generator, which its pickle rebuilds
    spec = build_algo_config(config).get_rl_module_spec(env=env)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    spec.build().save_to_path(str(root / MODULE_DIR))
    (root / "trainable.json").write_text(json.dumps({"trainable": "dqn", "config": config}))
    return root


@pytest.mark.parametrize(("file", "content", "says"), [
    ("class_and_ctor_args.pkl", "reduce", "loading it would import posix.system"),
    ("module_state.pkl", "reduce", "loading it would import posix.system"),
    ("module_state.pkl", "hidden", "imports a name that cannot be read without running it"),
])
def test_play_refuses_a_module_pickle_that_would_run_code(cartpole_checkpoint: Path, tmp_path: Path, file: str,
                                                          content: str, says: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``orchestrator.rl play`` (its main under the CLI wrapper, in this process: a traceback would fail the test)
    on a checkpoint whose pickle would run code: one line naming the file and exit 2, and the code never ran."""
    import shutil

    from orchestrator import cli, rl

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(cartpole_checkpoint, checkpoint)
    marker = tmp_path / "ran"
    evil = pickle.dumps(RunsCode(marker), protocol=4) if content == "reduce" else hidden_import(marker)
    (checkpoint / MODULE_DIR / file).write_bytes(evil)
    assert cli.run(rl.main, ["play", str(checkpoint), "--episodes", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0] and str(checkpoint / MODULE_DIR / file) in errors[0], errors
    assert not marker.exists(), "the checkpoint's code ran"


def test_the_import_check_passes_real_module_checkpoints(cartpole_checkpoint: Path, tmp_path: Path) -> None:
    """What RLlib writes for this project's algorithms passes: DQN's module (a trainables class, seeded spaces) and
    BC's (RLlib's module and catalog classes); the check is not a refusal of everything. tests/test_rl_cli.py plays
    a trained DQN checkpoint back through the same check."""
    import gymnasium as gym

    from trainables import registry
    from trainables.rl.bc import build_bc_config
    from trainables.rl.offline import check_module_files
    from trainables.rl.pickle_imports import pickle_imports

    check_module_files(str(cartpole_checkpoint / MODULE_DIR))
    assert ("numpy.random._pickle", "__generator_ctor") in pickle_imports(
        str(cartpole_checkpoint / MODULE_DIR / "class_and_ctor_args.pkl")), "the fixture is a seeded module"
    env = gym.make("CartPole-v1")
    spec = build_bc_config(registry.get("bc").resolve({"env": "CartPole-v1"}), check_data=False).get_rl_module_spec(
        env=env)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    spec.build().save_to_path(str(tmp_path / "bc"))
    check_module_files(str(tmp_path / "bc"))
    assert ("ray.rllib.algorithms.bc.bc_catalog", "BCCatalog") in pickle_imports(
        str(tmp_path / "bc" / "class_and_ctor_args.pkl"))


def test_resume_refuses_a_state_pt_that_would_run_code(tmp_path: Path) -> None:
    """The common loop's checkpoint (resume, a retried trial) loads with weights_only: a pickled object is refused
    as a corrupt checkpoint, one line naming the file, and its code never runs."""
    import torch

    from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError, read_checkpoint

    marker = tmp_path / "ran"
    torch.save({"models": {"model": RunsCode(marker)}, "epoch": 1}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as caught:
        read_checkpoint(str(tmp_path))
    assert str(tmp_path / CHECKPOINT_FILE) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_inspect_refuses_an_mlflow_checkpoint_artifact_that_would_run_code(tmp_path: Path) -> None:
    """``python -m orchestrator.inspect RUN_ID`` downloads a trial's ``checkpoint/`` artifact from MLflow and loads
    it as a local checkpoint is loaded: a state.pt holding a pickled object is one line and exit 2; nothing ran."""
    import torch
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli
    from trainables import registry
    from trainables.checkpoint import CHECKPOINT_FILE

    marker = tmp_path / "ran"
    store = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.create_run(client.create_experiment("sweep"), tags={"trainable": "resnet"})
    artifacts = tmp_path / "artifacts"
    (artifacts / "checkpoint").mkdir(parents=True)
    (artifacts / "config.json").write_text(json.dumps(registry.get("resnet").resolve({"depth": 8}), default=str))
    torch.save({"models": {"model": RunsCode(marker)}, "epoch": 1}, artifacts / "checkpoint" / CHECKPOINT_FILE)
    client.log_artifact(run.info.run_id, str(artifacts / "config.json"))
    client.log_artifacts(run.info.run_id, str(artifacts / "checkpoint"), artifact_path="checkpoint")
    client.set_terminated(run.info.run_id)

    result = run_cli("orchestrator.inspect", [run.info.run_id, "--tracking-uri", f"sqlite:///{store}"], tmp_path,
                     timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds pickled Python objects" in errors[0], result.stderr[-2000:]
    assert not marker.exists()
