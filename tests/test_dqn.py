"""DQN (Mnih et al. 2013) on RLlib: preprocessing, network shapes, epsilon schedule, validation, checkpoint restore,
the Atari pipeline end to end, and a CartPole learning check that fails when the agent does not learn."""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from trainables import registry
from trainables.context import LocalContext
from trainables.registry import ConfigError
from trainables.rl import atari
from trainables.rl.dqn import build_q_network, epsilon_at, play

# A CartPole setting that learns in ~10k steps on one core (tuned for speed; the Atari defaults are the paper's).
CARTPOLE = {
    "env": "CartPole-v1", "lr": 1e-3, "optimizer": "adam", "loss": "huber", "learning_starts": 500,
    "epsilon_frames": 3000, "epsilon_end": 0.02, "target_network": True, "target_update_steps": 500,
    "replay_capacity": 50_000, "iteration_steps": 1000,
}


def resolve(**overrides: Any) -> dict[str, Any]:
    return registry.get("dqn").resolve(overrides)


# ---- preprocessing ------------------------------------------------------------------------------------------------


class _Counter(gym.Env):
    """Synthetic env: frame t is an 84x84 uint8 image filled with t; reward t-2 (to see clipping)."""

    observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        return np.full((84, 84), self.t, np.uint8), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.full((84, 84), self.t, np.uint8), float(self.t - 2) * 3.5, False, False, {}


def test_frame_stack_is_oldest_first_uint8() -> None:
    env = atari.FrameStack(_Counter(), k=4)
    obs, _ = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert obs[:, 0, 0].tolist() == [0, 0, 0, 0]  # the first frame fills every slot
    for _ in range(5):
        obs, *_ = env.step(0)
    assert obs[:, 0, 0].tolist() == [2, 3, 4, 5]  # index 0 oldest, index 3 the newest frame
    assert env.observation_space.shape == (4, 84, 84)


def test_rewards_are_clipped_to_their_sign() -> None:
    env = atari.ClipReward(_Counter())
    env.reset()
    rewards = [env.step(0)[1] for _ in range(4)]  # raw: -3.5, 0, 3.5, 7
    assert rewards == [-1.0, 0.0, 1.0, 1.0]


def test_atari_preprocessing_shape_dtype_and_frame_skip() -> None:
    env = atari.make_env({"env": "Pong"})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    obs, reward, *_ = env.step(0)
    assert obs.shape == (4, 84, 84) and reward in (-1.0, 0.0, 1.0)
    assert env.unwrapped._frameskip == 1  # the wrapper skips, not ALE v5 (else 16 frames per step)
    assert atari.frame_skip_for("ALE/Pong-v5") == 4
    assert atari.frame_skip_for("Space Invaders") == 3
    assert atari.frame_skip_for("Breakout", 2) == 2
    assert atari.frame_skip_for("CartPole-v1") == 1
    env.close()


def test_the_papers_games_resolve_by_name() -> None:
    ids = {name: atari.resolve_env_id(name) for name in atari.PAPER_GAMES}
    assert ids["Q*bert"] == "ALE/Qbert-v5" and ids["Space Invaders"] == "ALE/SpaceInvaders-v5"
    assert ids["Beam Rider"] == "ALE/BeamRider-v5" and atari.resolve_env_id("breakout") == "ALE/Breakout-v5"
    for env_id in ids.values():
        resolve(env=env_id)  # known to gymnasium (validation makes the spec)


def test_vector_envs_pass_through() -> None:
    env = atari.make_env({"env": "CartPole-v1"})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs.dtype == np.float32


# ---- network, schedule, validation --------------------------------------------------------------------------------


def test_network_layer_shapes_match_the_paper() -> None:
    net = build_q_network("mnih2013", (4, 84, 84), 6)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(16, (8, 8), (4, 4)), (32, (4, 4), (2, 2))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(32 * 9 * 9, 256), (256, 6)]
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    assert convs[0](x.float()).shape == (2, 16, 20, 20) and net(x).shape == (2, 6)

    nature = build_q_network("nature2015", (4, 84, 84), 18)
    convs = [m for m in nature if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in nature if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 7 * 7, 512), (512, 18)]

    mlp = build_q_network("auto", (4,), 2, [64, 64])
    assert [(f.in_features, f.out_features) for f in mlp if isinstance(f, torch.nn.Linear)] == [
        (4, 64), (64, 64), (64, 2)]


def test_epsilon_schedule_is_linear_over_the_first_million_frames_then_fixed() -> None:
    config = resolve(env="ALE/Pong-v5")  # 1M frames = 250k agent steps at frame skip 4
    assert epsilon_at(config, 0) == pytest.approx(1.0)
    assert epsilon_at(config, 125_000) == pytest.approx(0.55)
    assert epsilon_at(config, 250_000) == pytest.approx(0.1)
    assert epsilon_at(config, 2_000_000) == pytest.approx(0.1)
    # RLlib's scheduler (what the env runner's module uses) follows the same line
    from ray.rllib.utils.schedules.scheduler import Scheduler

    schedule = Scheduler(fixed_value_or_schedule=[[0, 1.0], [250_000, 0.1]], framework="torch")
    for step in (0, 50_000, 125_000, 250_000, 400_000):
        assert float(schedule.update(step)) == pytest.approx(epsilon_at(config, step), abs=1e-6)


