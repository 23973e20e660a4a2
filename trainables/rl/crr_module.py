"""CRR's RLModule: a policy network and one or two Q networks (with target copies), for discrete or Box actions.

Discrete actions: the policy outputs categorical logits and each Q network outputs ``Q(s, .)`` for all actions.
Box actions: the policy is a Gaussian or a tanh-squashed Gaussian over actions normalized to [-1, 1] (RLlib's env
runner maps them back to the env's bounds, ``normalize_actions=True``), and each Q network takes ``[s, a]``.

The learner (:mod:`trainables.rl.crr_learner`) asks this module for ``Q(s, a)``, ``Q(s, .)`` and the targets'
values directly, so all of CRR's math stays in one place.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchCategorical,
    TorchDiagGaussian,
    TorchDistribution,
    TorchSquashedGaussian,
)
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import TargetNetworkAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

NEXT_ACTION_DIST_INPUTS = "next_action_dist_inputs"
POLICY_DISTS = ("gaussian", "tanh_gaussian")
# Bounds of a Gaussian policy's log standard deviation (keeps exp(log_std) finite on out-of-distribution states).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CRRTorchRLModule(TorchRLModule, TargetNetworkAPI):
    """``pi`` (policy), ``qf`` and optionally ``qf_twin`` with target copies; model_config keys: ``hiddens``,
    ``twin_q``, ``policy_dist`` (Box actions only: ``gaussian`` or ``tanh_gaussian``)."""

    def setup(self) -> None:
        hiddens = list(self.model_config.get("hiddens", [256, 256]))
        self.twin_q = bool(self.model_config.get("twin_q", True))
        self.policy_dist = self.model_config.get("policy_dist", "tanh_gaussian")
        obs_dim = int(gym.spaces.utils.flatdim(self.observation_space))
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        if self.discrete:
            n = int(self.action_space.n)
            self.pi = mlp([obs_dim, *hiddens, n])
            self.qf = mlp([obs_dim, *hiddens, n])  # Q(s, .) for every action
            self.qf_twin = mlp([obs_dim, *hiddens, n]) if self.twin_q else None
        elif isinstance(self.action_space, gym.spaces.Box):
            if self.policy_dist not in POLICY_DISTS:
                raise ValueError(f"policy_dist={self.policy_dist!r} is not one of {POLICY_DISTS}")
            act_dim = int(self.action_space.shape[0])
            self.pi = mlp([obs_dim, *hiddens, 2 * act_dim])  # mean and log-std
            self.qf = mlp([obs_dim + act_dim, *hiddens, 1])  # Q(s, a)
            self.qf_twin = mlp([obs_dim + act_dim, *hiddens, 1]) if self.twin_q else None
        else:
            raise ValueError(f"CRR supports Discrete and Box action spaces, not {self.action_space}")

    # ---- policy ------------------------------------------------------------------------------------------------
    def policy_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """The action distribution's inputs (logits, or mean and clamped log-std) for observations ``obs``."""
        out = self.pi(obs.float().flatten(1))
        if self.discrete:
            return out
        mean, log_std = out.chunk(2, dim=-1)
        return torch.cat([mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.policy_inputs(batch[Columns.OBS])}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {
            Columns.ACTION_DIST_INPUTS: self.policy_inputs(batch[Columns.OBS]),
            NEXT_ACTION_DIST_INPUTS: self.policy_inputs(batch[Columns.NEXT_OBS]),
        }

    def get_inference_action_dist_cls(self) -> type[TorchDistribution]:
        if self.discrete:
            return TorchCategorical
        # Both act in [-1, 1]-normalized action space; TorchSquashedGaussian's default bounds are (-1, 1).
        return TorchSquashedGaussian if self.policy_dist == "tanh_gaussian" else TorchDiagGaussian

    # ---- critics -----------------------------------------------------------------------------------------------
    def q_all(self, obs: torch.Tensor, *, target: bool = False) -> list[torch.Tensor]:
        """Discrete actions: ``[Q1(s, .), Q2(s, .)]`` (one entry without twin Q), each of shape [B, n]."""
        nets = self._q_nets(target)
        x = obs.float().flatten(1)
        return [net(x) for net in nets]

    def q_values(self, obs: torch.Tensor, actions: torch.Tensor, *, target: bool = False) -> list[torch.Tensor]:
        """``[Q1(s, a), Q2(s, a)]`` for the given actions (Box actions: normalized to [-1, 1]), each of shape [B]."""
        if self.discrete:
            return [q.gather(1, actions.long().view(-1, 1)).squeeze(1) for q in self.q_all(obs, target=target)]
        x = torch.cat([obs.float().flatten(1), actions.float().view(actions.shape[0], -1)], dim=-1)
        return [net(x).squeeze(-1) for net in self._q_nets(target)]

    def _q_nets(self, target: bool) -> list[nn.Module]:
        nets = [self.qf_target, self.qf_twin_target] if target else [self.qf, self.qf_twin]
        return [net for net in nets if net is not None]

    # ---- TargetNetworkAPI --------------------------------------------------------------------------------------
    def make_target_networks(self) -> None:
        self.qf_target = make_target_network(self.qf)
        self.qf_twin_target = make_target_network(self.qf_twin) if self.qf_twin is not None else None

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.qf, self.qf_target)]
        if self.qf_twin is not None:
            pairs.append((self.qf_twin, self.qf_twin_target))
        return pairs

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"qf_target_preds": self.q_values(batch[Columns.OBS], batch[Columns.ACTIONS], target=True)}
