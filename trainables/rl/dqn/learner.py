"""The DQN learner: the paper's one-step Q-learning loss and its RMSProp, on RLlib's learner machinery.

Algorithm 1 of Mnih et al. (2013), the update step (the rest of the loop is :mod:`trainables.rl.dqn.algorithm`)::

    Sample random minibatch of transitions (phi_j, a_j, r_j, phi_{j+1}) from D
    Set y_j = r_j                                          for terminal phi_{j+1}
            = r_j + gamma max_a' Q(phi_{j+1}, a'; theta)   for non-terminal phi_{j+1}
    Perform a gradient descent step on (y_j - Q(phi_j, a_j; theta))^2

written as one line with the terminal mask: ``y_j = r_j + gamma (1 - done_j) max_a' Q(phi_{j+1}, a'; theta^-)``,
where theta^- is theta held fixed in the gradient (2013) or the target copy (2015, ``target_network=True``). The
module (:mod:`trainables.rl.dqn.module`) supplies ``Q(phi_j, .; theta)`` and ``Q(phi_{j+1}, .; theta^-)``.
``done`` is *terminated*: a time-limit truncation is not terminal and bootstraps.

RLlib's ``DQNLearner`` contributes the target-copy refresh (every ``target_network_update_freq`` sampled steps,
Polyak ``tau``); RLlib's own DQN loss (Rainbow: n-step, distributional, importance weights) is not used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.dqn.dqn_learner import DQNLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID

from trainables.rl.dqn.module import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS

LOSSES = ("mse", "huber")


def q_learning_target(
    rewards: torch.Tensor,
    terminateds: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """y_j = r_j + gamma (1 - done_j) max_a' Q(phi_{j+1}, a'; theta^-), without gradient.

    ``next_q_online`` (double Q, van Hasselt et al. 2016): a' = argmax_a' Q(phi_{j+1}, a'; theta), valued by
    theta^- instead of the max.
    """
    with torch.no_grad():
        if next_q_online is None:
            next_value = next_q_target.max(dim=-1).values  # max_a' Q(phi_{j+1}, a'; theta^-)
        else:
            best = next_q_online.argmax(dim=-1, keepdim=True)  # a' = argmax_a' Q(phi_{j+1}, a'; theta)
            next_value = next_q_target.gather(-1, best).squeeze(-1)  # Q(phi_{j+1}, a'; theta^-)
        done = terminateds.float()
        return rewards.float() + gamma * (1.0 - done) * next_value  # y_j; done: y_j = r_j


def td_loss(q_taken: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """mse: mean_j (y_j - Q(phi_j, a_j; theta))^2 (2013); huber: the 2015 paper's error clipping, whose gradient
    is the TD error clipped to [-1, 1] (0.5 d^2 for |d| <= 1, |d| - 0.5 beyond)."""
    if loss == "mse":
        return ((y - q_taken) ** 2).mean()
    if loss == "huber":
        return F.huber_loss(q_taken, y, reduction="mean", delta=1.0)
    raise ValueError(f"loss={loss!r} is not one of {LOSSES}")


class PaperDQNLearner(DQNLearner, TorchLearner):
    """The paper's loss (above) and optimizer; ``learner_config_dict``: ``optimizer``, ``rmsprop_alpha``,
    ``rmsprop_eps``. Logs ``qf_loss``, ``qf_mean``/``qf_min``/``qf_max`` (of Q(phi_j, a_j)) and
    ``td_error_mean`` (mean |y_j - Q(phi_j, a_j)|) per update."""

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
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        actions = batch[Columns.ACTIONS].long()
        q_taken = fwd_out[QF_PREDS].gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # Q(phi_j, a_j; theta)
        y = q_learning_target(
            batch[Columns.REWARDS],
            batch[Columns.TERMINATEDS],
            fwd_out[QF_TARGET_NEXT_PREDS],
            config.gamma,
            fwd_out[QF_NEXT_PREDS] if config.double_q else None,
        )
        loss = td_loss(q_taken, y, config.td_error_loss_fn)  # (y_j - Q(phi_j, a_j; theta))^2, or Huber
        with torch.no_grad():
            self.metrics.log_dict(
                {
                    "qf_loss": loss,
                    "qf_mean": q_taken.mean(),
                    "qf_max": q_taken.max(),
                    "qf_min": q_taken.min(),
                    "td_error_mean": (y - q_taken).abs().mean(),
                },
                key=module_id,
                window=1,  # this update's values, not a running mean
            )
        return loss
