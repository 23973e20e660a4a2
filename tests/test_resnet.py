"""Tests of the CIFAR ResNet with stochastic depth (trainables/resnet.py); no Ray needed."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.resnet import BasicBlock, build_resnet
from trainables.stochastic_depth import StochasticDepth, survival_probabilities


def _gates(model: nn.Module) -> list[StochasticDepth]:
    return [m for m in model.modules() if isinstance(m, StochasticDepth)]


def _drop_pattern(model: nn.Module, steps: int, x: torch.Tensor) -> list[list[bool]]:
    """Which blocks survived in each of `steps` training forwards (read from the gates' outputs)."""
    gates = _gates(model)
    step: list[bool] = []
    hooks = [g.register_forward_hook(lambda _m, _i, out: step.append(out is not None)) for g in gates]
    model.train()
    pattern = []
    with torch.no_grad():
        for _ in range(steps):
            step.clear()
            model(x)
            pattern.append(list(step))
    for h in hooks:
        h.remove()
    assert all(len(p) == len(gates) for p in pattern)
    return pattern


def _expected_params(n: int, in_channels: int, num_classes: int) -> int:
    """Parameter count by hand: conv3x3 without bias = 9 c_in c_out, BN = 2 c, linear = 64 k + k."""
    total = 9 * in_channels * 16 + 2 * 16  # stem
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width  # option-A shortcut: 0
            c_in = width
    return total + 64 * num_classes + num_classes


# ----------------------------------------------------------------------------------- architecture
def test_resnet110_parameter_count() -> None:
    model = build_resnet(depth=110, num_classes=10, in_channels=3, p_L=0.5)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_params(18, 3, 10)
    assert abs(count - 1.73e6) < 0.005e6  # "1.7M" in He et al. / Huang et al.
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 54
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 109  # + the linear layer = 110


@pytest.mark.parametrize(("depth", "n"), [(8, 1), (20, 3), (32, 5)])
def test_small_depths_parameter_count(depth: int, n: int) -> None:
    model = build_resnet(depth=depth, num_classes=7, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == _expected_params(n, 1, 7)


@pytest.mark.parametrize(("shape", "classes"), [((3, 1, 28, 28), 10), ((3, 1, 8, 8), 10), ((3, 3, 32, 32), 100)])
@pytest.mark.parametrize("p_L", [1.0, 0.5])
def test_output_shapes(shape: tuple[int, ...], classes: int, p_L: float) -> None:
    model = build_resnet(depth=20, num_classes=classes, in_channels=shape[1], p_L=p_L)
    x = torch.randn(shape)
    for mode in (True, False):
        model.train(mode)
        out = model(x)
        assert out.shape == (shape[0], classes)
        assert torch.isfinite(out).all()


def test_resnet110_forward_backward_small_input() -> None:
    model = build_resnet(depth=110, in_channels=1, p_L=0.5)
    out = model(torch.randn(2, 1, 8, 8))
    out.sum().backward()
    assert out.shape == (2, 10)


def test_stage_resolutions_for_odd_sizes() -> None:
    # 28 -> 14 -> 7 in the branches; the option-A shortcut must give the same sizes (else the add fails).
    model = build_resnet(depth=8, in_channels=1).eval()
    sizes = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:]))) for s in model.stages]
    model(torch.randn(1, 1, 28, 28))
    model(torch.randn(1, 1, 7, 7))
    for h in hooks:
        h.remove()
    assert sizes == [(16, 28, 28), (32, 14, 14), (64, 7, 7), (16, 7, 7), (32, 4, 4), (64, 2, 2)]