@pytest.mark.parametrize(("key", "value"), [
    ("lr", 0.0), ("lr", -1e-3), ("epsilon_end", 1.5), ("epsilon_start", -0.1), ("eval_epsilon", 2.0),
    ("frames", 0), ("env", "ALE/NoSuchGame-v5"), ("env", "NoSuchEnv-v0"), ("network", "resnet"),
    ("network", "mlp"), ("optimizer", "sgd"), ("gamma", 1.5),
])
def test_bad_values_are_one_line_config_errors(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(**{key: value})
    assert "\n" not in str(info.value)


def test_mismatched_network_and_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Atari"):
        resolve(env="CartPole-v1", network="mnih2013")


def test_evaluation_uses_epsilon_005_and_unclipped_scores(ray_address: str) -> None:
    from trainables.rl.dqn import build_algo_config

    algo = build_algo_config(resolve(**CARTPOLE, eval_interval=1)).build_algo()
    try:
        assert float(algo.eval_env_runner.module.epsilon_schedule.get_current_value()) == pytest.approx(0.05)
        assert algo.eval_env_runner.config.env_config["clip_rewards"] is False
        assert algo.env_runner.config.env_config["clip_rewards"] is True
        config = algo.config
        assert (config.double_q, config.dueling, config.n_step, config.num_atoms) == (False, False, 1, 1)
        assert config.replay_buffer_config["type"] == "EpisodeReplayBuffer"
    finally:
        algo.stop()


# ---- through the trainable ----------------------------------------------------------------------------------------


def test_checkpoint_restore_continues_the_step_count(ray_address: str, tmp_path: Any) -> None:
    torch.set_num_threads(1)
    spec = registry.get("dqn")
    small = {**CARTPOLE, "iteration_steps": 100, "learning_starts": 50, "eval_interval": 0}
    first = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({**small, "frames": 300}), first)
    steps_first = first.results[-1]["env_steps"]
    assert 300 <= steps_first < 300 + 2 * 64
    assert os.path.isfile(os.path.join(first._latest, "trainable.json"))

    second = LocalContext(checkpoint_root=str(tmp_path))  # a retried trial: same checkpoint root
    spec.train(spec.resolve({**small, "frames": 600}), second)
    assert second.results[0]["env_steps"] > steps_first  # continued, not restarted from 0
    assert 600 <= second.results[-1]["env_steps"] < 600 + 2 * 64
    assert len(second.results) < len(first.results) + 3
    assert all(math.isfinite(r["q_mean"]) for r in first.results + second.results)  # held-out max Q, every result

    gif = tmp_path / "cartpole.gif"  # no pygame: play draws the cart and pole itself
    returns = play(second._latest, episodes=2, gif_path=str(gif), seed=0)
    assert len(returns) == 2 and all(1 <= r <= 500 for r in returns) and gif.stat().st_size > 0


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_atari_pipeline_runs_end_to_end(ray_address: str, tmp_path: Any, game: str) -> None:
    """A few hundred frames through train(): preprocessing, replay, updates, evaluation, checkpoint, play."""
    torch.set_num_threads(1)
    spec = registry.get("dqn")
    config = spec.resolve({"env": game, "frames": 1024, "learning_starts": 64, "iteration_steps": 128,
                           "rollout_fragment_length": 32, "eval_interval": 2, "eval_episodes": 1,
                           "replay_capacity": 1000})
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(config, ctx)
    last = ctx.results[-1]
    assert last["env_steps"] >= 256 and last["env_frames"] == 4 * last["env_steps"]
    assert math.isfinite(last["learner/qf_loss"]) and math.isfinite(last["q_mean"])
    assert 0.99 < last["epsilon"] < 1.0 and last["frames_per_second"] > 0
    evaluated = [r for r in ctx.results if math.isfinite(r.get("eval_return_mean", math.nan))]
    assert evaluated, "no evaluation result"
    score = evaluated[-1]["eval_return_mean"]  # the game's score: Pong in [-21, 21], Breakout >= 0
    assert (-21 <= score <= 21) if game == "Pong" else score >= 0

    gif = tmp_path / "play.gif"
    returns = play(ctx._latest, episodes=1, gif_path=str(gif) if game == "Pong" else None, seed=1)
    assert len(returns) == 1 and (returns[0] >= -21 if game == "Pong" else returns[0] >= 0)
    if game == "Pong":
        assert gif.stat().st_size > 0


def test_cartpole_learns(ray_address: str) -> None:
    """Fails if the agent does not learn: its best evaluation (10 episodes at eps 0.05) over 10k steps must beat a
    random policy's ~22 by far. The best, not the last: one-step DQN on CartPole oscillates between evaluations
    (measured: 88.5 at 8k steps in one run, 190 in another), and RLlib's sampling is not reproducible across
    processes, so a single final evaluation made this test flaky."""
    torch.set_num_threads(1)
    spec = registry.get("dqn")
    ctx = LocalContext()
    spec.train(spec.resolve({**CARTPOLE, "frames": 10000, "eval_interval": 2, "eval_episodes": 10}), ctx)
    evaluated = [r["eval_return_mean"] for r in ctx.results if r.get("eval_age") == 0.0]
    assert len(evaluated) == 5 and max(evaluated) >= 100, f"eval returns {evaluated}; random policy ~22"
