"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth", arXiv:1603.09382).

A residual block computes  H_l = ReLU(f_l(H_{l-1}) + id(H_{l-1})).
Stochastic depth trains with a Bernoulli gate b_l in {0, 1} per block and per mini-batch:

    training:  H_l = ReLU(b_l * f_l(H_{l-1}) + id(H_{l-1})),   b_l ~ Bernoulli(p_l)     (paper eq. 2)
    test:      H_l = ReLU(p_l * f_l(H_{l-1}) + id(H_{l-1}))                             (paper eq. 5)

with the linear decay rule  p_l = 1 - (l / L) * (1 - p_L)  (paper eq. 4; p_0 = 1 for the input).
When b_l = 0 the branch f_l is skipped entirely, which is where the training speed-up comes from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainables.layers import SeededDraws

SCHEDULES = ("linear", "uniform")


def survival_probabilities(num_blocks: int, p_L: float, schedule: str = "linear") -> list[float]:
    """Survival probability p_l of residual blocks l = 1..L (L = num_blocks), in network order."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
    if not 0.0 <= p_L <= 1.0:  # also rejects NaN
        raise ValueError(f"p_L must be in [0, 1], got {p_L!r}")
    L = num_blocks
    if schedule == "linear":
        # p_l = 1 - (l / L) * (1 - p_L)   -- eq. (4): early blocks (low-level features) survive more often
        return [1.0 - (ell / L) * (1.0 - p_L) for ell in range(1, L + 1)]
    if schedule == "uniform":
        # p_l = p_L for all l
        return [float(p_L)] * L
    raise ValueError(f"unknown schedule {schedule!r}, expected one of {SCHEDULES}")


def canonical_schedule(config: dict[str, Any]) -> dict[str, Any]:
    """With p_L = 1 every p_l is 1 under either schedule and no gate draws (see :class:`StochasticDepth`): the
    schedule cannot change the run, so it is written as ``linear`` (a sweep then runs the no-SD net once)."""
    if config.get("p_L") == 1.0:
        config["sd_schedule"] = "linear"
    return config


class StochasticDepth(SeededDraws, nn.Module):
    """Wraps a residual branch F (an nn.Module) with survival probability p.

    training:  b ~ Bernoulli(p), one draw per forward (= per mini-batch); if b == 0 the branch is NOT
               computed and forward returns None (the caller adds nothing: H = ReLU(id(x)));
               otherwise returns F(x), without rescaling, as in the paper.
    eval:      returns p * F(x)   (H_test = ReLU(p * F(x) + id(x))).
    p == 1:    always returns F(x) and never touches the generator, so p_L = 1.0 is exactly a plain ResNet.

    The draw comes from this module's own CPU torch.Generator seeded with `seed`: replicas built with
    the same seed drop the same blocks in the same step (a data-parallel group stays one model), and
    draws on the global RNG (dropout, augmentation) cannot change the drop pattern. Its state is
    saved in state_dict() (as `<prefix>_extra_state`) so a resumed run continues the same sequence.
    """

    def __init__(self, branch: nn.Module, survival_prob: float, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(branch, nn.Module):
            raise TypeError(f"branch must be an nn.Module, got {type(branch).__name__}")
        if not 0.0 <= survival_prob <= 1.0:
            raise ValueError(f"survival_prob must be in [0, 1], got {survival_prob!r}")
        self.branch = branch
        self.survival_prob = float(survival_prob)
        self.seed_draws(seed)

    def forward(self, x: Tensor) -> Tensor | None:
        p = self.survival_prob
        if p == 1.0:
            return self.branch(x)  # b_l = 1 always: plain residual block, no RNG draw
        if self.training:
            # b_l ~ Bernoulli(p_l):  b_l = 1  iff  u < p_l,  u ~ U[0, 1)
            survived = torch.rand((), generator=self.generator).item() < p
            # H_l = ReLU(b_l f_l(H_{l-1}) + id(H_{l-1}));  b_l = 0 -> f_l is not computed at all
            return self.branch(x) if survived else None
        # H_l^Test = ReLU(p_l f_l(H_{l-1}; W_l) + id(H_{l-1}))  -- expected branch contribution
        return p * self.branch(x)

    def extra_repr(self) -> str:
        return f"survival_prob={self.survival_prob:.4g}"
