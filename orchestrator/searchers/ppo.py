"""PPO for the controller (Schulman et al. 2017, clipped surrogate, eq. 7), as MnasNet trains its controller:

    L(theta) = E[ min(r * A, clip(r, 1 - eps, 1 + eps) * A) ],   r = P_theta(a) / P_theta_old(a),   A = R - b

over batches of ``batch`` completed children, ``epochs`` Adam steps per batch; ``P_theta_old`` is the probability
each child was sampled with (kept with the pending trial, so concurrency is handled exactly), ``b`` the moving
average of rewards, and A is divided by the batch's reward std (rewards of MNIST children differ by a few
hundredths; scaling makes the step size independent of that).
"""

from __future__ import annotations

from typing import Any

import torch

from orchestrator.searchers.reinforce import ControllerSearcher


class PPOSearcher(ControllerSearcher):
    def __init__(self, *args: Any, batch: int = 4, epochs: int = 4, clip: float = 0.2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch, self.epochs, self.clip = batch, epochs, clip
        self.buffer: list[dict[str, Any]] = []

    def observe(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.batch:
            self.update(self.buffer)
            self.buffer = []

    def update(self, batch: list[dict[str, Any]]) -> None:
        rewards = torch.tensor([r["reward"] for r in batch])
        b = float(rewards.mean()) if self.baseline is None else self.baseline
        advantage = (rewards - b) / (rewards.std() + 1e-8 if len(batch) > 1 else 1.0)  # A = R - b (scaled)
        old = torch.tensor([r["log_prob"] for r in batch])
        for _ in range(self.epochs):
            scored = [self.controller.log_prob(r["tokens"]) for r in batch]
            new = torch.stack([log_prob for log_prob, _ in scored])
            entropy = torch.stack([h for _, h in scored])
            ratio = torch.exp(new - old)  # r = P_theta(a) / P_theta_old(a)
            clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
            objective = torch.min(ratio * advantage, clipped * advantage)  # min(r A, clip(r, 1-eps, 1+eps) A)
            loss = -(objective.mean() + self.entropy * entropy.mean())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        for r in batch:
            self.update_baseline(r["reward"])
