"""Corrupt checkpoints and stores are one line naming the file (issue 13, item 4), never a traceback: the common
loop's ``state.pt`` (resume and inspection), an RL checkpoint (``orchestrator.rl play``, a resumed RL trial,
``record``'s ``checkpoint:PATH``) and the MLflow store ``orchestrator.compare`` reports from."""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator import cli
from tests.conftest import run_cli
from tests.loop_tasks import GAN_CONFIG, TinyGan
from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError, load_weights, read_checkpoint, save_checkpoint
from trainables.context import LocalContext
from trainables.loop import fit

MODULE_DIR = "algorithm/learner_group/learner/rl_module/default_policy"
CARTPOLE_DQN = {"env": "CartPole-v1", "network": "mlp"}


# ---- the common loop's state.pt ------------------------------------------------------------------------------------


def _gan_checkpoint(root: Path) -> str:
    """A real checkpoint of the loop: one epoch of the tiny GAN."""
    ctx = LocalContext(checkpoint_root=str(root))
    fit(ctx, {**GAN_CONFIG, "epochs": 1}, TinyGan())
    return ctx._latest


class WiderGan(TinyGan):
    """The same task with another architecture (32 hidden units instead of 16)."""

    def build_models(self) -> dict[str, nn.Module]:
        return {"generator": nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2)),
                "discriminator": nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))}


