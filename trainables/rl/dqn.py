"""DQN (Mnih et al. 2013, "Playing Atari with Deep Reinforcement Learning") on RLlib's new API stack.

The agent: raw pixels -> :mod:`trainables.rl.atari` preprocessing (grayscale 84x84, 4 stacked frames, k-frame skip,
clipped rewards) -> the paper's network as a custom RLModule (:class:`PaperDQNModule`) -> epsilon-greedy actions;
transitions go to a replay memory, and every ``train_freq`` agent steps one minibatch of 32 is replayed with
RMSProp on the one-step Q-learning loss

    y_j = r_j                                   if s_{j+1} is terminal
    y_j = r_j + gamma * max_a' Q(s_{j+1}, a'; theta^-)   otherwise
    L(theta) = E_j[(y_j - Q(s_j, a_j; theta))^2]

where theta^- = theta (2013: no target network; RLlib's target copy is refreshed after every update) or a copy
refreshed every ``target_update_steps`` agent steps (2015 Nature, ``target_network=True``).

Deviations RLlib forces or that we chose, each also noted at the line that sets it:

- RLlib's DQN is Rainbow-flavoured by default: double Q, dueling heads, prioritized replay, Huber loss and gradient
  clipping at 40 are all ON by default. We turn them OFF (``double_q=False``, ``dueling=False``, ``n_step=1``,
  ``num_atoms=1``, ``noisy=False``, uniform ``EpisodeReplayBuffer``, ``grad_clip=None``, ``td_error_loss_fn="mse"``);
  ``loss="huber"`` gives the 2015 error clipping.
- RLlib's learner requires a target network (``TargetNetworkAPI``). "No target network" is realised as a target copy
  synced after every gradient step (``target_network_update_freq=0``), which computes the same y_j as theta.
- "Frames" are emulator frames: one agent step is ``frame_skip`` frames (4; 3 for Space Invaders), so the budget
  ``frames`` is ``ceil(frames / frame_skip)`` agent steps, and the epsilon schedule's 1M frames are 250k agent
  steps. RLlib counts env steps (= agent steps) everywhere; ``env_frames`` reports steps x frame_skip. The budget is
  checked after each ``train()`` call, so a run may overshoot by at most one iteration.
- Updates: one minibatch every ``train_freq`` = 4 agent steps (2015's "update frequency"); 2013's Algorithm 1
  updates every step (``train_freq=1``). RLlib alternates "sample ``rollout_fragment_length`` steps" with "replay
  N minibatches"; :func:`build_algo_config` sets ``training_intensity`` so that N = fragment / train_freq.
- Epsilon decays by the env runner's estimate of the global step count (RLlib: its own count x number of runners).
- Evaluation acts epsilon-greedily with epsilon = 0.05 (the paper's protocol) on unclipped rewards (the game score),
  in a separate evaluation env runner; training returns (``episode_return_mean``) are sums of CLIPPED rewards.
- The replay memory is NOT saved in checkpoints by default (``checkpoint_replay=False``; RLlib's
  ``store_buffer_in_checkpoints``): a resumed trial starts with an empty memory and learns from the first new
  minibatch. Saving it would copy up to GBs per iteration.
- Replay: RLlib's episode buffer stores each step's stacked (4, 84, 84) uint8 observation: 28,224 B per transition,
  about 28 GB for the paper's 1M transitions (the paper's frame ring stores each frame once: ~7 GB). Default
  ``replay_capacity`` = 100,000 transitions (~2.8 GB), so a trial fits a laptop; set 1,000,000 where RAM allows.
- Optimizer: the paper's RMSProp (lr 2.5e-4, decay 0.95, eps 0.01 as in the 2015 paper; 2013 gives no values),
  approximated by torch's centered RMSprop. ``optimizer="adam"`` is offered for quick vector tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.context import Context
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.rl import atari
from trainables.rl.common import check_env_id, placement, run_algorithm

NETWORKS = ("auto", "mnih2013", "nature2015", "mlp")

DQN_DEFAULTS: dict[str, Any] = {
    **atari.ENV_DEFAULTS,  # env, frame_skip, frame_stack, screen_size, noop_max, sticky_actions, clip_rewards
    "frames": 10_000_000,  # emulator frames of training (the paper: 10M)
    "network": "auto",  # auto: mnih2013 for image observations, mlp for vector ones
    "mlp_hiddens": [64, 64],  # the MLP encoder for vector observations (CartPole)
    "lr": 2.5e-4,
    "optimizer": "rmsprop",  # rmsprop (paper) | adam
    "rmsprop_alpha": 0.95,  # squared-gradient decay (2015 paper)
    "rmsprop_eps": 0.01,  # min squared gradient (2015 paper)
    "gamma": 0.99,
    "batch_size": 32,
    "train_freq": 4,  # agent steps per minibatch update
    "replay_capacity": 100_000,  # transitions; the paper's 1M costs ~28 GB in RLlib's buffer (module docstring)
    "learning_starts": 50_000,  # agent steps of experience before the first update (2015: 50k)
    "epsilon_start": 1.0,
    "epsilon_end": 0.1,
    "epsilon_frames": 1_000_000,  # frames over which epsilon decays linearly (the paper: the first 1M frames)
    "target_network": False,  # False: the 2013 paper; True: the 2015 Nature paper's fixed target
    "target_update_steps": 10_000,  # agent steps between target syncs when target_network is on
    "loss": "mse",  # mse: the 2013 paper; huber: 2015's error clipping to [-1, 1]
    "rollout_fragment_length": 64,  # agent steps per sampling round, then fragment/train_freq minibatches (speed)
    "iteration_steps": 10_000,  # agent steps per train() call = per reported result and checkpoint
    "eval_interval": 5,  # evaluate every N iterations (0: never)
    "eval_episodes": 5,
    "eval_epsilon": 0.05,
    "num_env_runners": 0,  # 0: sample in the trial's own process
    "num_envs_per_env_runner": 1,
    "num_gpus": 0.0,  # GPUs of the (one, local) learner
    "checkpoint_replay": False,
    "seed": 0,
}


# ---- the paper's formulas ---------------------------------------------------------------------------------------


def agent_steps(config: Mapping[str, Any], frames: int) -> int:
    """Emulator frames -> agent steps (one step = ``frame_skip`` frames; 1 for non-Atari tasks)."""
    return math.ceil(frames / atari.frame_skip_for(config["env"], config["frame_skip"]))


def epsilon_at(config: Mapping[str, Any], step: float) -> float:
    """The paper's exploration rate after ``step`` agent steps: linear from eps_start to eps_end over the first
    ``epsilon_frames`` frames, fixed after."""
    T = max(agent_steps(config, config["epsilon_frames"]), 1)
    e0, e1 = config["epsilon_start"], config["epsilon_end"]
    return e1 + (e0 - e1) * max(0.0, 1.0 - step / T)  # eps(t) = max(eps_end, eps_start - (eps_start - eps_end) t/T)


# ---- the network -------------------------------------------------------------------------------------------------


def build_q_network(network: str, obs_shape: tuple[int, ...], num_actions: int,
                    mlp_hiddens: list[int] | tuple[int, ...] = (64, 64)) -> nn.Sequential:
    """The Q-network: an observation batch -> one Q-value per action.

    mnih2013 (the 2013 paper): 84x84x4 -> conv 16 8x8 stride 4 -> conv 32 4x4 stride 2 -> fc 256 -> |A|, ReLU.
    nature2015: conv 32 8x8/4 -> conv 64 4x4/2 -> conv 64 3x3/1 -> fc 512 -> |A|. mlp: vector observations.
    Image inputs are uint8 (C, H, W) and scaled to [0, 1] inside the network, so replay stays uint8.
    """
    if network == "auto":
        network = "mlp" if len(obs_shape) == 1 else "mnih2013"
    if network == "mlp":
        if len(obs_shape) != 1:
            raise ConfigError(f"network=mlp wants vector observations, got shape {obs_shape}")
        layers: list[nn.Module] = []
        width = obs_shape[0]
        for hidden in mlp_hiddens:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, num_actions))
    if len(obs_shape) != 3:
        raise ConfigError(f"network={network} wants image observations (C, H, W), got shape {obs_shape}")
    channels = obs_shape[0]
    if network == "mnih2013":
        convs = [nn.Conv2d(channels, 16, 8, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU()]
        hidden = 256
    elif network == "nature2015":
        convs = [nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                 nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        hidden = 512
    else:
        raise ConfigError(f"network={network!r} is not one of {', '.join(map(repr, NETWORKS))}")
    trunk = nn.Sequential(ScaleUint8(), *convs, nn.Flatten())
    with torch.no_grad():
        flat = trunk(torch.zeros(1, *obs_shape, dtype=torch.uint8)).shape[1]  # 2013 on 84x84: 32 * 9 * 9 = 2592
    return nn.Sequential(*trunk, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))


class ScaleUint8(nn.Module):
    """uint8 pixels -> float in [0, 1] (the network's first op, so frames stay uint8 until here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


# ---- the RLModule ------------------------------------------------------------------------------------------------

def _rl_module_class() -> type:
    """:class:`PaperDQNModule`, defined on first use so that importing this module (the registry imports every
    trainable) does not import RLlib."""
    global PaperDQNModule
    if "PaperDQNModule" in globals():
        return PaperDQNModule

    from ray.rllib.core.columns import Columns
    from ray.rllib.core.learner.utils import make_target_network
    from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
    from ray.rllib.utils.schedules.scheduler import Scheduler

    QF_PREDS, QF_TARGET_NEXT_PREDS = "qf_preds", "qf_target_next_preds"  # the keys DQNTorchLearner reads

    class _PaperDQNModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
        """The paper's Q-network as an RLModule: epsilon-greedy exploration, greedy inference, a target copy.

        model_config: ``network``, ``mlp_hiddens``, ``epsilon`` (RLlib schedule [[t, value], ...] in agent steps).
        """

        framework = "torch"

        def setup(self) -> None:
            self.q_net = build_q_network(self.model_config.get("network", "auto"), self.observation_space.shape,
                                         self.action_space.n, self.model_config.get("mlp_hiddens", (64, 64)))
            self.epsilon_schedule = Scheduler(fixed_value_or_schedule=self.model_config["epsilon"],
                                              framework="torch")

        # -- acting
        def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            return {Columns.ACTIONS: self.q_net(batch[Columns.OBS]).argmax(dim=-1)}  # a = argmax_a Q(s, a)

        def _forward_exploration(self, batch: dict[str, Any], t: int, **kwargs: Any) -> dict[str, Any]:
            greedy = self.q_net(batch[Columns.OBS]).argmax(dim=-1)
            self.epsilon_schedule.update(t)
            epsilon = self.epsilon_schedule.get_current_value()
            # with probability epsilon a uniformly random action, else the greedy one
            random = torch.randint(0, self.action_space.n, greedy.shape, device=greedy.device)
            explore = torch.rand(greedy.shape, device=greedy.device) < epsilon
            return {Columns.ACTIONS: torch.where(explore, random, greedy)}

        # -- learning (the DQN learner computes the loss from these)
        def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            return {
                QF_PREDS: self.q_net(batch[Columns.OBS]),  # Q(s_j, . ; theta)
                QF_TARGET_NEXT_PREDS: self._target_q_net(batch[Columns.NEXT_OBS]),  # Q(s_{j+1}, . ; theta^-)
            }

        def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
            return {QF_PREDS: self.q_net(batch[Columns.OBS])}

        def make_target_networks(self) -> None:
            self._target_q_net = make_target_network(self.q_net)

        def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
            return [(self.q_net, self._target_q_net)]

        def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
            return {QF_PREDS: self._target_q_net(batch[Columns.OBS])}

        def get_non_inference_attributes(self) -> list[str]:
            return ["_target_q_net"]  # env runners act with q_net only; weight syncs skip the target copy

    _PaperDQNModule.__name__ = _PaperDQNModule.__qualname__ = "PaperDQNModule"
    _PaperDQNModule.__module__ = __name__
    PaperDQNModule = _PaperDQNModule  # a module-level name, so Ray pickles the class by reference
    return PaperDQNModule


def _learner_class() -> type:
    """The DQN torch learner with the paper's RMSProp instead of RLlib's Adam (defined on first use)."""
    global PaperDQNLearner
    if "PaperDQNLearner" in globals():
        return PaperDQNLearner
    from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner

    class _PaperDQNLearner(DQNTorchLearner):
        def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
            params = self.get_parameters(self._module[module_id])
            settings = config.learner_config_dict
            if settings.get("optimizer", "rmsprop") == "rmsprop":
                # centered RMSprop with a large eps approximates DeepMind's RMSProp (decay 0.95, min sq grad 0.01)
                optimizer = torch.optim.RMSprop(params, lr=config.lr, alpha=settings["rmsprop_alpha"],
                                                eps=settings["rmsprop_eps"], centered=True)
            else:
                optimizer = torch.optim.Adam(params, lr=config.lr)
            self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params,
                                    lr_or_lr_schedule=config.lr)

    _PaperDQNLearner.__name__ = _PaperDQNLearner.__qualname__ = "PaperDQNLearner"
    _PaperDQNLearner.__module__ = __name__
    PaperDQNLearner = _PaperDQNLearner
    return PaperDQNLearner