@pytest.mark.parametrize("depth", [0, 2, 7, 21, 111, 20.0, True, "20"])
def test_depth_validation(depth: object) -> None:
    with pytest.raises(ValueError, match=r"depth must be 6n\+2 \(20, 32, 44, 56, 110, 1202\), got") as err:
        build_resnet(depth=depth)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_depth_error_message_example() -> None:
    with pytest.raises(ValueError) as err:
        build_resnet(depth=21)
    assert str(err.value) == "depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got 21"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 0.2, "dropout_where": "stem"}, "dropout_where"),
        ({"p_L": 1.5}, "p_L"),
        ({"p_L": -0.5}, "p_L"),
        ({"sd_schedule": "exp"}, "schedule"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        build_resnet(depth=8, **kwargs)
    assert "\n" not in str(err.value)


def test_init() -> None:
    model = build_resnet(depth=8)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5  # He init, fan_out mode
            assert 0.7 * std < m.weight.std().item() < 1.3 * std
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


# ----------------------------------------------------------------------------------- stochastic depth
@pytest.mark.parametrize("schedule", ["linear", "uniform"])
def test_blocks_get_survival_probabilities_in_network_order(schedule: str) -> None:
    model = build_resnet(depth=110, p_L=0.5, sd_schedule=schedule)
    probs = [g.survival_prob for g in _gates(model)]  # modules() visits stages/blocks in forward order
    assert probs == pytest.approx(survival_probabilities(54, 0.5, schedule))
    if schedule == "linear":
        assert probs[0] == pytest.approx(1 - 0.5 / 54) and probs[-1] == pytest.approx(0.5)


def test_surviving_block_count_in_resnet() -> None:
    # Observed mean number of surviving blocks over many training forwards vs E = sum_l p_l = (3L-1)/4.
    L, steps = 54, 1500
    model = build_resnet(depth=110, p_L=0.5, seed=7)
    gates = _gates(model)
    for g in gates:  # keep the real gates (generators, seeds, p_l) but make the branches free
        g.branch = nn.Identity()
    x = torch.zeros(1)
    counts = torch.tensor([sum(g(x) is not None for g in gates) for _ in range(steps)], dtype=torch.float64)
    probs = survival_probabilities(L, 0.5)
    se = (sum(p * (1 - p) for p in probs) / steps) ** 0.5  # sum of independent Bernoulli variances
    assert abs(counts.mean().item() - (3 * L - 1) / 4) < 4 * se
    assert counts.std().item() ** 2 == pytest.approx(se**2 * steps, rel=0.15)  # blocks draw independently


def test_dropped_branches_are_not_executed_in_resnet() -> None:
    model = build_resnet(depth=20, in_channels=1, p_L=0.5, seed=1)
    gates = _gates(model)
    executed = [0] * len(gates)
    survived = [0] * len(gates)

    def count_exec(i: int):
        return lambda _m, _i, _o: executed.__setitem__(i, executed[i] + 1)

    def count_survive(i: int):
        return lambda _m, _i, out: survived.__setitem__(i, survived[i] + (out is not None))

    for i, g in enumerate(gates):
        g.branch.register_forward_hook(count_exec(i))  # the inner conv-BN-ReLU-conv-BN
        g.register_forward_hook(count_survive(i))
    steps = 60
    x = torch.randn(2, 1, 8, 8)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    assert executed == survived
    assert executed[-1] < steps  # p_L = 0.5: the last branch was skipped at least once
    assert sum(executed) < steps * len(gates)

    before = list(executed)
    model.eval()
    with torch.no_grad():
        for _ in range(5):
            model(x)
    assert [e - b for e, b in zip(executed, before, strict=True)] == [5] * len(gates)  # eval: every branch runs


def test_dropped_block_params_get_no_gradient() -> None:
    model = build_resnet(depth=8, in_channels=1, p_L=0.0)  # linear p_L = 0: the last block always drops
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    last = _gates(model)[-1]
    assert last.survival_prob == 0.0
    assert all(p.grad is None for p in last.parameters())
    assert all(p.grad is not None for p in model.stem.parameters())


@pytest.mark.parametrize("stride_block", [False, True])
def test_eval_block_output_is_relu_x_plus_p_f(stride_block: bool) -> None:
    torch.manual_seed(0)
    model = build_resnet(depth=20, in_channels=1, p_L=0.3).double()
    # stage 2, block 1 (stride 2, 16 -> 32 channels, option-A shortcut) or stage 1, block 2 (identity)
    block = model.stages[1][0] if stride_block else model.stages[0][1]
    assert isinstance(block, BasicBlock)
    # give BN non-trivial statistics so the branch is not near zero
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    block.eval()
    p = block.branch.survival_prob
    assert 0.3 < p < 1.0
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64).relu()
    f = block.branch.branch(x)  # F(x): the raw residual branch
    if stride_block:
        # option A by hand: 2x2 average pool (ceil mode for the odd 7x7), zero channels appended
        pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True)
        shortcut = torch.cat([pooled, torch.zeros_like(pooled)], dim=1)
        assert shortcut.shape == f.shape == (2, 32, 4, 4)
        assert torch.allclose(shortcut[:, :16, -1, -1], x[:, :, -1, -1])  # overhang averages valid pixels
    else:
        shortcut = x
    expected = torch.relu(shortcut + p * f)  # H_test = ReLU(id(x) + p_l F(x))
    assert torch.allclose(block(x), expected, atol=1e-12, rtol=0)
    assert not torch.allclose(block(x), torch.relu(shortcut + f))  # the p scaling matters


def test_same_seed_same_drop_pattern_regardless_of_global_rng() -> None:
    x = torch.randn(2, 1, 8, 8)
    torch.manual_seed(0)
    a = build_resnet(depth=20, in_channels=1, p_L=0.5, dropout=0.3, seed=5)
    torch.manual_seed(1)  # different weights and different dropout masks, same block seeds
    b = build_resnet(depth=20, in_channels=1, p_L=0.5, dropout=0.3, seed=5)
    c = build_resnet(depth=20, in_channels=1, p_L=0.5, dropout=0.3, seed=6)
    torch.manual_seed(2)
    pat_a = _drop_pattern(a, 40, x)
    torch.manual_seed(3)
    torch.rand(1000)
    pat_b = _drop_pattern(b, 40, x)
    assert pat_a == pat_b
    assert pat_a != _drop_pattern(c, 40, x)
    assert any(not all(step) for step in pat_a)  # something was actually dropped


