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
    "env": "CartPole-v1",
    "lr": 1e-3,
    "optimizer": "adam",
    "loss": "huber",
    "learning_starts": 500,
    "epsilon_frames": 3000,
    "epsilon_end": 0.02,
    "target_network": True,
    "target_update_steps": 500,
    "replay_capacity": 50_000,
    "iteration_steps": 1000,
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
    obs, *_ = env.step(0)
    assert obs.shape == (4, 84, 84)
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


# ---- the replay memory (a ring of single frames) -------------------------------------------------------------------


def _counter_chunks(steps: int, chunk: int, episode_id: str, start: int = 0) -> list[dict[str, Any]]:
    """Observations of atari.FrameStack over the counter env, cut into chunks as RLlib's env runner returns them
    (each chunk's first observation is the previous chunk's last); the action of step t is t (to find phi_t)."""
    env = atari.FrameStack(_Counter(), k=4)
    observations = [env.reset()[0]]
    for _ in range(steps):
        observations.append(env.step(0)[0])
    observations = np.stack(observations)
    return [
        {
            "episode_id": episode_id,
            "observations": observations[t : t + chunk + 1],
            "actions": np.arange(start + t, start + min(t + chunk, steps)),
            "rewards": np.ones(min(chunk, steps - t)),
            "terminated": t + chunk >= steps,
            "truncated": False,
        }
        for t in range(0, steps, chunk)
    ], observations


def test_frame_replay_rebuilds_the_stacks_phi_t_and_phi_t1_exactly() -> None:
    from trainables.rl.frame_replay import FrameReplay

    memory = FrameReplay(1000, (4, 84, 84), np.uint8, stacked=True, seed=0)
    a_chunks, a_obs = _counter_chunks(10, 4, "a")  # an episode of 10 steps in chunks of 4, 4, 2
    b_chunks, b_obs = _counter_chunks(7, 3, "b", start=100)  # a second one, interleaved with the first
    for chunk in (a_chunks[0], b_chunks[0], a_chunks[1], a_chunks[2], b_chunks[1], b_chunks[2]):
        memory.add_chunk(**chunk)
    assert len(memory) == 17
    batch = memory.sample(500)
    assert batch["obs"].shape == (500, 4, 84, 84) and batch["obs"].dtype == np.uint8
    seen = set()
    for obs, next_obs, action, terminated in zip(
        batch["obs"], batch["new_obs"], batch["actions"], batch["terminateds"], strict=True
    ):
        source, t = (b_obs, action - 100) if action >= 100 else (a_obs, action)
        assert (obs == source[t]).all() and (next_obs == source[t + 1]).all()  # the env's own phi_t, phi_{t+1}
        assert terminated == (t == len(source) - 2)  # only the episode's last transition is terminal
        seen.add(int(action))
    assert seen == set(range(10)) | set(range(100, 107))  # uniform over all 17 transitions
    # storage: one frame per step, plus the 4 frames of each segment's first observation; 4 segments: 2 episode
    # starts and 2 chunks that continue their episode after the other one wrote in between
    assert memory.size == 17 + 4 * 4


def test_frame_replay_keeps_the_newest_transitions_and_intact_histories_when_full() -> None:
    from trainables.rl.frame_replay import FrameReplay

    memory = FrameReplay(20, (4, 84, 84), np.uint8, stacked=True, seed=1)
    chunks, observations = _counter_chunks(60, 8, "long")
    for chunk in chunks:
        memory.add_chunk(**chunk)
    batch = memory.sample(400)
    actions = batch["actions"]
    assert actions.min() >= 60 - 20 and actions.max() == 59  # only the most recent ~N transitions remain
    for obs, next_obs, t in zip(batch["obs"], batch["new_obs"], actions, strict=True):
        assert (obs == observations[t]).all() and (next_obs == observations[t + 1]).all()
    assert memory.frames.nbytes == 20 * 84 * 84  # one 84x84 uint8 frame per transition: 7,056 B, not 28,224


