"""CRR (Wang et al. 2020) on RLlib's new API stack, its offline datasets and the BC baseline."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
from typing import Any

import numpy as np
import pytest
import torch

from trainables import registry
from trainables.context import LocalContext
from trainables.registry import ConfigError
from trainables.rl.crr_learner import critic_target, crr_weights, normalize_box_actions, state_value
from trainables.rl.offline import find_module_dir, inspect_dataset, parse_policy, record_dataset


@pytest.fixture(autouse=True)
def _finalize_dataset_iterators():
    """Finalize Ray Data's iterator generators while Ray is up. Left to a later GC, their finalizers ran inside
    pytest's ast.parse of a late-imported plugin and crashed Python 3.11.7 ("AST constructor recursion depth
    mismatch") after all tests had passed."""
    yield
    gc.collect()


# ---- the formulas on hand-built numbers ---------------------------------------------------------------------------


def test_binary_weight_is_indicator_of_positive_advantage() -> None:
    adv = torch.tensor([-2.0, 0.0, 1e-3, 0.5, 30.0])
    assert crr_weights(adv, "binary", beta=1.0, max_weight=20.0).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_exp_weight_is_clipped_exponential() -> None:
    adv = torch.tensor([-2.0, 0.0, 0.5, 3.0, 10.0])
    w = crr_weights(adv, "exp", beta=1.0, max_weight=20.0)
    expected = [math.exp(-2.0), 1.0, math.exp(0.5), 20.0, 20.0]  # exp(3) = 20.09 > 20 is clipped
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    w2 = crr_weights(adv, "exp", beta=2.0, max_weight=1000.0)  # temperature halves the exponent
    assert w2.tolist() == pytest.approx([math.exp(a / 2.0) for a in adv.tolist()], rel=1e-5)
    with pytest.raises(ValueError):
        crr_weights(adv, "linear", beta=1.0, max_weight=1.0)


def test_advantage_estimators_on_hand_built_q_and_policy() -> None:
    # Two states, three actions: Q(s, .) and pi(.|s) written out by hand.
    q_all = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]])
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    sampled_actions = torch.tensor([[0, 0, 2, 1], [2, 1, 2, 2]])  # m = 4 samples per state
    q_sampled = q_all.gather(1, sampled_actions)  # [[1, 1, 4, 2], [3, -1, 3, 3]]
    taken = torch.tensor([2, 0])  # the dataset's actions
    q_taken = q_all.gather(1, taken[:, None]).squeeze(1)  # [4, 0]

    v_mean = state_value("mean", q_sampled=q_sampled)
    v_max = state_value("max", q_sampled=q_sampled)
    v_exp = state_value("expectation", q_all=q_all, probs=probs)
    assert v_mean.tolist() == pytest.approx([2.0, 2.0])
    assert v_max.tolist() == pytest.approx([4.0, 3.0])
    assert v_exp.tolist() == pytest.approx([0.5 + 0.5 + 1.0, 0.0 - 0.1 + 2.4])
    assert (q_taken - v_mean).tolist() == pytest.approx([2.0, -2.0])
    assert (q_taken - v_max).tolist() == pytest.approx([0.0, -3.0])  # max: A <= 0 for every sampled action
    assert (q_taken - v_exp).tolist() == pytest.approx([2.0, -2.3])
    with pytest.raises(ValueError):
        state_value("median", q_sampled=q_sampled)


def test_critic_target_on_hand_built_batch() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.5, -1.0])
    terminated = torch.tensor([False, True, False, True])  # a truncated step is not terminated: it bootstraps
    q_next = torch.tensor([10.0, 10.0, -2.0, 3.0])  # Q'(s', a') with a' ~ pi(.|s')
    y = critic_target(rewards, terminated, q_next, gamma=0.9)
    assert y.tolist() == pytest.approx([1.0 + 9.0, 1.0, 0.5 - 1.8, -1.0])


def test_box_actions_are_normalized_to_the_policy_range() -> None:
    import gymnasium as gym

    space = gym.spaces.Box(low=np.array([-2.0]), high=np.array([2.0]))
    assert normalize_box_actions(torch.tensor([[-2.0], [0.0], [1.0], [5.0]]), space).flatten().tolist() == [
        -1.0, 0.0, 0.5, 1.0]


# ---- the loss through the real learner -----------------------------------------------------------------------------


