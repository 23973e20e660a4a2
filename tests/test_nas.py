"""Architecture search: spaces -> modules, the controller and its updates, the reward, searcher save/restore, the
latency measurement and its cache, and a tiny search through ``python -m orchestrator.nas`` into MLflow."""

from __future__ import annotations

import dataclasses
import itertools
import math
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.searchers import SEARCHERS, make_searcher, reward
from orchestrator.searchers.controller import Controller
from tests.conftest import run_cli, run_gated_cli, start_gated_cli, trial_runs, wait_until
from trainables import registry
from trainables.latency import LatencyCache, cached_latency, measure_latency
from trainables.nas_spaces import count_macs, count_params, get_space
from trainables.registry import ConfigError


# Every value of every decision type; MnasNet's blocks differ only in base width and stride, so 3 blocks (with
# both strides) cover its values at a third of the cost of 7.
@pytest.mark.parametrize(("name", "size"), [("mnasnet", 3), ("zoph", 4)])
def test_every_decision_value_builds_a_working_module(name: str, size: int) -> None:
    torch.set_num_threads(1)
    space = get_space(name, size)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    built = 0
    for d, decision in enumerate(space.decisions):
        for v in range(len(decision.values)):
            # a different background per decision, so values meet varied neighbours
            tokens = [(d + i) % n for i, n in enumerate(space.sizes)]
            tokens[d] = v
            model = space.build(tokens, (1, 28, 28), 10).eval()
            assert model(x).shape == (2, 10), space.describe(tokens)
            built += 1
    assert built == sum(space.sizes)
    # the builder follows the input shape (3 channels, 32x32)
    model = space.build([0] * len(space.decisions), (3, 32, 32), 100).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_space_decisions_change_the_network() -> None:
    space = get_space("mnasnet", 1)  # op, kernel, se, skip, width, layers
    base = space.build([0, 0, 0, 0, 1, 0], (1, 28, 28), 10)
    wider = space.build([0, 0, 0, 0, 2, 0], (1, 28, 28), 10)
    deeper = space.build([0, 0, 0, 0, 1, 2], (1, 28, 28), 10)
    k5 = space.build([0, 1, 0, 0, 1, 0], (1, 28, 28), 10)
    assert count_params(wider) > count_params(base) and count_params(deeper) > count_params(base)
    assert count_macs(k5, (1, 28, 28)) > count_macs(base, (1, 28, 28))
    assert space.describe([3, 1, 1, 1, 2, 2]) == "mbconv6 k5 se0.25 res x1.25 L3"
    zoph = get_space("zoph", 3)
    assert zoph.describe([0] * 4 + [1] * 5 + [1] * 4 + [1, 0]) == "1x1/8 s1 <-[img] | 3x3/16 s2 <-[1] | 3x3/16 s2 <-[1]"
    with pytest.raises(ConfigError, match="has 42 decisions"):
        get_space("mnasnet").check([0, 1])
    with pytest.raises(ConfigError, match="must index one of"):
        space.check([0, 0, 0, 0, 3, 0])
    with pytest.raises(ConfigError, match="1 to 7 blocks"):
        get_space("mnasnet", 9)