def test_frame_replay_vector_observations_and_state_round_trip() -> None:
    from trainables.rl.frame_replay import FrameReplay

    memory = FrameReplay(100, (4,), np.float32, stacked=False, seed=2)
    observations = np.arange(24, dtype=np.float32).reshape(6, 4)
    memory.add_chunk("e", observations, np.arange(5), np.zeros(5), terminated=False, truncated=True)
    batch = memory.sample(50)
    assert batch["obs"].shape == (50, 4) and (batch["new_obs"] == observations[batch["actions"] + 1]).all()
    assert batch["truncateds"][batch["actions"] == 4].all() and not batch["terminateds"].any()
    restored = FrameReplay(100, (4,), np.float32, stacked=False, seed=3)
    restored.set_state(memory.get_state())
    assert len(restored) == 5 and all((restored.sample(8)[k] == memory.sample(8)[k]).all() for k in batch)


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
        (4, 64),
        (64, 64),
        (64, 2),
    ]


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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("epsilon_end", 1.5),
        ("epsilon_start", -0.1),
        ("eval_epsilon", 2.0),
        ("frames", 0),
        ("env", "ALE/NoSuchGame-v5"),
        ("env", "NoSuchEnv-v0"),
        ("network", "resnet"),
        ("network", "mlp"),
        ("optimizer", "sgd"),
        ("gamma", 1.5),
        ("grad_clip", -1.0),
        ("lr_end", -1e-4),
        ("target_tau", 0.0),
        ("target_tau", 1.5),
        ("final_eval_episodes", 0),
        ("replay_capacity", 100),
    ],
)
def test_bad_values_are_one_line_config_errors(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(**{key: value})
    assert "\n" not in str(info.value)


def test_mismatched_network_and_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Atari"):
        resolve(env="CartPole-v1", network="mnih2013")
    with pytest.raises(ConfigError, match="eval_interval"):  # keep_best selects by evaluations
        resolve(env="CartPole-v1", keep_best=True, eval_interval=0)


def test_evaluation_uses_epsilon_005_and_unclipped_scores(ray_address: str) -> None:
    from trainables.rl.dqn import build_algo_config

    algo = build_algo_config(resolve(**CARTPOLE, eval_interval=1)).build_algo()
    try:
        assert float(algo.eval_env_runner.module.epsilon_schedule.get_current_value()) == pytest.approx(0.05)
        assert algo.eval_env_runner.config.env_config["clip_rewards"] is False
        assert algo.env_runner.config.env_config["clip_rewards"] is True
        config = algo.config
        assert (config.double_q, config.dueling, config.n_step, config.num_atoms) == (False, False, 1, 1)
        from trainables.rl.frame_replay import FrameReplay

        assert algo.local_replay_buffer is None and isinstance(algo.frame_replay, FrameReplay)  # the frame ring
        assert algo.frame_replay.capacity == 50_000 and algo.frame_replay.frames.shape == (50_000, 4)
        assert config.training_intensity == 32 / 4  # one minibatch of 32 per 4 sampled steps
    finally:
        algo.stop()


# ---- the loss through the real learner -----------------------------------------------------------------------------

# Five hand-built CartPole transitions; the 2nd and 4th end their episode (terminated), the 5th is cut by the time
# limit (truncated, not terminal: it bootstraps).
HAND_REWARDS = [1.0, -1.0, 0.5, 2.0, 0.0]
HAND_TERMINATEDS = [False, True, False, True, False]


def _hand_batch() -> dict[str, torch.Tensor]:
    from ray.rllib.core.columns import Columns

    g = torch.Generator().manual_seed(3)
    return {
        Columns.OBS: torch.randn(5, 4, generator=g),
        Columns.NEXT_OBS: torch.randn(5, 4, generator=g),
        Columns.ACTIONS: torch.tensor([0, 1, 1, 0, 1]),
        Columns.REWARDS: torch.tensor(HAND_REWARDS),
        Columns.TERMINATEDS: torch.tensor(HAND_TERMINATEDS),
        Columns.TRUNCATEDS: torch.tensor([False, False, False, False, True]),
    }


def _paper_learner(**overrides: Any) -> Any:
    """PaperDQNLearner built as RLlib builds it (from the trainable's DQNConfig), its target copy made different from
    theta so that a loss reading the wrong network shows."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from trainables.rl.dqn import build_algo_config
    from trainables.rl.dqn.learner import PaperDQNLearner

    torch.manual_seed(0)
    spaces = {DEFAULT_MODULE_ID: (gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2))}
    learner = build_algo_config(resolve(env="CartPole-v1", **overrides)).build_learner(spaces=spaces)
    assert type(learner) is PaperDQNLearner
    module = learner.module[DEFAULT_MODULE_ID]
    with torch.no_grad():
        for p in module._target_q_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return learner


def _plain_loss(q_net: torch.nn.Module, target_net: torch.nn.Module, batch: dict, gamma: float, loss: str,
                double_q: bool) -> torch.Tensor:
    """y = r + gamma (1 - done) max_a' Q_target(s', a') and the loss on (y - Q(s, a)), in plain PyTorch."""
    s, s_next = batch["obs"], batch["new_obs"]
    r, done = torch.tensor(HAND_REWARDS), torch.tensor(HAND_TERMINATEDS, dtype=torch.float32)
    with torch.no_grad():
        if double_q:  # a' = argmax Q(s', .; theta), valued by theta^-
            a_next = q_net(s_next).argmax(dim=1)
            next_value = target_net(s_next)[torch.arange(5), a_next]
        else:
            next_value = target_net(s_next).max(dim=1).values
        y = r + gamma * (1.0 - done) * next_value
    q = q_net(s)[torch.arange(5), batch["actions"]]
    d = y - q
    if loss == "mse":
        return (d**2).mean()
    return torch.where(d.abs() <= 1.0, 0.5 * d**2, d.abs() - 0.5).mean()  # Huber, delta 1


@pytest.mark.parametrize(
    ("target_network", "loss", "double_q"),
    [(False, "mse", False), (True, "mse", False), (True, "huber", False), (True, "mse", True)],
    ids=["2013", "2015-target", "2015-huber", "double-q"],
)
def test_paper_dqn_learner_loss_matches_plain_pytorch(target_network: bool, loss: str, double_q: bool) -> None:
    from ray.rllib.core import DEFAULT_MODULE_ID

    learner = _paper_learner(target_network=target_network, loss=loss, double_q=double_q, gamma=0.9)
    module = learner.module[DEFAULT_MODULE_ID]
    batch = _hand_batch()
    got = learner.compute_loss_for_module(
        module_id=DEFAULT_MODULE_ID,
        config=learner.config.get_config_for_module(DEFAULT_MODULE_ID),
        batch=batch,
        fwd_out=module.forward_train(batch),
    ).detach()
    # 2013: theta^- is theta itself (held fixed in the gradient); 2015: the target copy
    target_net = module._target_q_net if target_network else module.q_net
    expected = _plain_loss(module.q_net, target_net, batch, 0.9, loss, double_q).detach()
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # the batch can tell the formulas apart: without the terminal mask, or bootstrapping from the other network,
    # the loss would differ
    other = module.q_net if target_network else module._target_q_net
    wrong_network = _plain_loss(module.q_net, other, batch, 0.9, loss, double_q).detach()
    assert float(expected) != pytest.approx(float(wrong_network))
    unmasked = {**batch, "terminateds": torch.zeros(5, dtype=torch.bool)}
    assert float(got) != pytest.approx(float(learner.compute_loss_for_module(
        module_id=DEFAULT_MODULE_ID, config=learner.config.get_config_for_module(DEFAULT_MODULE_ID),
        batch=unmasked, fwd_out=module.forward_train(unmasked)).detach()))


def test_paper_dqn_learner_update_is_one_rmsprop_step_on_the_plain_loss() -> None:
    """learner.update (the call PaperDQN.training_step makes) = one step of the paper's RMSProp on the plain loss."""
    import copy

    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    learner = _paper_learner(target_network=True, loss="mse", gamma=0.9, lr=0.01)
    module = learner.module[DEFAULT_MODULE_ID]
    batch = _hand_batch()
    q_net, target_net = copy.deepcopy(module.q_net), copy.deepcopy(module._target_q_net)
    optimizer = torch.optim.RMSprop(q_net.parameters(), lr=0.01, alpha=0.95, eps=0.01, centered=True)
    optimizer.zero_grad()
    _plain_loss(q_net, target_net, batch, 0.9, "mse", False).backward()
    optimizer.step()

    columns = {k: v.numpy() for k, v in batch.items()}
    learner.update(batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=5), minibatch_size=5,
                   num_epochs=1, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 1})
    for name, expected in q_net.state_dict().items():
        assert torch.allclose(module.q_net.state_dict()[name], expected, atol=1e-6), name


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
    assert play(second._latest, episodes=2, seed=0) == returns  # seeded: a replay scores the same
    from PIL import Image

    with Image.open(gif) as image:  # CartPole pays +1 per step: the first game's frames, 40 ms per step
        durations = []  # (Pillow merges identical consecutive frames and adds up their durations)
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"])
    assert sum(durations) == 40 * returns[0]