def _crr_learner(**training: Any) -> Any:
    """CRRTorchLearner and its module built as RLlib builds them, for CartPole's spaces; every network's weights
    moved by independent noise (the targets differ from the critics, so a loss reading the wrong network shows, and
    the values spread enough for both signs of the advantage and clipped weights)."""
    import gymnasium as gym
    from ray.rllib.core import DEFAULT_MODULE_ID

    from trainables.rl.crr import CRRConfig
    from trainables.rl.crr_learner import CRRTorchLearner

    torch.manual_seed(0)
    config = CRRConfig().environment("CartPole-v1").training(gamma=0.9, **training).rl_module(
        model_config={"hiddens": [16]})
    spaces = {DEFAULT_MODULE_ID: (gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2))}
    learner = config.build_learner(spaces=spaces)
    assert type(learner) is CRRTorchLearner
    module = learner.module[DEFAULT_MODULE_ID]
    with torch.no_grad():
        for net in (module.qf, module.qf_twin, module.qf_target, module.qf_twin_target, module.pi):
            for p in net.parameters():
                p.add_(torch.randn_like(p))
    return learner, module


@pytest.mark.parametrize(("weight_type", "advantage_type"), [("binary", "expectation"), ("exp", "expectation"),
                                                             ("exp", "mean")])
