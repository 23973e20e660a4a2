"""Tests of the stochastic-depth primitive (trainables/stochastic_depth.py); no Ray needed."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from trainables.stochastic_depth import StochasticDepth, survival_probabilities


class CountingBranch(nn.Module):
    """Branch F(x) = 2x that counts how often it is executed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 2 * x


def _pattern(layers: list[StochasticDepth], steps: int, x: torch.Tensor | None = None) -> list[list[bool]]:
    """Survival pattern (step x block) of training-mode forwards."""
    x = torch.ones(2) if x is None else x
    return [[layer(x) is not None for layer in layers] for _ in range(steps)]


# ----------------------------------------------------------------------------- survival_probabilities
def test_linear_rule_by_hand() -> None:
    # p_l = 1 - (l/4)(1 - 0.5) for l = 1..4
    assert survival_probabilities(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])
    assert survival_probabilities(4, 0.5, "linear") == pytest.approx([0.875, 0.75, 0.625, 0.5])


def test_uniform_rule() -> None:
    assert survival_probabilities(5, 0.8, "uniform") == pytest.approx([0.8] * 5)


@pytest.mark.parametrize("L", [1, 2, 7, 54])
@pytest.mark.parametrize("p_L", [0.0, 0.2, 0.5, 1.0])
def test_linear_rule_endpoints_and_monotone(L: int, p_L: float) -> None:
    p = survival_probabilities(L, p_L)
    assert len(p) == L
    assert p[-1] == pytest.approx(p_L)  # last block has p_L
    assert p[0] == pytest.approx(1 - (1 - p_L) / L)  # block 1 is one step below p_0 = 1
    assert all(a >= b for a, b in zip(p, p[1:], strict=False))  # decays with depth
    assert all(0.0 <= q <= 1.0 for q in p)


def test_p_last_one_is_plain_resnet_and_zero_is_allowed_for_linear() -> None:
    assert survival_probabilities(6, 1.0) == [1.0] * 6
    assert survival_probabilities(6, 1.0, "uniform") == [1.0] * 6
    assert survival_probabilities(2, 0.0) == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((4, -0.1), "p_L"),
        ((4, 1.1), "p_L"),
        ((4, float("nan")), "p_L"),
        ((4, 0.5, "cosine"), "schedule"),
        ((0, 0.5), "num_blocks"),
        ((2.0, 0.5), "num_blocks"),
    ],
)
def test_survival_probabilities_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        survival_probabilities(*args)


@pytest.mark.parametrize("L", [4, 9, 54, 300])
def test_expected_surviving_blocks_is_about_three_quarters(L: int) -> None:
    # E[#surviving] = sum_l p_l = sum_l (1 - l/(2L)) = L - (L+1)/4 = (3L - 1)/4 exactly, since
    # sum_{l=1}^L l = L(L+1)/2. The gap to the paper's "3L/4" is therefore exactly 1/4 of a block
    # (the input block p_0 = 1 is not counted), i.e. a relative error of 1/(3L).
    expected = sum(survival_probabilities(L, 0.5))
    assert expected == pytest.approx((3 * L - 1) / 4, abs=1e-9)
    assert abs(expected - 3 * L / 4) <= 0.25 + 1e-9
    assert abs(expected - 3 * L / 4) / (3 * L / 4) <= 1 / (3 * L) + 1e-12


def test_observed_surviving_count_matches_expectation() -> None:
    L, steps = 54, 2000  # the 54 blocks of ResNet-110
    probs = survival_probabilities(L, 0.5)
    layers = [StochasticDepth(nn.Identity(), p, seed=s) for s, p in enumerate(probs)]
    pattern = torch.tensor(_pattern(layers, steps), dtype=torch.float64)  # steps x L

    # Count per step is a sum of independent Bernoullis: Var = sum_l p_l (1 - p_l); the mean over
    # `steps` steps has standard error sqrt(Var / steps) (~0.07 blocks here). 4 SE: false alarm 6e-5.
    expected = sum(probs)
    se = math.sqrt(sum(p * (1 - p) for p in probs) / steps)
    assert abs(pattern.sum(1).mean().item() - expected) < 4 * se

    # Per block (catches a reversed or shifted schedule that keeps the sum): 5 SE, i.e. a false alarm
    # rate of 54 * 5.7e-7 over all blocks. (Seeds are fixed, so the test is deterministic anyway.)
    freq = pattern.mean(0)
    for ell, p in enumerate(probs):
        assert abs(freq[ell].item() - p) < 5 * math.sqrt(p * (1 - p) / steps) + 1e-12, ell