def test_resume_from_a_garbage_or_foreign_state_pt_is_one_error_naming_it(tmp_path: Path) -> None:
    latest = _gan_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not fit") as foreign:
        fit(LocalContext(checkpoint_root=str(tmp_path / "ckpt")), {**GAN_CONFIG, "epochs": 2}, WiderGan())
    assert latest in str(foreign.value) and "\n" not in str(foreign.value)

    state = Path(latest) / CHECKPOINT_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="corrupt checkpoint") as truncated:
        fit(LocalContext(checkpoint_root=str(tmp_path / "ckpt")), {**GAN_CONFIG, "epochs": 2}, TinyGan())
    assert str(state) in str(truncated.value) and "\n" not in str(truncated.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a torch file", "corrupt checkpoint"),
        # a resume would stop on int("three") or on a KeyError
        ({"models": {}, "epoch": "three"}, "epoch (should be int, is str)"),
        ({"models": {}, "optimizers": {}, "schedules": {}, "epoch": 1, "step": 2, "rng": ["x"], "config": {},
          "loop_state": {}, "task_state": {}}, "rng is not one generator state per rank"),
        ([1, 2, 3], "not a checkpoint of the common loop"),
        ({"models": {}, "sneaky": np.random.default_rng(0)}, "pickled Python objects"),  # refused by weights_only
    ],
    ids=["garbage", "wrong-types", "wrong-rng", "a-list", "pickled-object"],
)
def test_read_checkpoint_rejects_corrupt_content_with_the_file_name(tmp_path: Path, content: Any,
                                                                    message: str) -> None:
    path = tmp_path / CHECKPOINT_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        read_checkpoint(str(tmp_path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_inspection_of_another_architecture_names_the_file_and_the_model(tmp_path: Path) -> None:
    latest = _gan_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not fit model 'generator'") as caught:
        load_weights(latest, WiderGan().build_models())
    assert os.path.join(latest, CHECKPOINT_FILE) in str(caught.value)
    with pytest.raises(CheckpointError, match="no state.pt"):
        load_weights(str(tmp_path / "missing"), TinyGan().build_models())


def test_numpy_values_in_the_config_still_load_weights_only(tmp_path: Path) -> None:
    """Sweeps can hand NumPy scalars to a trial; they are stored as plain numbers so weights_only=True reads them."""
    model = nn.Linear(2, 2)
    save_checkpoint(str(tmp_path), models={"model": model}, optimizers={}, schedules={}, epoch=0, step=1,
                    rank_rng=[{"cpu": torch.get_rng_state()}], config={"lr": np.float64(0.1), "depth": np.int64(8),
                                                                       "widths": (np.int32(16), 32)},
                    loop_state={}, task_state={"temperature": np.float32(0.5)})
    state = read_checkpoint(str(tmp_path))
    assert state["config"] == {"lr": 0.1, "depth": 8, "widths": (16, 32)}
    assert type(state["config"]["depth"]) is int and state["task_state"] == {"temperature": 0.5}


# ---- RL checkpoints -------------------------------------------------------------------------------------------------


def _rl_checkpoint(root: Path, *, produced: Any = None, ctor: bytes | None = None, state: bytes | None = None) -> Path:
    """A checkpoint folder in run_algorithm's layout: trainable.json and the RLModule's two pickles."""
    root.mkdir(parents=True)
    module = root / MODULE_DIR
    module.mkdir(parents=True)
    (module / "class_and_ctor_args.pkl").write_bytes(ctor if ctor is not None else pickle.dumps({"class": None}))
    (module / "module_state.pkl").write_bytes(state if state is not None else pickle.dumps({}))
    text = produced if isinstance(produced, str) else json.dumps(
        produced if produced is not None else {"trainable": "dqn", "config": CARTPOLE_DQN})
    (root / "trainable.json").write_text(text)
    return root


PLAY_CASES = {
    # name: (how to make the checkpoint from tmp_path, what the line must say besides the file)
    "module-state-garbage": (lambda tmp: _rl_checkpoint(tmp / "c", state=b"garbage, not a pickle"),
                             f"{MODULE_DIR}/module_state.pkl: truncated or not a pickle"),
    "module-state-truncated": (lambda tmp: _rl_checkpoint(tmp / "c", state=pickle.dumps({"w": [1.0] * 50})[:40]),
                               f"{MODULE_DIR}/module_state.pkl: truncated or not a pickle"),
    "module-unloadable": (lambda tmp: _rl_checkpoint(tmp / "c", ctor=pickle.dumps({"not": "a module"})),
                          f"{MODULE_DIR}: RLlib cannot load its module"),
    "config-is-a-list": (lambda tmp: _rl_checkpoint(tmp / "c", produced={"trainable": "dqn", "config": [1, 2]}),
                         "trainable.json: expected a JSON object"),
    "config-wrong-types": (lambda tmp: _rl_checkpoint(tmp / "c", produced={
        "trainable": "dqn", "config": {**CARTPOLE_DQN, "frames": "many"}}), "trainable.json: its config does not fit"),
    "config-out-of-range": (lambda tmp: _rl_checkpoint(tmp / "c", produced={
        "trainable": "dqn", "config": {**CARTPOLE_DQN, "eval_epsilon": 3}}), "eval_epsilon=3.0 is out of range"),
    "json-is-a-list": (lambda tmp: _rl_checkpoint(tmp / "c", produced="[1, 2]"), "trainable.json"),
    "not-json": (lambda tmp: _rl_checkpoint(tmp / "c", produced="{not json"), "trainable.json"),
    "no-trainable-json": (lambda tmp: (tmp / "c" / "algorithm").mkdir(parents=True) or tmp / "c", "trainable.json"),
    "no-such-dir": (lambda tmp: tmp / "missing", "does not exist"),
}


def test_play_on_a_corrupt_checkpoint_is_one_line_and_exit_2_as_a_user_runs_it(tmp_path: Path) -> None:
    """One case through a real ``python -m orchestrator.rl`` process (the others run the same main in-process)."""
    make, message = PLAY_CASES["module-state-garbage"]
    checkpoint = make(tmp_path)
    result = run_cli("orchestrator.rl", ["play", str(checkpoint), "--episodes", "1"], tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert str(checkpoint) in errors[0]


@pytest.mark.parametrize("case", list(PLAY_CASES))
def test_play_on_a_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path: Path, case: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``orchestrator.rl``'s main under the CLI wrapper, in this process (a traceback would fail the test): one
    process imports RLlib once for all cases instead of once per case."""
    from orchestrator import rl

    make, message = PLAY_CASES[case]
    checkpoint = make(tmp_path)
    assert cli.run(rl.main, ["play", str(checkpoint), "--episodes", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
    assert str(checkpoint) in errors[0]


def test_play_tool_reads_a_good_trainable_json_over_the_current_defaults(tmp_path: Path) -> None:
    """The checks above must not refuse what a real checkpoint holds: keys the trainable no longer has are ignored,
    missing keys come from the defaults, and an offline config's dataset need not exist any more."""
    from trainables.rl.play import read_checkpoint as read_rl_checkpoint

    root = _rl_checkpoint(tmp_path / "c", produced={"trainable": "dqn",
                                                    "config": {**CARTPOLE_DQN, "lr": 0.01, "removed_key": 1}})
    name, config = read_rl_checkpoint(str(root))
    assert name == "dqn" and config["lr"] == 0.01 and "removed_key" not in config and config["network"] == "mlp"


@pytest.mark.parametrize("trainable", ["nope", ["dqn"], 5])
def test_play_tool_names_the_file_for_an_unknown_trainable(tmp_path: Path, trainable: Any) -> None:
    """(Through the CLI, orchestrator/rl.py reads trainable.json first; see the issue-13 report.)"""
    from trainables.rl.play import read_checkpoint as read_rl_checkpoint

    root = _rl_checkpoint(tmp_path / "c", produced={"trainable": trainable, "config": CARTPOLE_DQN})
    with pytest.raises(CheckpointError, match="trainable.json") as caught:
        read_rl_checkpoint(str(root))
    assert str(root / "trainable.json") in str(caught.value)


@pytest.fixture(scope="module")
def cartpole_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) DQN RLModule for CartPole, saved in run_algorithm's checkpoint layout."""
    import gymnasium as gym

    from trainables import registry
    from trainables.rl.dqn.config import build_algo_config

    root = tmp_path_factory.mktemp("rl") / "cartpole"
    config = registry.get("dqn").resolve(CARTPOLE_DQN)
    env = gym.make("CartPole-v1")
    spec = build_algo_config(config).get_rl_module_spec(env=env)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    spec.build().save_to_path(str(root / MODULE_DIR))
    (root / "trainable.json").write_text(json.dumps({"trainable": "dqn", "config": config}))
    return root


def test_a_module_of_another_environment_is_refused_before_the_first_step(cartpole_module: Path) -> None:
    import gymnasium as gym

    from trainables.rl.offline import load_checkpoint_policy

    acrobot = gym.make("Acrobot-v1")  # 6 observations and 3 actions, not CartPole's 4 and 2
    with pytest.raises(CheckpointError, match="does not fit this environment") as caught:
        load_checkpoint_policy(str(cartpole_module), acrobot.action_space, observation_space=acrobot.observation_space)
    assert str(cartpole_module / MODULE_DIR) in str(caught.value) and "\n" not in str(caught.value)
    cartpole = gym.make("CartPole-v1")  # the right environment still loads and acts
    act = load_checkpoint_policy(str(cartpole_module), cartpole.action_space,
                                 observation_space=cartpole.observation_space)
    assert act(np.zeros(4, np.float32)) in (0, 1)


def test_record_from_a_corrupt_checkpoint_policy_names_the_file(cartpole_module: Path, tmp_path: Path) -> None:
    import shutil

    from trainables.rl.offline import record_dataset

    broken = tmp_path / "broken"
    shutil.copytree(cartpole_module, broken)
    state = broken / MODULE_DIR / "module_state.pkl"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or not a pickle") as caught:
        record_dataset("CartPole-v1", [f"checkpoint:{broken}"], 1, str(tmp_path / "data"))
    assert str(state) in str(caught.value)
    assert not (tmp_path / "data").exists()  # nothing recorded

    shutil.rmtree(broken)
    shutil.copytree(cartpole_module, broken)
    (broken / "trainable.json").write_text("{half a json")
    with pytest.raises(CheckpointError, match="trainable.json: not JSON"):
        record_dataset("CartPole-v1", [f"checkpoint:{broken}"], 1, str(tmp_path / "data"))


def test_rl_trainables_declare_checkpoint_error_as_a_user_error() -> None:
    from trainables import registry

    for name in ("dqn", "crr", "bc"):
        assert CheckpointError in registry.get(name).user_errors, name
    assert CheckpointError in registry.user_error_types()


def test_resuming_an_rl_trial_from_a_corrupt_checkpoint_names_it(tmp_path: Path) -> None:
    from trainables.rl.common import ALGORITHM_SUBDIR, restore

    class Algo:  # restore_from_path as RLlib's fails on a truncated pickle
        def restore_from_path(self, path: str) -> None:
            pickle.loads(b"\x80\x05garbage")

    with pytest.raises(CheckpointError, match="has no algorithm/ folder"):
        restore(Algo(), str(tmp_path))  # type: ignore[arg-type]
    (tmp_path / ALGORITHM_SUBDIR).mkdir()
    with pytest.raises(CheckpointError, match="RLlib cannot restore from it") as caught:
        restore(Algo(), str(tmp_path))  # type: ignore[arg-type]
    assert str(tmp_path / ALGORITHM_SUBDIR) in str(caught.value)


# ---- the MLflow store a comparison reads -------------------------------------------------------------------------


def _malformed_sqlite(path: Path) -> None:
    """A file with SQLite's header whose schema page is overwritten (a crash mid-write, a bad copy)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (id TEXT, value REAL)")
        db.executemany("INSERT INTO runs VALUES (?, ?)", [(str(i) * 20, float(i)) for i in range(2000)])
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(os.urandom(5000)), "corrupt MLflow store {}: not an SQLite database"),
        (lambda p: p.write_bytes(b""), "corrupt MLflow store {}: an empty file"),
        (_malformed_sqlite, "cannot read the MLflow store {}: "),
    ],
    ids=["garbage", "empty", "malformed-pages"],
)
def test_compare_on_a_corrupt_store_is_one_line_and_exit_2(tmp_path: Path, make: Any, message: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    from orchestrator.compare.cli import main

    store = tmp_path / "mlflow.db"
    make(store)
    before = store.read_bytes()
    code = cli.run(main, ["toy_sd", "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message.format(store) in lines[-1], lines[-3:]
    assert store.read_bytes() == before  # comparing never writes into the store
