"""CRR's loss (Wang et al. 2020, "Critic Regularized Regression", Algorithm 1) as an RLlib ``TorchLearner``.

    critic:  L_Q  = E_(s,a,r,s')~D [ (Q(s,a) - (r + gamma (1 - done) Q'(s', a'))) ^ 2 ],   a' ~ pi(.|s')
    actor:   L_pi = -E_(s,a)~D [ f(A(s,a)) log pi(a|s) ]
    A(s,a) = Q(s,a) - V(s),  V(s) = mean_j Q(s,a_j) | max_j Q(s,a_j) | sum_a pi(a|s) Q(s,a),  a_j ~ pi(.|s)
    f = 1[A > 0] (binary)  or  min(exp(A / beta), max_weight) (exp)

The target and the advantage are computed without gradient, so the actor's loss reaches only the policy's weights
and the critic's loss only the Q networks': one backward pass through their sum updates both (each with its own
optimizer and learning rate). With ``twin_q`` every Q value above is the minimum of the two networks' values.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import update_target_network
from ray.rllib.core.rl_module.apis import TargetNetworkAPI
from ray.rllib.utils.typing import ModuleID, ParamDict

from trainables.rl.crr_module import NEXT_ACTION_DIST_INPUTS

QF_LOSS_KEY = "qf_loss"
WEIGHT_TYPES = ("binary", "exp")
ADVANTAGE_TYPES = ("mean", "max", "expectation")


# ---- the paper's formulas, as pure functions (tested on hand-built numbers) ------------------------------------------
def crr_weights(advantages: torch.Tensor, weight_type: str, beta: float, max_weight: float) -> torch.Tensor:
    """f(A): ``1[A > 0]`` (binary) or ``min(exp(A / beta), max_weight)`` (exp)."""
    if weight_type == "binary":
        return (advantages > 0).to(advantages.dtype)
    if weight_type == "exp":
        # exp(A/beta) clipped from above for stability; clamping the exponent first avoids inf * 0 in the loss.
        return torch.exp((advantages / beta).clamp(max=torch.log(torch.tensor(max_weight)).item()))
    raise ValueError(f"weight_type={weight_type!r} is not one of {WEIGHT_TYPES}")


def state_value(advantage_type: str, q_sampled: torch.Tensor | None = None, q_all: torch.Tensor | None = None,
                probs: torch.Tensor | None = None) -> torch.Tensor:
    """V(s) for the advantage: mean or max over sampled actions' ``q_sampled`` [B, m], or the expectation
    ``sum_a pi(a|s) Q(s,a)`` from ``q_all`` and ``probs`` [B, n] (discrete actions only)."""
    if advantage_type == "mean":
        return q_sampled.mean(dim=1)  # V = 1/m sum_j Q(s, a_j)
    if advantage_type == "max":
        return q_sampled.max(dim=1).values  # V = max_j Q(s, a_j)
    if advantage_type == "expectation":
        return (probs * q_all).sum(dim=1)  # V = E_{a~pi} Q(s, a), exact
    raise ValueError(f"advantage_type={advantage_type!r} is not one of {ADVANTAGE_TYPES}")


def critic_target(rewards: torch.Tensor, terminateds: torch.Tensor, q_next: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - done) Q'(s', a'); a truncated (time-limit) step is not done and bootstraps."""
    return rewards.float() + gamma * (1.0 - terminateds.float()) * q_next


def normalize_box_actions(actions: torch.Tensor, space: gym.spaces.Box) -> torch.Tensor:
    """Env-scale actions from the dataset -> [-1, 1], the policy's action space (inverse of RLlib's unsquash)."""
    low = torch.as_tensor(space.low, dtype=torch.float32, device=actions.device)
    high = torch.as_tensor(space.high, dtype=torch.float32, device=actions.device)
    return (2.0 * (actions.float() - low) / (high - low) - 1.0).clamp(-1.0, 1.0)