def test_checkpoint_replay_saves_and_restores_the_replay_memory(ray_address: str, tmp_path: Any) -> None:
    from trainables.rl.dqn import build_algo_config

    torch.set_num_threads(1)
    config = resolve(
        **{**CARTPOLE, "learning_starts": 64, "iteration_steps": 256, "eval_interval": 0, "replay_capacity": 2000}
    )
    algos = []
    try:
        for keep in (True, False):
            algo = build_algo_config({**config, "checkpoint_replay": keep}).build_algo()
            algos.append(algo)
            algo.train()
            stored = len(algo.frame_replay)
            assert 256 <= stored < 256 + 64
            algo.save_to_path(str(tmp_path / str(keep)))
            fresh = build_algo_config({**config, "checkpoint_replay": keep}).build_algo()
            algos.append(fresh)
            fresh.restore_from_path(str(tmp_path / str(keep)))
            assert len(fresh.frame_replay) == (stored if keep else 0)  # the default starts with an empty memory
            if keep:
                assert (fresh.frame_replay.sample(8)["obs"].shape == (8, 4)) and fresh.train()
    finally:
        for algo in algos:
            algo.stop()


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_atari_pipeline_runs_end_to_end(ray_address: str, tmp_path: Any, game: str) -> None:
    """A few hundred frames through train(): preprocessing, replay, updates, evaluation, checkpoint, play."""
    torch.set_num_threads(1)
    spec = registry.get("dqn")
    config = spec.resolve(
        {
            "env": game,
            "frames": 1024,
            "learning_starts": 64,
            "iteration_steps": 128,
            "rollout_fragment_length": 32,
            "eval_interval": 2,
            "eval_episodes": 1,
            "replay_capacity": 1000,
        }
    )
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(config, ctx)
    last = ctx.results[-1]
    assert last["env_steps"] >= 256 and last["env_frames"] == 4 * last["env_steps"]
    assert math.isfinite(last["learner/qf_loss"]) and math.isfinite(last["q_mean"])
    evaluated = [r for r in ctx.results if r.get("eval_age") == 0.0]
    assert [r["eval_episodes"] for r in evaluated] == [1.0] * (len(ctx.results) // 2), "evaluation every 2nd result"

    gif = tmp_path / "play.gif"
    returns = play(ctx._latest, episodes=1, gif_path=str(gif) if game == "Pong" else None, seed=1)
    assert len(returns) == 1
    if game == "Pong":
        assert gif.stat().st_size > 0


def test_cartpole_learns(ray_address: str) -> None:
    """Fails if the agent does not learn: its best evaluation (10 episodes at eps 0.05) over 10k steps must beat a
    random policy's ~22 by far, and that checkpoint (keep_best) must keep more than twice random play's score on 5
    fresh episodes. The best, not the last: one-step DQN with these quick settings oscillates between evaluations
    (measured: 88.5 at 8k steps in one run, 190 in another), so a single final evaluation made this test flaky."""
    torch.set_num_threads(1)
    spec = registry.get("dqn")
    ctx = LocalContext()
    spec.train(
        spec.resolve(
            {
                **CARTPOLE,
                "frames": 10000,
                "eval_interval": 2,
                "eval_episodes": 10,
                "keep_best": True,
                "final_eval_episodes": 5,
            }
        ),
        ctx,
    )
    *training, selected = ctx.results  # keep_best: the last result is the best checkpoint on 5 fresh episodes
    evaluated = [r["eval_return_mean"] for r in training if r.get("eval_age") == 0.0]
    assert len(evaluated) == 5 and max(evaluated) >= 100, f"eval returns {evaluated}; random policy ~22"
    assert selected["selected_eval_return_mean"] == max(evaluated) and selected["eval_episodes"] == 5
    assert selected["eval_return_mean"] >= 50, f"best checkpoint on fresh episodes: {selected['eval_return_mean']}"