def test_blocks_have_distinct_streams() -> None:
    model = build_resnet(depth=110, p_L=0.5, sd_schedule="uniform", seed=0)
    states = {bytes(g.generator.get_state().numpy()) for g in _gates(model)}
    assert len(states) == 54


def test_state_dict_round_trip_continues_the_drop_sequence() -> None:
    x = torch.randn(2, 1, 8, 8)
    a = build_resnet(depth=20, in_channels=1, p_L=0.5, seed=3)
    _drop_pattern(a, 13, x)  # advance: a resumed run is mid-sequence
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    assert sum(k.endswith("_extra_state") for k in state) == 9

    b = build_resnet(depth=20, in_channels=1, p_L=0.5, seed=4)  # other seed: only the load can align it
    result = b.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert _drop_pattern(a, 30, x) == _drop_pattern(b, 30, x)

    fresh = build_resnet(depth=20, in_channels=1, p_L=0.5, seed=3)
    assert _drop_pattern(fresh, 30, x) != _drop_pattern(build_resnet(depth=20, in_channels=1, p_L=0.5, seed=4), 30, x)


def test_p_last_one_has_no_randomness() -> None:
    model = build_resnet(depth=20, in_channels=1, p_L=1.0, dropout=0.0)
    states = [g.generator.get_state() for g in _gates(model)]
    x = torch.randn(4, 1, 8, 8)
    model.train()
    with torch.no_grad():
        out1, out2 = model(x), model(x)  # BN uses batch stats in training: deterministic given x
    assert torch.equal(out1, out2)
    assert all(torch.equal(s, g.generator.get_state()) for s, g in zip(states, _gates(model), strict=True))

    # control: with p_L < 1 the same two training forwards do differ (so the check above can fail)
    sd = build_resnet(depth=20, in_channels=1, p_L=0.5, seed=0).train()
    with torch.no_grad():
        outs = [sd(x) for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_eval_is_deterministic_and_draws_nothing() -> None:
    model = build_resnet(depth=20, in_channels=1, p_L=0.5, dropout=0.3).eval()
    states = [g.generator.get_state() for g in _gates(model)]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert all(torch.equal(s, g.generator.get_state()) for s, g in zip(states, _gates(model), strict=True))


# ----------------------------------------------------------------------------------- dropout
def test_dropout_placement() -> None:
    def dropouts(model: nn.Module) -> list[nn.Dropout]:
        return [m for m in model.modules() if isinstance(m, nn.Dropout)]

    assert dropouts(build_resnet(depth=20, dropout=0.0)) == []
    assert dropouts(build_resnet(depth=20, dropout=0.0, dropout_where="head")) == []

    branch = build_resnet(depth=20, dropout=0.2, dropout_where="branch")
    assert len(dropouts(branch)) == 9 and all(d.p == 0.2 for d in dropouts(branch))
    for gate in _gates(branch):  # conv-BN-ReLU-Dropout-conv-BN
        kinds = [type(m) for m in gate.branch]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Conv2d, nn.BatchNorm2d]

    head = build_resnet(depth=20, dropout=0.2, dropout_where="head")
    assert len(dropouts(head)) == 1
    assert all(len(list(g.branch)) == 5 for g in _gates(head))
    # the head dropout acts on the pooled features right before the classifier
    seen: list[str] = []
    for name, m in head.named_modules():
        if isinstance(m, nn.Dropout | nn.Linear):
            m.register_forward_hook(lambda _m, _i, _o, name=name: seen.append(name))
    head.train()(torch.randn(2, 3, 8, 8))
    assert seen == ["head_dropout", "fc"]
    # dropout adds no parameters
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in build_resnet(depth=20).parameters())


def test_dropped_block_output_is_relu_of_the_shortcut() -> None:
    """H_l = ReLU(id(H_{l-1})) for a dropped block; the returned shortcut must already equal that ReLU."""
    import torch
    import torch.nn.functional as F

    from trainables.resnet import BasicBlock

    torch.manual_seed(0)
    for in_ch, out_ch, stride in ((16, 16, 1), (16, 32, 2)):
        block = BasicBlock(in_ch, out_ch, stride, survival_prob=0.0, seed=0).train()
        x = F.relu(torch.randn(4, in_ch, 7, 7))  # every block's input left a ReLU
        expected = F.relu(block.shortcut(x))
        assert torch.equal(block(x), expected)