class CRRTorchLearner(TorchLearner):
    """Two optimizers per module (``qf``: both Q networks at ``critic_lr``; ``policy`` at ``actor_lr``) and target
    networks updated every ``target_update_frequency`` gradient steps by ``target <- tau * main + (1 - tau) * target``
    (``tau = 1``: hard copies)."""

    def build(self) -> None:
        super().build()
        self.module.foreach_module(
            lambda mid, mod: mod.make_target_networks() if isinstance(mod, TargetNetworkAPI) else None
        )
        self._gradient_steps = 0

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        module = self._module[module_id].unwrapped()
        critic_params = self.get_parameters(module.qf) + (
            self.get_parameters(module.qf_twin) if module.qf_twin is not None else []
        )
        self.register_optimizer(module_id=module_id, optimizer_name="qf", optimizer=torch.optim.Adam(critic_params),
                                params=critic_params, lr_or_lr_schedule=config.critic_lr)
        actor_params = self.get_parameters(module.pi)
        self.register_optimizer(module_id=module_id, optimizer_name="policy",
                                optimizer=torch.optim.Adam(actor_params), params=actor_params,
                                lr_or_lr_schedule=config.actor_lr)

    def compute_loss_for_module(self, *, module_id: ModuleID, config: Any, batch: dict[str, Any],
                                fwd_out: dict[str, Any]) -> torch.Tensor:
        module = self._module[module_id].unwrapped()
        dist_cls = module.get_train_action_dist_cls()
        pi = dist_cls.from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        obs, actions = batch[Columns.OBS], batch[Columns.ACTIONS]
        if not module.discrete:
            actions = normalize_box_actions(actions, module.action_space)
            if module.policy_dist == "tanh_gaussian":
                actions = actions.clamp(-1.0 + 1e-5, 1.0 - 1e-5)  # atanh(+-1) is infinite

        def q_min(qs: list[torch.Tensor]) -> torch.Tensor:
            return torch.min(torch.stack(qs), dim=0).values

        with torch.no_grad():
            # Critic target: y = r + gamma (1 - done) Q'(s', a'),  a' ~ pi(.|s') (current policy, target critic).
            pi_next = dist_cls.from_logits(fwd_out[NEXT_ACTION_DIST_INPUTS])
            q_next = q_min(module.q_values(batch[Columns.NEXT_OBS], pi_next.sample(), target=True))
            y = critic_target(batch[Columns.REWARDS], batch[Columns.TERMINATEDS], q_next, config.gamma)
            # Advantage: A(s, a) = Q(s, a) - V(s), V from m actions sampled from pi(.|s) or the exact expectation.
            q_data = q_min(module.q_values(obs, actions))
            if config.advantage_type == "expectation":
                probs = torch.softmax(fwd_out[Columns.ACTION_DIST_INPUTS], dim=-1)
                v = state_value("expectation", q_all=q_min(module.q_all(obs)), probs=probs)
            else:
                m = config.n_action_samples
                sampled = pi.sample(sample_shape=(m,))  # [m, B, ...]
                obs_rep = obs.unsqueeze(0).expand(m, *obs.shape).reshape(m * obs.shape[0], *obs.shape[1:])
                q_s = q_min(module.q_values(obs_rep, sampled.reshape(m * obs.shape[0], *sampled.shape[2:])))
                v = state_value(config.advantage_type, q_sampled=q_s.view(m, -1).T)
            advantages = q_data - v
            weights = crr_weights(advantages, config.weight_type, config.beta, config.max_weight)

        # Actor: L_pi = -mean f(A) log pi(a|s)  (behaviour cloning filtered / weighted by the critic).
        policy_loss = -(weights * pi.logp(actions)).mean()
        # Critic: L_Q = sum_i mean (Q_i(s, a) - y)^2 over the (twin) Q networks.
        qf_loss = sum(((q - y) ** 2).mean() for q in module.q_values(obs, actions))

        self.metrics.log_dict({
            POLICY_LOSS_KEY: policy_loss, QF_LOSS_KEY: qf_loss, "q_mean": q_data.mean(),
            "advantage_mean": advantages.mean(), "weight_mean": weights.mean(),
            "fraction_positive_advantage": (advantages > 0).float().mean(),
        }, key=module_id, window=1)
        return policy_loss + qf_loss

    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        super().apply_gradients(gradients_dict)
        # Target networks follow gradient steps (after_gradient_based_update runs once per update() call, which
        # covers dataset_num_iters_per_learner steps).
        self._gradient_steps += 1
        for module_id, module in self.module._rl_modules.items():
            config = self.config.get_config_for_module(module_id)
            if self._gradient_steps % config.target_update_frequency == 0 and isinstance(
                module.unwrapped(), TargetNetworkAPI
            ):
                for main, target in module.unwrapped().get_target_network_pairs():
                    update_target_network(main_net=main, target_net=target, tau=config.tau)