def test_controller_log_probs_are_a_distribution_over_sequences() -> None:
    torch.manual_seed(0)
    controller = Controller([2, 3, 2], hidden=8)
    with torch.no_grad():
        total = sum(math.exp(float(controller.log_prob(seq)[0])) for seq in itertools.product(range(2), range(3),
                                                                                          range(2)))
    assert total == pytest.approx(1.0, abs=1e-5)
    tokens, log_prob = controller.sample(torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert log_prob == pytest.approx(float(controller.log_prob(tokens)[0]), abs=1e-5)


@pytest.mark.parametrize("kind", ["reinforce", "ppo"])
def test_updates_move_the_policy_toward_a_rewarded_sequence(kind: str) -> None:
    torch.set_num_threads(1)
    searcher = make_searcher(kind, "mnasnet", {}, trials=40, num_blocks=1, seed=0, target_ms=1.0, lr=0.01,
                             reward_kind="accuracy")
    target = [3, 1, 1, 0, 2, 1]
    with torch.no_grad():
        before = float(searcher.controller.log_prob(target)[0])
    for i in range(40):
        tokens = searcher.suggest(f"t{i}")["tokens"]
        match = sum(a == b for a, b in zip(tokens, target, strict=True)) / len(target)
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": match, "latency_ms": 1.0})
    with torch.no_grad():
        after = float(searcher.controller.log_prob(target)[0])
    assert after > before + 1.0, (before, after)


def test_reward_formula() -> None:
    T = 2.0
    assert reward(0.9, 4.0, T, "soft") == pytest.approx(0.9 * 2 ** -0.07)  # 0.857...
    assert reward(0.9, 4.0, T, "soft") == pytest.approx(0.857374, abs=1e-6)
    assert reward(0.9, 1.0, T, "soft") == pytest.approx(0.9 * 0.5 ** -0.07)  # faster than T: a small bonus
    assert reward(0.9, 1.0, T, "hard") == pytest.approx(0.9)  # alpha = 0: no bonus below T
    assert reward(0.9, 2.0, T, "hard") == pytest.approx(0.9)  # exactly T counts as meeting it
    assert reward(0.9, 4.0, T, "hard") == pytest.approx(0.45)  # beta = -1: twice T halves the reward
    assert reward(0.9, 40.0, T, "accuracy") == pytest.approx(0.9)
    assert reward(0.9, 40.0, T, "accuracy3") == pytest.approx(0.729)


@pytest.mark.parametrize("kind", sorted(SEARCHERS))
def test_save_restore_continues_with_identical_suggestions(kind: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)

    def fake_result(tokens: list[int]) -> dict[str, float]:
        return {"val_accuracy": 0.5 + 0.05 * (tokens[0] + tokens[4]), "latency_ms": 1.0 + tokens[5]}

    extra = {"population": 4} if kind == "evolution" else ({"batch": 2} if kind == "ppo" else {})
    searcher = make_searcher(kind, "mnasnet", {"epochs": 1}, trials=30, num_blocks=2, seed=3, **extra)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(9)}
    for i in range(7):  # t7 and t8 stay pending across the save
        searcher.on_trial_complete(f"t{i}", fake_result(configs[f"t{i}"]["tokens"]))
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = make_searcher(kind, "mnasnet", {"epochs": 1}, trials=30, num_blocks=2, seed=99, **extra)
    restored.restore(str(path))
    assert set(restored.pending) == {"t7", "t8"}

    def continue_search(s: object) -> list[list[int]]:
        out = []
        for t in ("t7", "t8"):
            s.on_trial_complete(t, fake_result(configs[t]["tokens"]))
        for i in range(9, 17):
            tokens = s.suggest(f"t{i}")["tokens"]
            s.on_trial_complete(f"t{i}", fake_result(tokens))
            out.append(tokens)
        return out

    assert continue_search(restored) == continue_search(searcher)
    assert [r["reward"] for r in restored.history] == [r["reward"] for r in searcher.history]


def test_searcher_writes_the_keys_the_child_declares() -> None:
    """The searcher knows the child only through its registered declaration: other key names, other config."""
    declared = registry.tool("architecture_search")
    renamed = dataclasses.replace(declared, tokens_key="genes", index_key="n", arch_key="readable")
    config = make_searcher("random", "zoph", {"epochs": 3}, trials=1, num_blocks=2, search=renamed).suggest("a")
    assert set(config) == {"epochs", "space", "num_blocks", "genes", "n", "readable"}
    assert config["readable"] == declared.get_space("zoph", 2).describe(config["genes"]) and config["n"] == 0


def test_searcher_respects_the_budget() -> None:
    searcher = make_searcher("random", "zoph", {}, trials=2, num_blocks=3)
    assert searcher.suggest("a")["arch"] and searcher.suggest("b")["trial_index"] == 1
    assert searcher.suggest("c") == "FINISHED"
    searcher.on_trial_complete("a", None, error=True)  # a failed child is recorded without a reward
    assert searcher.history[0]["reward"] is None