def test_crr_learner_loss_matches_the_papers_formulas(weight_type: str, advantage_type: str) -> None:
    """Critic: sum_i mean (Q_i(s, a) - y)^2, y = r + gamma (1 - done) min_i Q'_i(s', a'), a' ~ pi(.|s');
    actor: -mean f(Q(s, a) - V(s)) log pi(a|s), f = 1[A > 0] or min(exp(A / beta), max_weight), written out here
    with the module's networks and compared with CRRTorchLearner.compute_loss_for_module."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    beta, max_weight, m = 0.2, 3.0, 3
    learner, module = _crr_learner(weight_type=weight_type, advantage_type=advantage_type, beta=beta,
                                   max_weight=max_weight, n_action_samples=m)
    g = torch.Generator().manual_seed(1)
    n = 8
    s, s_next = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    a = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    r = torch.tensor([1.0, 0.0, -1.0, 1.0, 0.5, 1.0, 2.0, 0.0])
    done = torch.tensor([False, True, False, False, True, False, False, True])
    batch = {Columns.OBS: s, Columns.NEXT_OBS: s_next, Columns.ACTIONS: a, Columns.REWARDS: r,
             Columns.TERMINATEDS: done}
    torch.manual_seed(5)  # the learner samples a' ~ pi(.|s') first, then (mean) m actions a_j ~ pi(.|s)
    total = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID,
                                            config=learner.config.get_config_for_module(DEFAULT_MODULE_ID),
                                            batch=batch, fwd_out=module.forward_train(batch))
    got_policy = float(learner.metrics.peek((DEFAULT_MODULE_ID, "policy_loss")).detach())
    got_critic = float(learner.metrics.peek((DEFAULT_MODULE_ID, "qf_loss")).detach())

    rows = torch.arange(n)
    with torch.no_grad():
        torch.manual_seed(5)
        a_next = torch.distributions.Categorical(logits=module.pi(s_next)).sample()
        q_next = torch.minimum(module.qf_target(s_next)[rows, a_next], module.qf_twin_target(s_next)[rows, a_next])
        y = r + 0.9 * (1.0 - done.float()) * q_next
        q_all = torch.minimum(module.qf(s), module.qf_twin(s))  # twin Q: the smaller value, per action
        probs = torch.softmax(module.pi(s), dim=1)
        if advantage_type == "expectation":
            v = (probs * q_all).sum(dim=1)  # V(s) = sum_a pi(a|s) Q(s, a)
        else:
            a_j = torch.distributions.Categorical(logits=module.pi(s)).sample((m,))  # [m, n]
            v = torch.stack([q_all[rows, a_j[j]] for j in range(m)]).mean(dim=0)  # V(s) = 1/m sum_j Q(s, a_j)
        advantage = q_all[rows, a] - v
        f = (advantage > 0).float() if weight_type == "binary" else torch.clamp(torch.exp(advantage / beta),
                                                                                 max=max_weight)
    critic = ((module.qf(s)[rows, a] - y) ** 2).mean() + ((module.qf_twin(s)[rows, a] - y) ** 2).mean()
    policy = -(f * torch.log_softmax(module.pi(s), dim=1)[rows, a]).mean()

    assert got_critic == pytest.approx(float(critic.detach()), rel=1e-5)
    assert got_policy == pytest.approx(float(policy.detach()), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float((critic + policy).detach()), rel=1e-5)
    # the hand-built batch exercises each branch of the formulas: both signs of A, clipped and unclipped weights,
    # terminal steps whose bootstrap term is not zero
    assert (advantage > 0).any() and (advantage <= 0).any()
    if weight_type == "exp":
        assert (f == max_weight).any() and (f < max_weight).any()
    assert (q_next[done] != 0).all()


# ---- config validation --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cartpole(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "cartpole")
    record_dataset("CartPole-v1", ["random", "random@eps=1.0,episodes=2"], 4, out, seed=0)
    return out


@pytest.mark.parametrize("overrides, fragment", [
    ({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"), ({"max_weight": 0.0}, "max_weight"),
    ({"weight_type": "linear"}, "weight_type"), ({"advantage_type": "median"}, "advantage_type"),
    ({"n_action_samples": 0}, "n_action_samples"), ({"tau": 0.0}, "tau"), ({"tau": 1.5}, "tau"),
    ({"target_update_frequency": 0}, "target_update_frequency"), ({"gamma": 1.2}, "gamma"),
    ({"hiddens": []}, "hiddens"), ({"env": "NoSuchEnv-v9"}, "NoSuchEnv"),
])
def test_crr_rejects_bad_values(tiny_cartpole: str, overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        registry.get("crr").resolve({"data": tiny_cartpole, **overrides})


def test_expectation_needs_discrete_actions(tmp_path) -> None:
    data = str(tmp_path / "pendulum")
    record_dataset("Pendulum-v1", ["random"], 1, data)
    with pytest.raises(ConfigError, match="discrete"):
        registry.get("crr").resolve({"env": "Pendulum-v1", "data": data, "advantage_type": "expectation"})


def test_bc_evaluates_box_actions_at_env_scale(tmp_path) -> None:
    from trainables.rl.bc import BC_DEFAULTS, build_bc_config
    from trainables.rl.crr import CRR_DEFAULTS, build_crr_config

    data = str(tmp_path / "pendulum")
    record_dataset("Pendulum-v1", ["random"], 1, data)
    # BC fits the dataset's env-scale actions; CRR's policy acts in [-1, 1] and RLlib unsquashes its actions.
    bc = build_bc_config({**BC_DEFAULTS, "env": "Pendulum-v1", "data": data})
    assert bc.normalize_actions is False and bc.clip_actions is True
    assert build_crr_config({**CRR_DEFAULTS, "env": "Pendulum-v1", "data": data}).normalize_actions is True


def test_rllib_config_validates_too() -> None:
    from trainables.rl.crr import CRRConfig

    for bad in ({"beta": 0.0}, {"weight_type": "x"}, {"max_weight": -1.0}, {"advantage_type": "x"}):
        with pytest.raises(ValueError):
            CRRConfig().environment("CartPole-v1").training(**bad).validate()


# ---- datasets -----------------------------------------------------------------------------------------------------


def test_record_writes_rllib_columns_and_stats(tiny_cartpole: str) -> None:
    stats = json.load(open(os.path.join(tiny_cartpole, "dataset.json")))
    assert stats["env"] == "CartPole-v1" and stats["overall"]["episodes"] == 6
    assert set(stats["policies"]) == {"random", "random@eps=1.0,episodes=2"}
    info = inspect_dataset(tiny_cartpole, "CartPole-v1")
    assert not info.episodes_format and info.num_rows == stats["overall"]["rows"]
    per_policy_rows = sum(p["rows"] for p in stats["policies"].values())
    assert per_policy_rows == info.num_rows
    # CartPole pays +1 per step: the returns add up to the rows
    assert stats["overall"]["return_mean"] * stats["overall"]["episodes"] == pytest.approx(info.num_rows)


def test_missing_or_mismatched_dataset_is_one_clear_error(tiny_cartpole: str, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(ConfigError, match="does not exist"):
        inspect_dataset(str(tmp_path / "nowhere"), "CartPole-v1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .parquet"):
        inspect_dataset(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"x": [1, 2], "y": [0.1, 0.2]}), str(tmp_path / "other" / "a.parquet"))
    with pytest.raises(ConfigError, match="missing column"):
        inspect_dataset(str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="recorded in CartPole-v1"):
        inspect_dataset(tiny_cartpole, "Pendulum-v1")
    (tmp_path / "nostats").mkdir()  # without dataset.json the first transition's shapes are checked
    shutil.copy(os.path.join(tiny_cartpole, "transitions.parquet"), tmp_path / "nostats")
    inspect_dataset(str(tmp_path / "nostats"), "CartPole-v1")
    with pytest.raises(ConfigError, match="observations of shape"):
        inspect_dataset(str(tmp_path / "nostats"), "Acrobot-v1")
    with pytest.raises(ConfigError, match="data="):  # a space file may leave data to the command line; train may not
        registry.get("bc").train(registry.get("bc").resolve({}), LocalContext())


def test_policy_specs() -> None:
    assert parse_policy("checkpoint:/a/b@eps=0.3").eps == 0.3
    assert parse_policy("random@episodes=7").episodes == 7
    for bad in ("greedy", "checkpoint:", "random@eps=2", "random@temp=1", "random@episodes=x"):
        with pytest.raises(ConfigError):
            parse_policy(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        find_module_dir("/no/such/checkpoint")


# ---- RLlib: one iteration, end to end ------------------------------------------------------------------------------


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


@pytest.mark.parametrize("env_id, policy_dist", [("CartPole-v1", "tanh_gaussian"), ("Pendulum-v1", "tanh_gaussian"),
                                                 ("Pendulum-v1", "gaussian")])
def test_one_iteration_changes_policy_and_critic(ray_address: str, tmp_path, env_id: str, policy_dist: str) -> None:
    from trainables.rl.crr import CRR_DEFAULTS, build_crr_config

    data = str(tmp_path / "data")
    record_dataset(env_id, ["random"], 2, data, seed=1)
    config = {**CRR_DEFAULTS, "env": env_id, "data": data, "batch_size": 32, "updates_per_iteration": 3,
              "hiddens": [16], "policy_dist": policy_dist, "target_update_frequency": 2, "evaluation_episodes": 1}
    algo = build_crr_config(config).evaluation(evaluation_interval=None).build_algo()
    try:
        module = algo.learner_group._learner.module["default_policy"]
        before = {name: _params(getattr(module, name)) for name in ("pi", "qf", "qf_twin", "qf_target")}
        result = algo.train()
        after = {name: _params(getattr(module, name)) for name in before}
        for name in ("pi", "qf", "qf_twin", "qf_target"):  # the target was copied at gradient step 2
            assert not torch.equal(before[name], after[name]), f"{name} did not change"
        learner = result["learners"]["default_policy"]
        assert math.isfinite(learner["policy_loss"]) and math.isfinite(learner["qf_loss"])
    finally:
        algo.stop()


def test_crr_end_to_end_records_trains_evaluates_and_resumes(ray_address: str, tmp_path) -> None:
    data = str(tmp_path / "mixed")
    record_dataset("CartPole-v1", ["random", "random@episodes=3"], 5, data, seed=3)
    spec = registry.get("crr")
    config = spec.resolve({"data": data, "batch_size": 64, "updates_per_iteration": 5, "train_rows": 600,
                           "hiddens": [32], "evaluation_episodes": 2, "weight_type": "binary"})
    ckpt_root = str(tmp_path / "ckpt")
    ctx = LocalContext(checkpoint_root=ckpt_root)
    spec.train(config, ctx)
    steps = [r["env_steps"] for r in ctx.results]  # rows trained (a small dataset's epochs end in partial batches)
    assert steps[-1] >= 600 and all(s < 600 for s in steps[:-1]) and steps == sorted(steps)
    assert all(math.isfinite(r["eval_return_mean"]) and r["eval_episodes"] >= 2 for r in ctx.results)
    assert "learner/qf_loss" in ctx.results[-1] and "learner/policy_loss" in ctx.results[-1]
    latest = ctx._latest
    assert json.load(open(os.path.join(latest, "trainable.json")))["trainable"] == "crr"

    # The checkpoint (our layout, <ckpt>/algorithm) is a behaviour policy for the recorder.
    stats = record_dataset("CartPole-v1", [f"checkpoint:{latest}@eps=0.5"], 2, str(tmp_path / "from_ckpt"))
    assert stats["overall"]["episodes"] == 2
    assert find_module_dir(ckpt_root).startswith(latest)  # a directory of checkpoints: the newest one
    play = registry.tool("play")  # the shared RL tool plays CRR checkpoints too (greedy, seeded: replays agree)
    assert play(latest, episodes=2, seed=4) == play(latest, episodes=2, seed=4)

    # A new context on the same root resumes: the row counter continues, one more iteration reaches the budget.
    resumed = LocalContext(checkpoint_root=ckpt_root)
    spec.train({**config, "train_rows": 900}, resumed)
    resumed_steps = [r["env_steps"] for r in resumed.results]
    assert resumed_steps[0] > steps[-1] and resumed_steps[-1] >= 900 and len(resumed_steps) < len(steps) + 2


def test_bc_baseline_on_the_same_data(ray_address: str, tiny_cartpole: str) -> None:
    spec = registry.get("bc")
    config = spec.resolve({"data": tiny_cartpole, "batch_size": 32, "updates_per_iteration": 4, "train_rows": 100,
                           "hiddens": [32], "evaluation_episodes": 2})
    ctx = LocalContext()
    spec.train(config, ctx)
    assert ctx.results and ctx.results[-1]["env_steps"] >= 100
    assert math.isfinite(ctx.results[-1]["eval_return_mean"]) and "learner/policy_loss" in ctx.results[-1]
