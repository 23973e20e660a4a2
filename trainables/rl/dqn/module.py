"""The paper's Q-network as an RLlib RLModule: epsilon-greedy exploration, greedy inference, a target copy.

The learner (:mod:`trainables.rl.dqn.learner`) computes the loss from what :meth:`PaperDQNModule._forward_train`
returns: ``Q(s_j, . ; theta)`` and ``Q(s_{j+1}, . ; theta^-)``.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.schedules.scheduler import Scheduler
from torch import nn

from trainables.rl.dqn.network import build_q_network

QF_PREDS = "qf_preds"  # Q(s_j, . ; theta)
QF_TARGET_NEXT_PREDS = "qf_target_next_preds"  # Q(s_{j+1}, . ; theta^-)
QF_NEXT_PREDS = "qf_next_preds"  # Q(s_{j+1}, . ; theta), only with double_q (it picks a')


class PaperDQNModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    """model_config: ``network``, ``mlp_hiddens``, ``target_network``, ``double_q`` and ``epsilon`` (RLlib adds the
    config's schedule [[t, value], ...] in agent steps; the evaluation config's for evaluation runners)."""

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

    # -- learning
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if self.model_config.get("target_network", True):
            next_q = self._target_q_net(batch[Columns.NEXT_OBS])  # Q(s_{j+1}, . ; theta^-), 2015
        else:
            with torch.no_grad():  # the 2013 paper: y_j bootstraps from theta itself, held fixed in the gradient
                next_q = self.q_net(batch[Columns.NEXT_OBS])  # Q(s_{j+1}, . ; theta)
        out = {QF_PREDS: self.q_net(batch[Columns.OBS]), QF_TARGET_NEXT_PREDS: next_q}
        if self.model_config.get("double_q", False):
            with torch.no_grad():  # double Q: a' = argmax_a' Q(s_{j+1}, a'; theta), valued by theta^-
                out[QF_NEXT_PREDS] = self.q_net(batch[Columns.NEXT_OBS])
        return out

    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self.q_net(batch[Columns.OBS])}

    # -- TargetNetworkAPI: RLlib's DQN learner requires a target copy (unused by the loss when target_network=False)
    def make_target_networks(self) -> None:
        self._target_q_net = make_target_network(self.q_net)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.q_net, self._target_q_net)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self._target_q_net(batch[Columns.OBS])}

    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_q_net"]  # env runners act with q_net only; weight syncs skip the target copy