def __getattr__(name: str) -> type:
    """``trainables.rl.dqn.PaperDQNModule`` / ``PaperDQNLearner`` resolve on first access (Ray unpickles them by
    name in env runner processes)."""
    if name == "PaperDQNModule":
        return _rl_module_class()
    if name == "PaperDQNLearner":
        return _learner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- flat config -> RLlib ----------------------------------------------------------------------------------------


def build_algo_config(config: Mapping[str, Any]) -> Any:
    """The trainable's flat config as an RLlib ``DQNConfig`` (new API stack), the paper's settings made explicit."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    env_name = atari.register()
    env_config = atari.env_config_from(config)
    runners = config["num_env_runners"]
    envs = config["num_envs_per_env_runner"]
    fragment = config["rollout_fragment_length"]
    # RLlib replays round(training_intensity * fragment * envs * (runners + 1) / batch) minibatches per sampling round,
    # but a round samples fragment * envs * max(runners, 1) steps; choose the intensity that gives one update per
    # train_freq sampled steps.
    intensity = config["batch_size"] * max(runners, 1) / (config["train_freq"] * (runners + 1))
    epsilon_steps = agent_steps(config, config["epsilon_frames"])
    budget = agent_steps(config, config["frames"])
    return (
        DQNConfig()
        .environment(env_name, env_config=env_config)
        .framework("torch")
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs, rollout_fragment_length=fragment,
                     explore=True)
        .learners(learner_class=_learner_class(), num_learners=0, num_gpus_per_learner=config["num_gpus"],
                  learner_config_dict={k: config[k] for k in ("optimizer", "rmsprop_alpha", "rmsprop_eps")})
        .rl_module(rl_module_spec=RLModuleSpec(
            module_class=_rl_module_class(),
            # RLlib adds the config's `epsilon` (below; the evaluation config's for evaluation runners)
            model_config={"network": config["network"], "mlp_hiddens": list(config["mlp_hiddens"])},
        ))
        .training(
            lr=config["lr"],
            gamma=config["gamma"],
            train_batch_size_per_learner=config["batch_size"],
            training_intensity=intensity,
            num_steps_sampled_before_learning_starts=config["learning_starts"],
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": config["replay_capacity"]},  # uniform
            store_buffer_in_checkpoints=config["checkpoint_replay"],
            # off = theta^- refreshed after every update (the 2013 paper); on = every C agent steps (2015)
            target_network_update_freq=config["target_update_steps"] if config["target_network"] else 0,
            tau=1.0,  # a hard copy, not Polyak averaging
            td_error_loss_fn=config["loss"],  # mse: (y - Q)^2 (2013); huber: clipped error (2015)
            grad_clip=None,  # RLlib's default 40 is not in the paper
            # RLlib's Rainbow defaults, all off for the paper's agent:
            double_q=False, dueling=False, n_step=1, num_atoms=1, noisy=False,
            # [[t, eps]]: linear from (0, eps_start) to (T, eps_end), constant after T (agent steps)
            epsilon=[[0, config["epsilon_start"]], [epsilon_steps, config["epsilon_end"]]],
        )
        .reporting(min_sample_timesteps_per_iteration=min(config["iteration_steps"], budget),
                   min_time_s_per_iteration=0, metrics_num_episodes_for_smoothing=20)
        .evaluation(
            evaluation_interval=config["eval_interval"] or None,
            evaluation_duration=config["eval_episodes"], evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            # epsilon = 0.05 and the game's own score (no clipping), as in the paper's evaluation
            evaluation_config={"explore": True, "epsilon": [[0, config["eval_epsilon"]]],
                               "env_config": {**env_config, "clip_rewards": False}},
        )
        .debugging(seed=config["seed"])
    )


HELD_OUT_STATES = 256


def held_out_states(config: Mapping[str, Any], n: int = HELD_OUT_STATES) -> np.ndarray:
    """The paper's fixed set of states for tracking Q (Sec. 5.1): ``n`` states a uniformly random policy visits,
    collected once before training."""
    env = atari.make_env(atari.env_config_from(config))
    env.action_space.seed(config["seed"])
    obs, _ = env.reset(seed=config["seed"])
    states = []
    for _ in range(n):
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(states)


def extra_metrics(config: Mapping[str, Any]) -> Any:
    """``epsilon`` (the schedule at the current step) and ``q_mean``: the paper's "average maximum predicted
    action-value" over a fixed held-out set of states (its Figure 2), mean_s max_a Q(s, a; theta), computed with the
    learner's current weights every iteration (also before learning starts). The learner's own ``qf_mean`` (mean
    Q(s_j, a_j) of the last minibatch) is reported as ``learner/qf_mean`` once updates run."""
    states: list[torch.Tensor] = []

    def metrics(algo: Any, result: Mapping[str, Any]) -> dict[str, float]:
        steps = (result.get("env_runners", {}) or {}).get("num_env_steps_sampled_lifetime", 0) or 0
        if not states:
            states.append(torch.as_tensor(held_out_states(config)))
        learner = getattr(algo.learner_group, "_learner", None)  # the local learner (num_learners=0)
        module = learner.module["default_policy"] if learner is not None else algo.get_module()
        device = next(module.q_net.parameters()).device
        with torch.no_grad():
            q_max = module.q_net(states[0].to(device)).max(dim=-1).values  # max_a Q(s, a) per held-out state
        return {"epsilon": epsilon_at(config, float(steps)), "q_mean": float(q_max.mean())}

    return metrics


# ---- validation, placement, registration -------------------------------------------------------------------------


def validate_dqn(config: dict[str, Any]) -> None:
    """Out-of-range values raise :class:`ConfigError` with one line."""
    check_range(config, "lr", 0.0, low_open=True)
    check_range(config, "replay_capacity", config["batch_size"])  # at least one minibatch
    for key in ("epsilon_start", "epsilon_end", "eval_epsilon", "gamma", "sticky_actions"):
        check_range(config, key, 0.0, 1.0)
    for key in ("frames", "epsilon_frames", "batch_size", "train_freq", "target_update_steps",
                "rollout_fragment_length", "iteration_steps", "eval_episodes", "num_envs_per_env_runner",
                "frame_stack"):
        check_range(config, key, 1)
    for key in ("learning_starts", "eval_interval", "num_env_runners", "num_gpus", "frame_skip", "noop_max"):
        check_range(config, key, 0)
    check_choice(config, "network", NETWORKS)
    check_choice(config, "optimizer", ("rmsprop", "adam"))
    check_choice(config, "loss", ("mse", "huber"))
    if any(not isinstance(h, int) or h < 1 for h in config["mlp_hiddens"]):
        raise ConfigError(f"mlp_hiddens={config['mlp_hiddens']!r} must be a list of positive ints")
    env_id = atari.resolve_env_id(config["env"])
    check_env_id(env_id)
    if config["network"] in ("mnih2013", "nature2015") and not env_id.startswith("ALE/"):
        raise ConfigError(f"network={config['network']} needs an Atari env (ALE/...), got env={config['env']!r}")
    if config["network"] == "mlp" and env_id.startswith("ALE/"):
        raise ConfigError(f"network=mlp needs vector observations, env={config['env']!r} gives images")


def dqn_placement(config: dict[str, Any]) -> list[dict[str, float]]:
    """Resource bundles of a DQN trial: the trial process (local learner, its GPUs) plus one per env runner."""
    return placement(build_algo_config(config))


def play(checkpoint_dir: str, episodes: int = 5, gif_path: str | None = None, seed: int = 0) -> list[float]:
    """Play ``episodes`` full games with a trained checkpoint (epsilon = eval_epsilon, unclipped score); returns the
    game returns. ``gif_path``: also write the first game's frames as an animated GIF."""
    import json
    import os

    from ray.rllib.core.rl_module.rl_module import RLModule

    from trainables.rl.common import ALGORITHM_SUBDIR, TRAINABLE_FILE

    with open(os.path.join(checkpoint_dir, TRAINABLE_FILE)) as handle:
        config = {**DQN_DEFAULTS, **json.load(handle)["config"]}
    module_dir = os.path.join(checkpoint_dir, ALGORITHM_SUBDIR, "learner_group", "learner", "rl_module",
                              "default_policy")
    if not os.path.isdir(module_dir):
        raise ConfigError(f"no DQN module under {checkpoint_dir} (expected {module_dir})")
    _rl_module_class()
    module = RLModule.from_checkpoint(module_dir)
    env = atari.make_env({**atari.env_config_from(config), "clip_rewards": False},
                         render_mode="rgb_array" if gif_path else None)
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    frames: list[np.ndarray] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            if rng.random() < config["eval_epsilon"]:
                action = int(env.action_space.sample())
            else:
                with torch.no_grad():
                    q = module.q_net(torch.as_tensor(obs)[None])
                action = int(q.argmax(dim=-1)[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
            if gif_path and episode == 0 and len(frames) < 5000:
                frames.append(_render(env, obs))
        returns.append(total)
    env.close()
    if gif_path and frames:
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(gif_path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return returns


def _render(env: Any, obs: np.ndarray) -> np.ndarray:
    """The env's RGB frame; for vector tasks whose renderer needs pygame (not a dependency), a drawing of the state:
    CartPole's cart and pole, else one bar per observation value."""
    import gymnasium as gym

    try:
        return env.render()
    except gym.error.DependencyNotInstalled:
        pass
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (240, 160), "white")
    draw = ImageDraw.Draw(image)
    if obs.shape == (4,):  # CartPole: x in [-2.4, 2.4], pole angle theta (radians, 0 = upright)
        x = 120 + float(obs[0]) / 2.4 * 100
        draw.line([(0, 120), (240, 120)], fill="black")
        draw.rectangle([x - 15, 110, x + 15, 125], fill="black")
        tip = (x + 70 * np.sin(float(obs[2])), 110 - 70 * np.cos(float(obs[2])))
        draw.line([(x, 110), tip], fill=(200, 120, 60), width=5)
    else:
        width = 240 / max(len(obs), 1)
        for i, value in enumerate(np.clip(obs, -1, 1)):
            draw.rectangle([i * width + 2, 80 - 70 * max(value, 0), (i + 1) * width - 2, 80 - 70 * min(value, 0)],
                           fill="steelblue")
    return np.asarray(image)


@register("dqn", defaults=DQN_DEFAULTS, validate=validate_dqn, placement=dqn_placement, tools={"play": play})
def train_dqn(config: dict[str, Any], ctx: Context) -> None:
    """DQN (Mnih et al. 2013) on RLlib: Atari preprocessing, the paper's network, replay, epsilon-greedy."""
    run_algorithm(
        "dqn", config, ctx, build_algo_config(config),
        budget_steps=agent_steps(config, config["frames"]),
        frames_per_step=atari.frame_skip_for(config["env"], config["frame_skip"]),
        extra_metrics=extra_metrics(config),
    )
