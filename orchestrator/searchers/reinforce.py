"""REINFORCE for the controller (Zoph & Le 2017, eq. 2, with their moving-average baseline):

    grad J(theta) ~= (R - b) * grad log P(a_1:T; theta),      b <- decay * b + (1 - decay) * R

one Adam step per completed child, plus an optional entropy bonus ``entropy * H(pi)`` to keep it exploring.
Under concurrency the log-probability is taken under the current policy (the children already in flight were
sampled from a slightly older one, as in the paper's asynchronous workers).
"""

from __future__ import annotations

from typing import Any

import torch

from orchestrator.searchers.base import NasSearcher
from orchestrator.searchers.controller import Controller


class ControllerSearcher(NasSearcher):
    """A searcher that samples from the LSTM controller (shared by REINFORCE and PPO)."""

    def __init__(self, *args: Any, lr: float = 0.01, hidden: int = 35, layers: int = 2, entropy: float = 0.0,
                 baseline_decay: float = 0.9, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        torch.manual_seed(int(self.rng.integers(2**31)))  # controller weights follow the search's seed
        self.controller = Controller(self.space.sizes, hidden=hidden, layers=layers)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.entropy, self.baseline_decay = entropy, baseline_decay
        self.baseline: float | None = None

    def propose(self) -> tuple[list[int], dict[str, Any]]:
        tokens, log_prob = self.controller.sample(self.generator)
        return tokens, {"log_prob": log_prob}

    def update_baseline(self, rewards: float) -> None:
        # b <- decay * b + (1 - decay) * R   (the first reward starts the average)
        b = self.baseline
        self.baseline = rewards if b is None else self.baseline_decay * b + (1 - self.baseline_decay) * rewards


class ReinforceSearcher(ControllerSearcher):
    def observe(self, record: dict[str, Any]) -> None:
        R = record["reward"]
        b = R if self.baseline is None else self.baseline
        log_prob, entropy = self.controller.log_prob(record["tokens"])
        loss = -(R - b) * log_prob - self.entropy * entropy  # ascend (R - b) * grad log P + entropy bonus
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_baseline(R)
