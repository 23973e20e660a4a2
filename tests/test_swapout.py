"""Swapout (trainables/swapout.py): the unit's formula, its special cases (plain ResNet, stochastic depth, dropout),
the rate schedules, and stochastic inference as the average of N sampled forward passes. No Ray needed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables import registry
from trainables.identity_mappings import ResidualUnit, make_branch
from trainables.preact_resnet import build_preact_resnet
from trainables.swapout import SwapoutNet, SwapoutUnit, build_swapout_resnet, swapout_rates


class Twice(nn.Module):
    """F(x) = 2x + 1, deterministic and cheap, so every mask can be read off the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x + 1


def _units(model: nn.Module) -> list[SwapoutUnit]:
    return [m for m in model.modules() if isinstance(m, SwapoutUnit)]


# ---------------------------------------------------------------------------------------------------- schedules
def test_rates_linear_from_one_to_final_and_uniform() -> None:
    assert swapout_rates(5, 0.5, "linear") == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5])
    assert swapout_rates(3, 0.8, "uniform") == pytest.approx([0.8] * 3)
    assert swapout_rates(1, 0.5, "linear") == [0.5]
    with pytest.raises(ValueError, match="final rate"):
        swapout_rates(3, 1.5)


def test_network_units_get_rates_in_order() -> None:
    model = build_swapout_resnet(depth=20, final_rate=0.5, schedule="linear")
    assert [(u.theta1, u.theta2) for u in _units(model)] == [(r, r) for r in swapout_rates(9, 0.5)]


# ---------------------------------------------------------------------------------------------- the unit itself
def test_masks_are_independent_per_element_bernoulli() -> None:
    unit = SwapoutUnit(Twice(), nn.Identity(), theta1=0.3, theta2=0.6, seed=3).train()
    x = torch.full((64, 4, 8, 8), 1.0)  # X = 1, F(X) = 3: Y in {0, 1, 3, 4} tells both masks apart
    y = unit(x)
    assert set(y.unique().tolist()) <= {0.0, 1.0, 3.0, 4.0}
    theta1 = ((y == 1) | (y == 4)).float().mean().item()
    theta2 = ((y == 3) | (y == 4)).float().mean().item()
    both = (y == 4).float().mean().item()
    assert theta1 == pytest.approx(0.3, abs=0.02) and theta2 == pytest.approx(0.6, abs=0.02)
    assert both == pytest.approx(0.3 * 0.6, abs=0.02)  # independent masks
    assert not torch.equal(unit(x), y)  # fresh masks every forward


def test_deterministic_inference_uses_the_expectations() -> None:
    unit = SwapoutUnit(Twice(), nn.Identity(), theta1=0.3, theta2=0.6).eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(unit(x), 0.3 * x + 0.6 * (2 * x + 1))  # theta1 X + theta2 F(X)


def test_all_ones_masks_equal_the_plain_preact_residual_unit() -> None:
    x = torch.randn(4, 8, 6, 6)
    plain = ResidualUnit(8, 8, 1, ordering="full_preact")
    branch, _ = make_branch("basic", 8, 8, 1, "full_preact")
    branch.load_state_dict(plain.branch.branch.state_dict())
    swap = SwapoutUnit(branch, nn.Identity(), theta1=1.0, theta2=1.0)
    for mode in (True, False):
        plain.train(mode), swap.train(mode)
        torch.testing.assert_close(swap(x), plain(x))  # Y = X + F(X)
    # and a whole swapout net with swap_final = 1 is the plain pre-activation ResNet
    torch.manual_seed(0)
    net = build_swapout_resnet(depth=8, final_rate=1.0, in_channels=1, inference="stochastic", samples=3)
    torch.manual_seed(0)
    ref = build_preact_resnet(depth=8, in_channels=1)
    with torch.no_grad():  # the same weights, parameter by parameter (the module trees name them differently)
        for a, b in zip(ref.parameters(), net.parameters(), strict=True):
            a.copy_(b)
    xs = torch.randn(5, 1, 10, 10)
    net.eval(), ref.eval()
    torch.testing.assert_close(net(xs), F.log_softmax(ref(xs), dim=1))  # N identical passes: the same softmax


