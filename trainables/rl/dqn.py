"""DQN (Mnih et al. 2013, "Playing Atari with Deep Reinforcement Learning") on RLlib's new API stack.

The agent: raw pixels -> :mod:`trainables.rl.atari` preprocessing (grayscale 84x84, 4 stacked frames, k-frame skip,
clipped rewards) -> the paper's network as a custom RLModule (:class:`PaperDQNModule`) -> epsilon-greedy actions;
transitions go to a replay memory, and every ``train_freq`` agent steps one minibatch of 32 is replayed with
RMSProp on the one-step Q-learning loss

    y_j = r_j                                   if s_{j+1} is terminal
    y_j = r_j + gamma * max_a' Q(s_{j+1}, a'; theta^-)   otherwise
    L(theta) = E_j[(y_j - Q(s_j, a_j; theta))^2]

where theta^- = theta (2013: no target network; the module bootstraps from theta itself, held fixed in the
gradient) or a copy refreshed every ``target_update_steps`` agent steps (2015 Nature, ``target_network=True``).

The loop is Algorithm 1 (:class:`PaperDQN`, RLlib's DQN with its own ``training_step``): RLlib's env runners act,
the transitions go into the paper's replay memory D as a ring of single uint8 frames
(:mod:`trainables.rl.frame_replay`), and the round's minibatches go to RLlib's DQN learner as one ready batch.

Deviations RLlib forces or that we chose, each also noted at the line that sets it:

- RLlib's DQN is Rainbow-flavoured by default: double Q, dueling heads, prioritized replay, Huber loss and gradient
  clipping at 40 are all ON by default. We turn them OFF (``double_q=False``, ``dueling=False``, ``n_step=1``,
  ``num_atoms=1``, ``noisy=False``, uniform replay, ``grad_clip=None``, ``td_error_loss_fn="mse"``);
  ``loss="huber"`` gives the 2015 error clipping.
- RLlib's learner requires a target network (``TargetNetworkAPI``). With ``target_network=False`` the module keeps
  the (unused) copy but computes Q(s_{j+1}, . ) with theta under ``no_grad``: the same y_j as the 2013 paper.
- Replay: our :class:`~trainables.rl.frame_replay.FrameReplay`, not RLlib's ``EpisodeReplayBuffer`` (which stores
  each step's whole 4-frame stack, 28,224 B, and builds an episode object per sampled transition). Each frame is
  stored once: 7,056 B per transition, 7.1 GB for the paper's N = 1M (the default ``replay_capacity``; memory is
  only resident once written). Sampling is uniform with replacement; the learner gets the columns its loss reads
  (obs, new_obs, actions, rewards, terminateds, plus weights = 1 and n_step = 1), so no learner connector runs.
- "Frames" are emulator frames: one agent step is ``frame_skip`` frames (4; 3 for Space Invaders), so the budget
  ``frames`` is ``ceil(frames / frame_skip)`` agent steps, and the epsilon schedule's 1M frames are 250k agent
  steps. RLlib counts env steps (= agent steps) everywhere; ``env_frames`` reports steps x frame_skip. The budget is
  checked after each ``train()`` call, so a run may overshoot by at most one iteration.
- Updates: one minibatch every ``train_freq`` = 4 agent steps (2015's "update frequency"); 2013's Algorithm 1
  updates every step (``train_freq=1``). :class:`PaperDQN` alternates "act ``rollout_fragment_length`` steps" with
  "fragment / train_freq minibatch updates" (``training_intensity`` = batch_size / train_freq replayed transitions
  per sampled one; a fractional remainder carries over), so the env runner acts up to one fragment (64 steps) with
  the same theta where the paper updates in between.
- With ``target_network=True`` the copy is refreshed at the first learner call at least ``target_update_steps``
  sampled steps after the last one, i.e. up to one fragment late.
- Gradients are applied unchecked for nan/inf, as in the paper (RLlib checks each gradient tensor by default).
- Epsilon decays by the env runner's estimate of the global step count (RLlib: its own count x number of runners).
- Evaluation acts epsilon-greedily with epsilon = 0.05 (the paper's protocol) on unclipped rewards (the game score),
  in a separate evaluation env runner; training returns (``episode_return_mean``) are sums of CLIPPED rewards.
- The replay memory is NOT saved in checkpoints by default (``checkpoint_replay=False``): a resumed trial starts
  with an empty memory and learns from the first new minibatch. ``checkpoint_replay=True`` saves the written part
  of the ring with every checkpoint (up to 7 GB per iteration at N = 1M).
- Knobs that are not in the paper, all off by default and used by ``search_spaces/dqn_cartpole.yaml``:
  ``grad_clip`` (global-norm clipping), ``double_q``, ``lr_end`` (linear lr decay over the budget) and
  ``target_tau`` < 1 (Polyak target updates).
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
    "lr_end": 0.0,  # > 0: lr decays linearly to this over the budget (not in the paper); 0: constant lr
    "optimizer": "rmsprop",  # rmsprop (paper) | adam
    "rmsprop_alpha": 0.95,  # squared-gradient decay (2015 paper)
    "rmsprop_eps": 0.01,  # min squared gradient (2015 paper)
    "gamma": 0.99,
    "batch_size": 32,
    "train_freq": 4,  # agent steps per minibatch update
    "replay_capacity": 1_000_000,  # N frames ~ transitions (the paper's 1M: 7.1 GB of uint8 frames once filled)
    "learning_starts": 50_000,  # agent steps of experience before the first update (2015: 50k)
    "epsilon_start": 1.0,
    "epsilon_end": 0.1,
    "epsilon_frames": 1_000_000,  # frames over which epsilon decays linearly (the paper: the first 1M frames)
    "target_network": False,  # False: the 2013 paper; True: the 2015 Nature paper's fixed target
    "target_update_steps": 10_000,  # agent steps between target syncs when target_network is on
    "target_tau": 1.0,  # a sync sets theta^- <- tau theta + (1 - tau) theta^- (1: the 2015 hard copy)
    "loss": "mse",  # mse: the 2013 paper; huber: 2015's error clipping to [-1, 1]
    "grad_clip": 0.0,  # clip the gradient's global norm to this (0: off, the paper); not in the paper
    "double_q": False,  # van Hasselt et al. 2016: the target picks a' with theta, evaluates it with theta^-
    "rollout_fragment_length": 64,  # agent steps per sampling round, then fragment/train_freq minibatches (speed)
    "iteration_steps": 10_000,  # agent steps per train() call = per reported result and checkpoint
    "eval_interval": 5,  # evaluate every N iterations (0: never)
    "eval_episodes": 5,
    "eval_epsilon": 0.05,
    "num_env_runners": 0,  # 0: sample in the trial's own process
    "num_envs_per_env_runner": 1,
    "num_gpus": 0.0,  # GPUs of the (one, local) learner
    "checkpoint_replay": False,
    "keep_best": False,  # True: report the best-evaluated checkpoint, re-evaluated on fresh episodes, last
    "final_eval_episodes": 20,  # fresh episodes of that re-evaluation
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


def build_q_network(
    network: str, obs_shape: tuple[int, ...], num_actions: int, mlp_hiddens: list[int] | tuple[int, ...] = (64, 64)
) -> nn.Sequential:
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
        convs = [
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
        ]
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
    QF_NEXT_PREDS = "qf_next_preds"  # read only with double_q

    class _PaperDQNModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
        """The paper's Q-network as an RLModule: epsilon-greedy exploration, greedy inference, a target copy.

        model_config: ``network``, ``mlp_hiddens``, ``epsilon`` (RLlib schedule [[t, value], ...] in agent steps).
        """

        framework = "torch"

        def setup(self) -> None:
            self.q_net = build_q_network(
                self.model_config.get("network", "auto"),
                self.observation_space.shape,
                self.action_space.n,
                self.model_config.get("mlp_hiddens", (64, 64)),
            )
            self.epsilon_schedule = Scheduler(fixed_value_or_schedule=self.model_config["epsilon"], framework="torch")

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
            if self.model_config.get("target_network", True):
                next_q = self._target_q_net(batch[Columns.NEXT_OBS])  # Q(s_{j+1}, . ; theta^-), 2015
            else:
                with torch.no_grad():  # the 2013 paper: y_j bootstraps from theta itself, held fixed in the gradient
                    next_q = self.q_net(batch[Columns.NEXT_OBS])  # Q(s_{j+1}, . ; theta)
            out = {QF_PREDS: self.q_net(batch[Columns.OBS]), QF_TARGET_NEXT_PREDS: next_q}  # Q(s_j, . ; theta)
            if self.model_config.get("double_q", False):
                with torch.no_grad():  # double Q: a' = argmax_a' Q(s_{j+1}, a'; theta), valued by theta^-
                    out[QF_NEXT_PREDS] = self.q_net(batch[Columns.NEXT_OBS])
            return out

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
            # the initial lr; with a schedule [[t, lr], ...] RLlib's scheduler sets it before every update
            lr = config.lr[0][1] if isinstance(config.lr, list | tuple) else config.lr
            if settings.get("optimizer", "rmsprop") == "rmsprop":
                # centered RMSprop with a large eps approximates DeepMind's RMSProp (decay 0.95, min sq grad 0.01)
                optimizer = torch.optim.RMSprop(
                    params, lr=lr, alpha=settings["rmsprop_alpha"], eps=settings["rmsprop_eps"], centered=True
                )
            else:
                optimizer = torch.optim.Adam(params, lr=lr)
            self.register_optimizer(
                module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr
            )

    _PaperDQNLearner.__name__ = _PaperDQNLearner.__qualname__ = "PaperDQNLearner"
    _PaperDQNLearner.__module__ = __name__
    PaperDQNLearner = _PaperDQNLearner
    return PaperDQNLearner


REPLAY_STATE = "frame_replay"  # the replay memory's key in the algorithm state (only with checkpoint_replay)


def _algorithm_class() -> type:
    """RLlib's DQN with the paper's Algorithm 1 loop over a compact replay memory (defined on first use).

    Per round: act ``rollout_fragment_length`` steps epsilon-greedily (RLlib's env runners), store the transitions
    in D (:class:`~trainables.rl.frame_replay.FrameReplay`, each frame once), then one minibatch update of
    ``batch_size`` per ``train_freq`` sampled steps, all of the round's minibatches in ONE learner call (a batch of
    n x 32 split into n consecutive minibatches of 32, one gradient step each). RLlib's own loop replays through
    its episode buffer instead, which builds one episode object per sampled transition and runs the learner
    connector pipeline on them (profiled: 40% of an Atari step went to such bookkeeping).
    """
    global PaperDQN
    if "PaperDQN" in globals():
        return PaperDQN
    from ray.rllib.algorithms.dqn import DQN
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        ENV_RUNNER_SAMPLING_TIMER,
        LEARNER_RESULTS,
        LEARNER_UPDATE_TIMER,
        NUM_AGENT_STEPS_SAMPLED_LIFETIME,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
        REPLAY_BUFFER_ADD_DATA_TIMER,
        REPLAY_BUFFER_SAMPLE_TIMER,
        SYNCH_WORKER_WEIGHTS_TIMER,
        TD_ERROR_KEY,
        TIMERS,
    )

    from trainables.rl.frame_replay import FrameReplay

    class _PaperDQN(DQN):
        def setup(self, config: Any) -> None:
            super().setup(config)
            if self.config.n_step != 1:
                raise ValueError(f"the frame replay memory stores one-step transitions, got n_step={config.n_step}")
            obs_space = self.env_runner_group.get_spaces()[DEFAULT_MODULE_ID][0]
            image = len(obs_space.shape) == 3  # (k, H, W) frame stacks from atari.FrameStack
            self.frame_replay = FrameReplay(
                self.config.replay_buffer_config["capacity"],
                obs_space.shape,
                obs_space.dtype,
                stacked=image,
                seed=self.config.seed,
            )
            self._updates_owed = 0.0  # fractional minibatch updates carried to the next round

        def training_step(self) -> None:
            config = self.config
            batch_size = config.train_batch_size_per_learner
            # 1. act: select a_t epsilon-greedily, execute it, observe r_t and x_{t+1} (rollout_fragment_length steps)
            with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                episodes, runner_metrics = synchronous_parallel_sample(
                    worker_set=self.env_runner_group,
                    concat=True,
                    sample_timeout_s=config.sample_timeout_s,
                    _uses_new_env_runners=True,
                    _return_metrics=True,
                )
            self.metrics.aggregate(runner_metrics, key=ENV_RUNNER_RESULTS)
            # 2. store the transitions (phi_t, a_t, r_t, phi_{t+1}) in D
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
                sampled = self.frame_replay.add_episodes(episodes)
            steps = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
            if steps < config.num_steps_sampled_before_learning_starts or len(self.frame_replay) == 0:
                return
            # 3. one minibatch of 32 per train_freq sampled steps: training_intensity = batch_size / train_freq
            #    replayed transitions per sampled one
            self._updates_owed += sampled * config.training_intensity / batch_size
            updates = int(self._updates_owed)
            self._updates_owed -= updates
            if updates == 0:
                return
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
                columns = self.frame_replay.sample(updates * batch_size)  # random minibatches of transitions from D
                columns["weights"] = np.ones(updates * batch_size, np.float32)  # uniform replay: no IS weights
                columns["n_step"] = np.ones(updates * batch_size, np.float32)  # gamma ** 1 in the learner's y_j
                batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=updates * batch_size)
            # 4. gradient steps on (y_j - Q(phi_j, a_j; theta))^2, in the learner (the loss is RLlib's DQN loss)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                results = self.learner_group.update(
                    batch=batch,
                    minibatch_size=batch_size,
                    num_epochs=1,
                    shuffle_batch_per_epoch=False,
                    timesteps={
                        NUM_ENV_STEPS_SAMPLED_LIFETIME: steps,
                        NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                            (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}
                        ),
                    },
                )
                for result in results:  # per-transition TD errors are for prioritized replay; not logged
                    for module_results in result.values():
                        module_results.pop(TD_ERROR_KEY, None)
                self.metrics.aggregate(results, key=LEARNER_RESULTS)
            # 5. the env runners act with the new theta
            with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, policies={DEFAULT_MODULE_ID}, inference_only=True
                )

        # The memory goes into checkpoints only with store_buffer_in_checkpoints (checkpoint_replay); RLlib's new
        # stack saves no replay buffer at all.
        def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            state = super().get_state(*args, **kwargs)
            if self.config.store_buffer_in_checkpoints:
                state[REPLAY_STATE] = self.frame_replay.get_state()
            return state

        def set_state(self, state: dict[str, Any]) -> None:
            super().set_state(state)
            if REPLAY_STATE in state and self.config.store_buffer_in_checkpoints:
                self.frame_replay.set_state(state[REPLAY_STATE])

    _PaperDQN.__name__ = _PaperDQN.__qualname__ = "PaperDQN"
    _PaperDQN.__module__ = __name__
    PaperDQN = _PaperDQN
    return PaperDQN


def __getattr__(name: str) -> type:
    """``trainables.rl.dqn.PaperDQNModule`` / ``PaperDQNLearner`` / ``PaperDQN`` resolve on first access (Ray
    unpickles them by name in env runner processes and checkpoints)."""
    if name == "PaperDQNModule":
        return _rl_module_class()
    if name == "PaperDQNLearner":
        return _learner_class()
    if name == "PaperDQN":
        return _algorithm_class()
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
    # PaperDQN.training_step replays training_intensity transitions per sampled one: one minibatch per train_freq steps
    intensity = config["batch_size"] / config["train_freq"]
    epsilon_steps = agent_steps(config, config["epsilon_frames"])
    budget = agent_steps(config, config["frames"])
    return (
        DQNConfig(algo_class=_algorithm_class())
        .environment(env_name, env_config=env_config)
        # RLlib 2.60 checks every gradient tensor for nan/inf twice per step unless this is True (then it steps
        # unchecked, as the paper's loop does): 16 isfinite() calls per update, ~9% of an Atari step here
        .framework("torch", torch_skip_nan_gradients=True)
        .env_runners(
            num_env_runners=runners, num_envs_per_env_runner=envs, rollout_fragment_length=fragment, explore=True
        )
        .learners(
            learner_class=_learner_class(),
            num_learners=0,
            num_gpus_per_learner=config["num_gpus"],
            learner_config_dict={k: config[k] for k in ("optimizer", "rmsprop_alpha", "rmsprop_eps")},
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=_rl_module_class(),
                # RLlib adds the config's `epsilon` (below; the evaluation config's for evaluation runners)
                model_config={
                    "network": config["network"],
                    "mlp_hiddens": list(config["mlp_hiddens"]),
                    "target_network": config["target_network"],
                    "double_q": config["double_q"],
                },
            )
        )
        .training(
            # constant (the paper), or [[t, lr]] linear from lr at step 0 to lr_end at the budget's last step
            lr=[[0, config["lr"]], [budget, config["lr_end"]]] if config["lr_end"] > 0 else config["lr"],
            gamma=config["gamma"],
            train_batch_size_per_learner=config["batch_size"],
            training_intensity=intensity,
            num_steps_sampled_before_learning_starts=config["learning_starts"],
            # uniform replay of capacity N in PaperDQN's frame ring (RLlib's episode buffer is not built)
            replay_buffer_config={
                "type": "EpisodeReplayBuffer",
                "capacity": config["replay_capacity"],
                "no_local_replay_buffer": True,
            },
            store_buffer_in_checkpoints=config["checkpoint_replay"],
            # on: theta^- = theta copied every C agent steps (2015); off: the module bootstraps from theta itself
            # (2013) and the unused copy is refreshed after every learner call
            target_network_update_freq=config["target_update_steps"] if config["target_network"] else 0,
            tau=config["target_tau"],  # 1: a hard copy (2015); < 1: Polyak averaging (not in the papers)
            td_error_loss_fn=config["loss"],  # mse: (y - Q)^2 (2013); huber: clipped error (2015)
            grad_clip=config["grad_clip"] or None,  # off (the paper); RLlib's default 40 is not in the paper
            grad_clip_by="global_norm",
            # RLlib's Rainbow defaults, all off for the paper's agent (double Q only on request):
            double_q=config["double_q"],
            dueling=False,
            n_step=1,
            num_atoms=1,
            noisy=False,
            # [[t, eps]]: linear from (0, eps_start) to (T, eps_end), constant after T (agent steps)
            epsilon=[[0, config["epsilon_start"]], [epsilon_steps, config["epsilon_end"]]],
        )
        .reporting(
            min_sample_timesteps_per_iteration=min(config["iteration_steps"], budget),
            min_time_s_per_iteration=0,
            metrics_num_episodes_for_smoothing=20,
        )
        .evaluation(
            evaluation_interval=config["eval_interval"] or None,
            evaluation_duration=config["eval_episodes"],
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            # epsilon = 0.05 and the game's own score (no clipping), as in the paper's evaluation
            evaluation_config={
                "explore": True,
                "epsilon": [[0, config["eval_epsilon"]]],
                "env_config": {**env_config, "clip_rewards": False},
            },
        )
        .debugging(seed=config["seed"])
    )


HELD_OUT_STATES = 256
FRESH_EVAL_SEED = 10_000  # env seeds of keep_best's re-evaluation: none of training's or evaluation's


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
    check_range(config, "lr_end", 0.0)
    check_range(config, "replay_capacity", config["batch_size"])  # at least one minibatch
    check_range(config, "target_tau", 0.0, 1.0, low_open=True)
    for key in ("epsilon_start", "epsilon_end", "eval_epsilon", "gamma", "sticky_actions"):
        check_range(config, key, 0.0, 1.0)
    for key in (
        "frames",
        "epsilon_frames",
        "batch_size",
        "train_freq",
        "target_update_steps",
        "rollout_fragment_length",
        "iteration_steps",
        "eval_episodes",
        "num_envs_per_env_runner",
        "frame_stack",
        "final_eval_episodes",
    ):
        check_range(config, key, 1)
    for key in (
        "learning_starts",
        "eval_interval",
        "num_env_runners",
        "num_gpus",
        "frame_skip",
        "noop_max",
        "grad_clip",
    ):
        check_range(config, key, 0)
    if config["replay_capacity"] < 2 * (config["rollout_fragment_length"] + config["frame_stack"]):
        raise ConfigError(
            f"replay_capacity={config['replay_capacity']} must hold at least two sampling rounds: "
            f">= 2 * (rollout_fragment_length + frame_stack)"
        )
    if config["keep_best"] and not config["eval_interval"]:
        raise ConfigError("keep_best=True selects by evaluation: set eval_interval > 0")
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
    module_dir = os.path.join(
        checkpoint_dir, ALGORITHM_SUBDIR, "learner_group", "learner", "rl_module", "default_policy"
    )
    if not os.path.isdir(module_dir):
        raise ConfigError(f"no DQN module under {checkpoint_dir} (expected {module_dir})")
    _rl_module_class()
    module = RLModule.from_checkpoint(module_dir)
    env = atari.make_env(
        {**atari.env_config_from(config), "clip_rewards": False}, render_mode="rgb_array" if gif_path else None
    )
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    frames: list[np.ndarray] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            if rng.random() < config["eval_epsilon"]:
                action = int(rng.integers(env.action_space.n))  # from the seeded rng: a replay scores the same
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
            draw.rectangle(
                [i * width + 2, 80 - 70 * max(value, 0), (i + 1) * width - 2, 80 - 70 * min(value, 0)], fill="steelblue"
            )
    return np.asarray(image)


class _KeepBest(Context):
    """Passes every result on to ``inner`` and keeps a copy of the checkpoint whose fresh evaluation was the best."""

    def __init__(self, inner: Context) -> None:
        import tempfile

        self.inner, self.rank, self.world_size, self.device = inner, inner.rank, inner.world_size, inner.device
        self.best_dir = tempfile.mkdtemp(prefix="dqn_best_")
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import shutil

        fresh = metrics.get("eval_age") == 0.0 and math.isfinite(metrics.get("eval_return_mean", math.nan))
        if (
            fresh
            and checkpoint_dir
            and (self.best is None or metrics["eval_return_mean"] >= self.best["eval_return_mean"])
        ):  # >=: of equal scores the later, longer-trained one
            shutil.rmtree(self.best_dir)
            shutil.copytree(checkpoint_dir, self.best_dir)
            self.best = dict(metrics)
        self.last = dict(metrics)
        self.inner.report(metrics, checkpoint_dir)

    def restored_checkpoint(self) -> Any:
        return self.inner.restored_checkpoint()


@register("dqn", defaults=DQN_DEFAULTS, validate=validate_dqn, placement=dqn_placement, tools={"play": play})
def train_dqn(config: dict[str, Any], ctx: Context) -> None:
    """DQN (Mnih et al. 2013) on RLlib: Atari preprocessing, the paper's network, replay, epsilon-greedy.

    ``keep_best``: after the budget, the checkpoint with the best evaluation is re-evaluated on
    ``final_eval_episodes`` fresh episodes (new env seeds, epsilon = eval_epsilon, via :func:`play`), and that
    score and checkpoint are reported as the trial's last result (model selection on the evaluation episodes; the
    fresh re-evaluation keeps the reported score free of the selection's upward bias).
    """
    keeper = _KeepBest(ctx) if config["keep_best"] else None
    run_algorithm(
        "dqn",
        config,
        keeper or ctx,
        build_algo_config(config),
        budget_steps=agent_steps(config, config["frames"]),
        frames_per_step=atari.frame_skip_for(config["env"], config["frame_skip"]),
        extra_metrics=extra_metrics(config),
    )
    if keeper is not None and keeper.best is not None and keeper.last is not None:
        returns = play(keeper.best_dir, episodes=config["final_eval_episodes"], seed=FRESH_EVAL_SEED + config["seed"])
        ctx.report(
            {
                **keeper.last,
                "eval_return_mean": float(np.mean(returns)),
                "eval_return_min": float(np.min(returns)),
                "eval_return_max": float(np.max(returns)),
                "eval_episodes": float(len(returns)),
                "eval_age": 0.0,
                "selected_env_steps": keeper.best["env_steps"],  # where the reported checkpoint was taken
                "selected_eval_return_mean": keeper.best["eval_return_mean"],  # its (selection) evaluation
            },
            checkpoint_dir=keeper.best_dir,
        )
    if keeper is not None:
        import shutil

        shutil.rmtree(keeper.best_dir, ignore_errors=True)  # the report above took its own copy
