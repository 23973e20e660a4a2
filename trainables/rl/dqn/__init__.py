"""DQN (Mnih et al. 2013, "Playing Atari with Deep Reinforcement Learning") on RLlib's new API stack.

The agent: raw pixels -> :mod:`trainables.rl.atari` preprocessing (grayscale 84x84, 4 stacked frames, k-frame skip,
clipped rewards) -> the paper's network -> epsilon-greedy actions; transitions go to a replay memory, and every
``train_freq`` agent steps one minibatch of 32 is replayed with RMSProp on the one-step Q-learning loss

    y_j = r_j + gamma (1 - done_j) max_a' Q(phi_{j+1}, a'; theta^-)
    L(theta) = E_j[(y_j - Q(phi_j, a_j; theta))^2]

where theta^- = theta held fixed in the gradient (2013) or a copy refreshed every ``target_update_steps`` agent
steps (2015 Nature, ``target_network=True``). One file per job:

- :mod:`~trainables.rl.dqn.network`: the Q-networks (2013, 2015, an MLP for vector tasks), plain PyTorch;
- :mod:`~trainables.rl.dqn.module`: the network as an RLModule (epsilon-greedy acting, target copy);
- :mod:`~trainables.rl.dqn.learner`: the loss above, beside Algorithm 1's update, and the paper's RMSProp;
- :mod:`~trainables.rl.dqn.algorithm`: Algorithm 1's loop (``PaperDQN.training_step``) over the frame-ring replay;
- :mod:`~trainables.rl.dqn.config`: defaults, validation, the translation into RLlib's ``DQNConfig`` (and the list
  of deviations from the paper);
- :mod:`~trainables.rl.dqn.trainable`: the registered ``dqn`` trainable; ``play`` is :mod:`trainables.rl.play`.

Importing this package registers ``dqn`` without importing RLlib; RLlib loads when an algorithm is built.
"""

from __future__ import annotations

import importlib

from trainables.rl.dqn.config import DQN_DEFAULTS, agent_steps, build_algo_config, epsilon_at, validate_dqn
from trainables.rl.dqn.network import NETWORKS, build_q_network
from trainables.rl.dqn.trainable import held_out_states, train_dqn
from trainables.rl.play import play

__all__ = [
    "DQN_DEFAULTS",
    "NETWORKS",
    "agent_steps",
    "build_algo_config",
    "build_q_network",
    "epsilon_at",
    "held_out_states",
    "play",
    "train_dqn",
    "validate_dqn",
]

# The RLlib classes, found on first access: checkpoints written before this package was split pickled them as
# ``trainables.rl.dqn.<name>``, and Ray unpickles them by that name.
_RLLIB_CLASSES = {"PaperDQNModule": "module", "PaperDQNLearner": "learner", "PaperDQN": "algorithm"}


def __getattr__(name: str) -> type:
    if name in _RLLIB_CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_RLLIB_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