def test_stochastic_depth_is_the_special_case_theta1_one_theta2_one_draw_per_unit() -> None:
    """Theta1 = 1, Theta2 = b 1 with b ~ Bernoulli(p): exactly the pre-activation unit with stochastic depth,
    step for step with the same seed (the same draws), and branch skipped when b = 0."""
    x = torch.randn(4, 8, 6, 6)
    sd = ResidualUnit(8, 8, 1, ordering="full_preact", survival_prob=0.5, seed=11)
    branch = copy.deepcopy(sd.branch.branch)
    swap = SwapoutUnit(branch, nn.Identity(), theta1=1.0, theta2=0.5, seed=11, granularity="unit")
    calls = []
    branch.register_forward_hook(lambda *_: calls.append(1))
    outputs = []
    for _ in range(20):
        y_sd, y_swap = sd(x), swap(x)
        torch.testing.assert_close(y_swap, y_sd)
        outputs.append(torch.equal(y_swap, x))
    assert 0 < sum(outputs) < 20 and len(calls) == 20 - sum(outputs)  # both kinds of step; dropped = not run
    sd.eval(), swap.eval()
    torch.testing.assert_close(swap(x), sd(x))  # test time: X + p F(X)


def test_dropout_is_the_special_case_theta1_zero() -> None:
    """Theta1 = 0, Theta2 ~ Bernoulli(q) per element: Y = Theta2 * F(X), dropout of F's units (not rescaled in
    training, scaled by q at test as in Srivastava et al. 2014)."""
    q = 0.7
    unit = SwapoutUnit(Twice(), nn.Identity(), theta1=0.0, theta2=q, seed=5).train()
    x = torch.rand(32, 4, 8, 8) + 0.5
    f = 2 * x + 1
    y = unit(x)
    kept = y == f
    assert torch.all(kept | (y == 0))  # every element is either F(X) or dropped
    assert kept.float().mean().item() == pytest.approx(q, abs=0.02)
    # the same mask as torch's (inverted) dropout would give, up to its 1/q rescaling
    torch.testing.assert_close(y / q, torch.where(kept, f / q, torch.zeros_like(f)))
    unit.eval()
    torch.testing.assert_close(unit(x), q * f)


# -------------------------------------------------------------------------------------- stochastic inference
def test_stochastic_inference_averages_n_sampled_passes() -> None:
    torch.manual_seed(0)
    net = build_swapout_resnet(depth=8, final_rate=0.5, in_channels=1, inference="stochastic", samples=4, seed=2)
    x = torch.randn(3, 1, 10, 10)
    net.train()
    net(x)  # a training step moves the BN statistics away from their initial values
    net.eval()
    states = [u.generator.get_state() for u in _units(net)]
    logits = net(x)
    # by hand: N forward passes with masks drawn (eval-mode BN), the mean of their softmax
    for unit, state in zip(_units(net), states, strict=True):
        unit.generator.set_state(state)
        unit.sampling = True
    probs = [F.softmax(super(SwapoutNet, net).forward(x), dim=1) for _ in range(4)]
    for unit in _units(net):
        unit.sampling = False
    torch.testing.assert_close(logits.exp(), torch.stack(probs).mean(0))
    assert not torch.allclose(probs[0], probs[1])  # the passes differ: masks are drawn in each
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(3))
    # deterministic inference of the same weights is one pass with the expected masks
    net.inference = "deterministic"
    assert not torch.allclose(net(x), logits)


def test_eval_masks_do_not_leak_into_training_mode() -> None:
    net = build_swapout_resnet(depth=8, in_channels=1, inference="stochastic", samples=2).eval()
    net(torch.randn(2, 1, 8, 8))
    assert not any(u.sampling for u in _units(net))


def test_state_dict_carries_the_mask_generators() -> None:
    net = build_swapout_resnet(depth=8, in_channels=1, seed=4).train()
    x = torch.randn(2, 1, 8, 8)
    net(x)
    clone = copy.deepcopy(net)
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(x), net(x))  # same weights, same next masks


