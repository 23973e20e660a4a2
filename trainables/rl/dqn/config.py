"""The ``dqn`` trainable's flat config: defaults, the paper's step and epsilon formulas, validation, and the
translation into RLlib's ``DQNConfig`` with the paper's settings made explicit.

Deviations RLlib forces or that we chose, each also noted at the line that sets it:

- The loss is ours (:mod:`trainables.rl.dqn.learner`, beside Algorithm 1); of RLlib's DQN settings it reads
  ``gamma``, ``double_q`` and ``td_error_loss_fn`` (``mse``: the 2013 loss; ``huber``: the 2015 error clipping).
  RLlib's Rainbow defaults (double Q, dueling heads, n-step, distributional heads, noisy nets, prioritized replay,
  gradient clipping at 40) are all set OFF here so that nothing in RLlib's machinery acts on them.
- RLlib's learner requires a target network (``TargetNetworkAPI``). With ``target_network=False`` the module keeps
  the (unused) copy but computes Q(s_{j+1}, . ) with theta under ``no_grad``: the same y_j as the 2013 paper.
- Replay: our :class:`~trainables.rl.frame_replay.FrameReplay`, not RLlib's ``EpisodeReplayBuffer`` (which stores
  each step's whole 4-frame stack, 28,224 B, and builds an episode object per sampled transition). Each frame is
  stored once: 7,056 B per transition, 7.1 GB for the paper's N = 1M (the default ``replay_capacity``; memory is
  only resident once written). Sampling is uniform with replacement; the learner gets the columns its loss reads
  (obs, new_obs, actions, rewards, terminateds), so no learner connector runs.
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

from trainables.registry import ConfigError, check_choice, check_range
from trainables.rl import atari
from trainables.rl.common import check_env_id
from trainables.rl.dqn.network import NETWORKS

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


def build_algo_config(config: Mapping[str, Any]) -> Any:
    """The trainable's flat config as an RLlib ``DQNConfig`` (new API stack), the paper's settings made explicit."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    # RLlib (and our classes built on it) load only when an algorithm is built, not when the trainable registers
    from trainables.rl.dqn.algorithm import PaperDQN
    from trainables.rl.dqn.learner import PaperDQNLearner
    from trainables.rl.dqn.module import PaperDQNModule

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
        DQNConfig(algo_class=PaperDQN)
        .environment(env_name, env_config=env_config)
        # RLlib 2.60 checks every gradient tensor for nan/inf twice per step unless this is True (then it steps
        # unchecked, as the paper's loop does): 16 isfinite() calls per update, ~9% of an Atari step here
        .framework("torch", torch_skip_nan_gradients=True)
        .env_runners(
            num_env_runners=runners, num_envs_per_env_runner=envs, rollout_fragment_length=fragment, explore=True
        )
        .learners(
            learner_class=PaperDQNLearner,
            num_learners=0,
            num_gpus_per_learner=config["num_gpus"],
            learner_config_dict={k: config[k] for k in ("optimizer", "rmsprop_alpha", "rmsprop_eps")},
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=PaperDQNModule,
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
            td_error_loss_fn=config["loss"],  # PaperDQNLearner: mse (y - Q)^2 (2013); huber (2015)
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
    check_choice(config, "loss", ("mse", "huber"))  # learner.LOSSES
    if any(not isinstance(h, int) or h < 1 for h in config["mlp_hiddens"]):
        raise ConfigError(f"mlp_hiddens={config['mlp_hiddens']!r} must be a list of positive ints")
    env_id = atari.resolve_env_id(config["env"])
    check_env_id(env_id)
    if config["network"] in ("mnih2013", "nature2015") and not env_id.startswith("ALE/"):
        raise ConfigError(f"network={config['network']} needs an Atari env (ALE/...), got env={config['env']!r}")
    if config["network"] == "mlp" and env_id.startswith("ALE/"):
        raise ConfigError(f"network=mlp needs vector observations, env={config['env']!r} gives images")


