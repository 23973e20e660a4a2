"""The controller of Zoph & Le (2017): an LSTM that emits an architecture one decision at a time.

At step t the LSTM (2 layers, 35 units by default, as in the paper) reads the embedding of the previous decision's
choice (a learned start vector at t = 0), and a softmax head of its own for decision t gives
``p(a_t | a_1..a_{t-1})``. The log-probability of a whole sequence is the sum over its steps,
``log p(a_1:T) = sum_t log p(a_t | a_1:t-1)``, which REINFORCE and PPO differentiate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Controller(nn.Module):
    def __init__(self, sizes: Sequence[int], hidden: int = 35, layers: int = 2) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in self.sizes)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.sizes)
        for head in self.heads:  # start from (nearly) uniform choices, as a search should
            nn.init.uniform_(head.weight, -0.1, 0.1)
            nn.init.zeros_(head.bias)

    def _steps(self, tokens: Sequence[int] | None, generator: torch.Generator | None) -> tuple[list[int], Tensor,
                                                                                                Tensor]:
        """Sample (``tokens is None``) or score ``tokens``; returns tokens, sum of log-probs, sum of entropies."""
        x, state = self.start, None
        chosen: list[int] = []
        log_prob = torch.zeros(())
        entropy = torch.zeros(())
        for t, head in enumerate(self.heads):
            out, state = self.lstm(x, state)
            dist = torch.distributions.Categorical(logits=head(out[-1]))
            if tokens is None:
                a = int(torch.multinomial(dist.probs, 1, generator=generator))
            else:
                a = int(tokens[t])
            chosen.append(a)
            log_prob = log_prob + dist.log_prob(torch.tensor(a))
            entropy = entropy + dist.entropy()
            x = self.embeddings[t](torch.tensor([a]))  # the next step is conditioned on this choice
        return chosen, log_prob, entropy

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> tuple[list[int], float]:
        tokens, log_prob, _ = self._steps(None, generator)
        return tokens, float(log_prob)

    def log_prob(self, tokens: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``log p(tokens)`` and the summed entropy of the step distributions along them (differentiable)."""
        _, log_prob, entropy = self._steps(tokens, None)
        return log_prob, entropy