def test_registered_trainable_validates() -> None:
    spec = registry.get("swapout")
    assert spec.resolve({"inference": "stochastic", "inference_samples": 5})["inference_samples"] == 5
    for overrides, message in [({"inference": "mc"}, "inference='mc'"), ({"swap_final": 1.2}, "swap_final"),
                               ({"depth": 21}, "6n"), ({"inference_samples": 0}, "inference_samples")]:
        with pytest.raises(registry.ConfigError, match=message) as err:
            spec.resolve(overrides)
        assert "\n" not in str(err.value)


def test_inference_both_scores_the_same_weights_in_both_modes(tmp_path) -> None:  # noqa: ANN001
    """``inference=both``: the reported metrics are deterministic, and each epoch also scores the same net with
    stochastic inference (a paired comparison instead of two nets trained apart)."""
    from trainables.context import LocalContext

    torch.set_num_threads(1)
    spec = registry.get("swapout")
    config = spec.resolve({"inference": "both", "inference_samples": 3, "depth": 8, "epochs": 2,
                           "limit_train_batches": 3, "batch_size": 32})
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(config, ctx)
    assert len(ctx.results) == 2
    for result in ctx.results:
        for split in ("val", "test"):
            assert result[f"{split}_error_deterministic"] == result[f"{split}_error"]
            assert result[f"{split}_loss_deterministic"] == pytest.approx(result[f"{split}_loss"])
            # the stochastic score is a different rule on the same weights: N sampled passes, not the expectations
            assert result[f"{split}_loss_stochastic"] != pytest.approx(result[f"{split}_loss"], rel=1e-6)


def test_inference_both_evaluates_each_mode_once(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The deterministic metrics are the plain ones: not computed a second time for ``*_deterministic``."""
    from trainables import classification
    from trainables.context import LocalContext

    torch.set_num_threads(1)
    calls: list[str] = []
    real = classification.evaluate

    def counting(model, loader, loss_fn):  # noqa: ANN001, ANN202
        calls.append(model.inference)
        return real(model, loader, loss_fn)

    monkeypatch.setattr(classification, "evaluate", counting)
    spec = registry.get("swapout")
    spec.train(spec.resolve({"inference": "both", "inference_samples": 2, "depth": 8, "epochs": 1,
                             "limit_train_batches": 1, "batch_size": 16}), LocalContext(checkpoint_root=str(tmp_path)))
    assert sorted(calls) == ["deterministic", "deterministic", "stochastic", "stochastic"]  # val and test, once each


def test_element_masks_differ_between_ranks_and_keep_the_shared_generator_in_step() -> None:
    """In a DDP group each rank holds other samples of one large batch: per-element masks must differ by rank, while
    every rank's unit generator advances alike (rank 0's checkpoint resumes all of them)."""
    units = [SwapoutUnit(nn.Identity(), nn.Identity(), 0.5, 0.5, seed=7) for _ in range(3)]
    units[1].draw_rank, units[2].draw_rank = 0, 1
    x = torch.ones(4, 2, 3, 3)
    outputs = [unit.train()(x) for unit in units]
    assert not torch.equal(outputs[1], outputs[2])  # ranks 0 and 1 of a group
    assert torch.equal(units[1].generator.get_state(), units[2].generator.get_state())
    # One process (draw_rank None) keeps the masks it always drew: the shared generator itself.
    reference = SwapoutUnit(nn.Identity(), nn.Identity(), 0.5, 0.5, seed=7)
    g = torch.Generator().manual_seed(7)
    m1, m2 = (torch.rand(x.shape, generator=g) < 0.5).float(), (torch.rand(x.shape, generator=g) < 0.5).float()
    assert torch.equal(reference.train()(x), m1 * x + m2 * x)
    unit_level = SwapoutUnit(nn.Identity(), nn.Identity(), 0.5, 0.5, seed=7, granularity="unit")
    assert unit_level.rank_varying is False  # one draw per unit agrees across ranks, like stochastic depth