def test_latency_measurement_and_cache(tmp_path: Path) -> None:
    model = get_space("mnasnet", 2).build([0] * 12, (1, 28, 28), 10)
    measured = measure_latency(model, (1, 28, 28), warmup=2, repeats=7)
    assert {"latency_ms", "latency_iqr_ms", "latency_cv"} <= set(measured)
    cache = LatencyCache(tmp_path / "cache.json")
    kwargs = {"batch": 1, "warmup": 1, "repeats": 5, "threads": 1, "device": "cpu"}
    first = cached_latency(cache, "arch-a", model, (1, 28, 28), **kwargs)
    second = cached_latency(cache, "arch-a", model, (1, 28, 28), **kwargs)
    assert first["latency_cached"] == 0.0 and second["latency_cached"] == 1.0
    assert second["latency_ms"] == first["latency_ms"]
    assert cached_latency(cache, "arch-b", model, (1, 28, 28), **kwargs)["latency_cached"] == 0.0


def test_tiny_search_through_the_cli_writes_nested_runs(tmp_path: Path, ray_address: str) -> None:
    args = ["--trials", "3", "--blocks", "2", "--target-ms", "0.5", "--max-concurrent", "2", "--address",
            ray_address, "--set", "limit_train_batches=2", "batch_size=32", "latency_repeats=5", "latency_warmup=1"]
    result = run_cli("orchestrator.nas", args, tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front" in result.stdout and "top 3 architectures" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nas").experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    space = get_space("mnasnet", 2)
    for run in children:
        assert run.info.status == "FINISHED"
        tokens = [int(t) for t in run.data.params["tokens"].strip("[]").split(",")]
        assert run.data.params["arch"] == space.describe(tokens) == run.data.tags["arch"]
        m = run.data.metrics
        child = space.build(tokens, (1, 28, 28), 10)
        assert (m["params"], m["macs"]) == (count_params(child), count_macs(child, (1, 28, 28)))
        assert m["reward"] == pytest.approx(reward(m["val_accuracy"], m["latency_ms"], 0.5, "soft"))
    assert parent.data.metrics["best_reward"] == pytest.approx(max(r.data.metrics["reward"] for r in children))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"reward_over_trials.png", "children.csv"} <= artifacts


def test_interrupted_search_resumes_the_same_search(tmp_path: Path, ray_address: str) -> None:
    """Ctrl-C while the third child is held after its first epoch (it waits on a file: no timing), then --resume:
    the search ends with exactly --trials children, each trial index once, the children finished before the
    interrupt are not trained again and the held one continues from its checkpoint."""
    gate = tmp_path / "gate"
    args = ["--trainable", "gated_nas_child", "--trials", "6", "--blocks", "1", "--controller", "reinforce",
            "--max-concurrent", "1", "--epochs-per-child", "2", "--address", ray_address,
            "--set", f"gate={gate}", "hold_at=2"]
    process = start_gated_cli("orchestrator.nas", args, tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    def children() -> list:
        return trial_runs(tmp_path / "mlflow.db", "nas")

    wait_until(lambda: any(r.data.params["trial_index"] == "2" and "checkpoint" in r.data.tags for r in children()),
               "the held child's first checkpoint", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in err, err[-3000:]
    before = children()
    assert {r.data.params["trial_index"]: r.info.status for r in before} == {"0": "FINISHED", "1": "FINISHED",
                                                                            "2": "KILLED"}
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}

    gate.write_text("open")
    result = run_gated_cli("orchestrator.nas", ["--resume", "--address", ray_address], tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    after = children()
    assert len(after) == 6 and all(r.info.status == "FINISHED" for r in after)
    assert sorted(int(r.data.params["trial_index"]) for r in after) == list(range(6))
    for run_id, end_time in finished_before.items():
        assert client.get_run(run_id).info.end_time == end_time
    for run in after:
        epochs = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == [(1, 1.0), (2, 2.0)], f"child {run.data.params['trial_index']} reported {epochs}"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--target-ms", "0"], "--target-ms must be > 0"), (["--set", "tokens=[1]"], "the searcher chooses them"),
     (["--set", "latency_repeats=0"], "latency_repeats=0 is out of range"), (["--blocks", "9"], "1 to 7 blocks")],
    ids=["target", "reserved", "repeats", "blocks"],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("orchestrator.nas", args, tmp_path, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