# ------------------------------------------------------------------------------------ StochasticDepth
def test_dropped_branch_is_not_executed() -> None:
    branch = CountingBranch()
    sd = StochasticDepth(branch, 0.3, seed=1).train()
    x = torch.ones(3)
    steps = 500
    survived = 0
    for _ in range(steps):
        out = sd(x)
        if out is not None:
            survived += 1
            assert torch.equal(out, 2 * x)  # no 1/p rescaling in training (as in the paper)
    assert branch.calls == survived  # the branch ran exactly when b = 1
    assert 0 < survived < steps
    assert abs(survived / steps - 0.3) < 5 * math.sqrt(0.3 * 0.7 / steps)


def test_eval_runs_every_branch_once_and_scales_by_p() -> None:
    branch = CountingBranch()
    sd = StochasticDepth(branch, 0.3, seed=1).eval()
    state = sd.generator.get_state()
    x = torch.arange(4.0)
    for _ in range(10):
        assert torch.allclose(sd(x), 0.3 * (2 * x))  # p * F(x)
    assert branch.calls == 10
    assert torch.equal(sd.generator.get_state(), state)  # eval draws nothing


def test_p_one_never_draws_and_p_zero_always_drops() -> None:
    always = StochasticDepth(CountingBranch(), 1.0, seed=0).train()
    state = always.generator.get_state()
    x = torch.ones(2)
    for _ in range(50):
        assert torch.equal(always(x), 2 * x)
    assert torch.equal(always.generator.get_state(), state)

    never = StochasticDepth(CountingBranch(), 0.0, seed=0).train()
    assert all(never(x) is None for _ in range(50))
    assert never.branch.calls == 0


def test_dropped_block_gets_no_gradient() -> None:
    lin = nn.Linear(3, 3)
    sd = StochasticDepth(lin, 0.5, seed=0).train()
    x = torch.randn(2, 3, requires_grad=True)
    outcomes = []
    for _ in range(20):
        lin.zero_grad(set_to_none=True)
        out = sd(x)
        outcomes.append(out is not None)
        if out is not None:
            out.sum().backward()
        assert (lin.weight.grad is not None) == outcomes[-1]
    assert any(outcomes) and not all(outcomes)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="survival_prob"):
        StochasticDepth(nn.Identity(), 1.5)
    with pytest.raises(ValueError, match="survival_prob"):
        StochasticDepth(nn.Identity(), -0.1)
    with pytest.raises(TypeError, match="branch"):
        StochasticDepth(lambda x: x, 0.5)  # type: ignore[arg-type]


def test_same_seed_same_pattern_and_independent_of_global_rng() -> None:
    probs = survival_probabilities(8, 0.5)
    a = [StochasticDepth(nn.Identity(), p, seed=10 + i) for i, p in enumerate(probs)]
    b = [StochasticDepth(nn.Identity(), p, seed=10 + i) for i, p in enumerate(probs)]
    c = [StochasticDepth(nn.Identity(), p, seed=20 + i) for i, p in enumerate(probs)]
    torch.manual_seed(0)
    pat_a = _pattern(a, 100)
    torch.manual_seed(12345)  # a different global RNG, and draws from it in between
    pat_b = []
    for _ in range(100):
        torch.rand(17)
        nn.functional.dropout(torch.ones(5), 0.5, training=True)
        pat_b += _pattern(b, 1)
    assert pat_a == pat_b
    assert pat_a != _pattern(c, 100)  # the seed does matter


def test_state_dict_round_trip_continues_the_sequence() -> None:
    def make(seed: int) -> nn.Sequential:
        return nn.Sequential(*[StochasticDepth(nn.Linear(2, 2), p, seed=seed + i)
                               for i, p in enumerate(survival_probabilities(6, 0.3))])

    a = make(0).train()
    _pattern(list(a), 7)  # advance the generators
    sd = a.state_dict()
    assert sum(k.endswith("_extra_state") for k in sd) == 6

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # checkpoint is loadable with the safe loader

    b = make(999).train()  # different seed: only the loaded state can make it match
    result = b.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for la, lb in zip(a, b, strict=True):
        assert torch.equal(la.branch.weight, lb.branch.weight)
        assert torch.equal(la.generator.get_state(), lb.generator.get_state())
    assert _pattern(list(a), 50) == _pattern(list(b), 50)


def test_deepcopy_and_pickle_keep_generator_state() -> None:
    sd = StochasticDepth(nn.Identity(), 0.5, seed=3).train()
    _pattern([sd], 5)
    for clone in (copy.deepcopy(sd), pickle.loads(pickle.dumps(sd))):
        assert clone.generator is not sd.generator
        assert torch.equal(clone.generator.get_state(), sd.generator.get_state())
    twin = copy.deepcopy(sd)
    assert _pattern([twin], 40) == _pattern([sd], 40)
