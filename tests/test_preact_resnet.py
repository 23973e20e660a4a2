"""Original / pre-activation ResNets and the identity-mapping ablations (trainables/preact_resnet.py,
trainables/identity_mappings.py), and the three new search spaces end to end through the sweep CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from orchestrator import spaces, sweep
from trainables import registry
from trainables.identity_mappings import ORDERINGS, SHORTCUTS, ResidualUnit, make_branch
from trainables.preact_resnet import build_preact_resnet, parse_arch
from trainables.resnet import build_resnet
from trainables.stochastic_depth import StochasticDepth, survival_probabilities


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_types(seq: nn.Sequential) -> list[str]:
    return [{nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu", nn.Dropout: "drop"}[type(m)] for m in seq]


# ---------------------------------------------------------------------------------------------- sizes and shapes
def test_resnet110_has_1_7m_parameters_in_every_ordering() -> None:
    reference = _params(build_resnet(depth=110))  # the platform's original ResNet-110
    assert 1.70e6 < reference < 1.75e6
    for ordering in ORDERINGS:
        # the same convs, BNs and classifier; BN-after-add trades the branch's last BN for one after the addition
        assert _params(build_preact_resnet(depth=110, ordering=ordering)) == reference, ordering


def test_original_ordering_matches_the_platform_resnet_function() -> None:
    """ordering=original with identity shortcuts is the platform's ResNet: same weights give the same outputs."""
    ours, theirs = build_preact_resnet(depth=20, ordering="original", in_channels=1), build_resnet(depth=20,
                                                                                                  in_channels=1)
    ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
    assert [p.shape for p in ours_params] == [p.shape for p in theirs_params]
    with torch.no_grad():
        for a, b in zip(ours_params, theirs_params, strict=True):
            a.copy_(b)
    x = torch.randn(4, 1, 12, 12)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_preact_resnet164_bottleneck_has_about_1_7m_parameters() -> None:
    count = _params(build_preact_resnet(depth=164, block="bottleneck"))
    assert 1.6e6 < count < 1.75e6  # the paper: 1.7M (it uses projections where we use option A: 1.66M)


@pytest.mark.parametrize(("widen", "ratio"), [(2.0, 4.0), (4.0, 16.0)])
def test_widening_scales_parameters_by_k_squared(widen: float, ratio: float) -> None:
    base = _params(build_preact_resnet(depth=20))
    assert _params(build_preact_resnet(depth=20, widen=widen)) / base == pytest.approx(ratio, rel=0.05)


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize(("block", "depth"), [("basic", 8), ("bottleneck", 11)])
def test_every_variant_trains_and_evaluates(ordering: str, shortcut: str, block: str, depth: int) -> None:
    model = build_preact_resnet(depth=depth, block=block, ordering=ordering, shortcut=shortcut, in_channels=1,
                                num_classes=7, p_L=0.5)
    x = torch.randn(3, 1, 13, 13)  # odd size: option A and the strided convs must agree (13 -> 7 -> 4)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.fc.parameters())
    model.eval()
    assert model(x).shape == (3, 7)


def test_imagenet_stem_quarters_the_resolution() -> None:
    model = build_preact_resnet(depth=20, stem="imagenet", in_channels=3)
    assert model.stem(torch.randn(1, 3, 32, 32)).shape == (1, 16, 8, 8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("depth", "block", "message"), [(21, "basic", r"6n\+2"), (32, "bottleneck", r"9n\+2"),
                                                         (2, "basic", r"6n\+2")])
def test_depth_errors_name_the_rule(depth: int, block: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_preact_resnet(depth=depth, block=block)


# ---------------------------------------------------------------------------------------------------- orderings
def test_unit_layouts_follow_figure_4() -> None:
    layouts = {o: _layer_types(make_branch("basic", 8, 8, 1, o)[0]) for o in ORDERINGS}
    assert layouts["original"] == ["conv", "bn", "relu", "conv", "bn"]
    assert layouts["bn_after_add"] == ["conv", "bn", "relu", "conv"]
    assert layouts["relu_before_add"] == ["conv", "bn", "relu", "conv", "bn", "relu"]
    assert layouts["relu_only_preact"] == ["relu", "conv", "bn", "relu", "conv", "bn"]
    assert layouts["full_preact"] == ["bn", "relu", "conv", "bn", "relu", "conv"]
    bottleneck, _ = make_branch("bottleneck", 64, 64, 1, "full_preact")
    assert _layer_types(bottleneck) == ["bn", "relu", "conv"] * 3
    assert [m.kernel_size for m in bottleneck if isinstance(m, nn.Conv2d)] == [(1, 1), (3, 3), (1, 1)]


def test_full_preact_unit_is_x_plus_f_and_original_is_relu_of_sum() -> None:
    x = torch.randn(2, 8, 6, 6)
    pre = ResidualUnit(8, 8, 1, ordering="full_preact").eval()
    torch.testing.assert_close(pre(x), x + pre.branch.branch(x))  # y = x + F(x): a clean identity path
    orig = ResidualUnit(8, 8, 1, ordering="original").eval()
    torch.testing.assert_close(orig(x), torch.relu(x + orig.branch.branch(x)))


# ------------------------------------------------------------------------------------------------ shortcuts
def test_shortcut_only_gating_with_a_large_negative_bias_approaches_identity() -> None:
    x = torch.randn(2, 8, 6, 6)
    identity = ResidualUnit(8, 8, 1, shortcut="identity").eval()
    gaps = []
    for bias in (0.0, -6.0, -30.0):
        gated = ResidualUnit(8, 8, 1, shortcut="shortcut_gating", gate_bias=bias).eval()
        gated.branch.load_state_dict(identity.branch.state_dict())
        gaps.append((gated(x) - identity(x)).abs().max().item())
    assert gaps[0] > 0.1 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6  # 1 - g -> 1 as b_g -> -inf


def test_exclusive_gating_with_a_large_negative_bias_passes_the_input_through() -> None:
    x = torch.randn(2, 8, 6, 6)
    closed = ResidualUnit(8, 8, 1, shortcut="gating", gate_bias=-30.0).eval()
    torch.testing.assert_close(closed(x), x, atol=1e-6, rtol=0)  # g -> 0: y = (1 - g) x + g F(x) -> x
    opened = ResidualUnit(8, 8, 1, shortcut="gating", gate_bias=30.0).eval()
    torch.testing.assert_close(opened(x), opened.branch.branch(x), atol=1e-5, rtol=0)  # g -> 1: y -> F(x)


@pytest.mark.parametrize("scale_branch", [False, True])
def test_constant_scaling(scale_branch: bool) -> None:
    x = torch.randn(2, 8, 6, 6)
    unit = ResidualUnit(8, 8, 1, shortcut="scaling", scale=0.3, scale_branch=scale_branch).eval()
    f = unit.branch.branch(x)
    torch.testing.assert_close(unit(x), 0.3 * x + (0.7 if scale_branch else 1.0) * f)


def test_conv1x1_and_dropout_shortcuts() -> None:
    x = torch.randn(2, 8, 6, 6)
    conv = ResidualUnit(8, 16, 2, shortcut="conv1x1").eval()
    assert isinstance(conv.shortcut, nn.Conv2d) and conv.shortcut.kernel_size == (1, 1)
    torch.testing.assert_close(conv(x), conv.shortcut(x) + conv.branch.branch(x))
    drop = ResidualUnit(8, 8, 1, shortcut="dropout", shortcut_dropout=0.5)
    f = drop.branch.branch.eval()(x)
    drop.eval()
    torch.testing.assert_close(drop(x), 0.5 * x + f)  # test: the expected scale 0.5 on the shortcut
    drop.train()
    drop.branch.branch.eval()  # BN in eval mode so F is the same function in both passes
    kept = (drop(x) - f) / x  # elementwise 0 or 1
    assert torch.all((kept.round() == 0) | (kept.round() == 1))
    assert 0.35 < kept.round().mean().item() < 0.65


# -------------------------------------------------------------------------------------------- stochastic depth
@pytest.mark.parametrize(("block", "depth", "units"), [("basic", 110, 54), ("bottleneck", 164, 54)])
def test_stochastic_depth_composes_with_preact_and_bottleneck(block: str, depth: int, units: int) -> None:
    model = build_preact_resnet(depth=depth, block=block, p_L=0.5)
    gates = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    assert [g.survival_prob for g in gates] == pytest.approx(survival_probabilities(units, 0.5))


def test_a_dropped_preact_unit_is_the_identity_and_not_computed() -> None:
    model = build_preact_resnet(depth=11, block="bottleneck", in_channels=1, p_L=0.0, sd_schedule="uniform")
    calls = []
    for unit in model.modules():
        if isinstance(unit, ResidualUnit):
            unit.branch.branch.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 1, 8, 8)
    model.train()
    stem = model.stem(x)
    out = model.stages(stem)
    assert not calls  # p_l = 0 everywhere: no branch ran; y = S(x) through option-A shortcuts only
    pooled = F.avg_pool2d(F.avg_pool2d(stem, 2, 2, ceil_mode=True), 2, 2, ceil_mode=True)  # two option-A halvings
    assert out.shape == (2, 256, 2, 2)
    torch.testing.assert_close(out[:, :16], pooled)
    assert not out[:, 16:].any()  # the zero-padded channels


# ------------------------------------------------------------------------------------------------ trainable
def test_registered_trainable_validates_in_one_line() -> None:
    spec = registry.get("preact_resnet")
    assert spec.resolve({"arch": "20x2.5"})["arch"] == "20x2.5"
    assert parse_arch("110x1") == (110, 1.0)
    for overrides, message in [({"ordering": "post"}, "ordering='post'"), ({"depth": 21}, r"6n\+2"),
                               ({"block": "bottleneck", "depth": 32}, r"9n\+2"), ({"arch": "wide"}, "DEPTHxWIDEN"),
                               ({"shortcut_scale": 1.5}, "shortcut_scale"), ({"widen": 0}, "widen")]:
        with pytest.raises(registry.ConfigError, match=message) as err:
            spec.resolve(overrides)
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- the new search spaces
SPACE_PINS = {
    # pinned down to 1-2 cheap trials each (the whole grids are validated in the test above)
    "identity_ablation": ["shortcut=gating", "ordering=original", "depth=8"],
    "swapout_rates": ["swap_schedule=linear", "swap_final=0.5", "depth=8", "inference_samples=2"],  # 2 inference modes
    "depth_vs_width": ["arch=20x1.75"],
}


def test_every_new_space_parses_and_validates() -> None:
    for name in SPACE_PINS:
        space = spaces.load_space(name)
        base = space.validate(registry.get(space.trainable))
        assert space.num_trials() >= 3 and space.searched, name
        assert base["epochs"] <= 3, name  # small default budget


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow sqlite file for the three sweeps (one experiment each): its schema is created once, not thrice."""
    return tmp_path_factory.mktemp("spaces") / "mlflow.db"


@pytest.mark.parametrize("name", list(SPACE_PINS))
def test_every_new_space_starts(name: str, tmp_path: Path, shared_store: Path, ray_address: str) -> None:
    pins = ["epochs=1", "limit_train_batches=1", "batch_size=16", "val_size=64", *SPACE_PINS[name]]
    store = shared_store
    args = [name, "--seeds", "1", "--address", ray_address, "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{store}", "--set", *pins]
    assert sweep.main(args) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    expected = spaces.load_space(name).with_overrides(spaces.parse_overrides(pins))
    expected.seeds = 1
    assert len(children) == expected.num_trials()
    assert all(r.info.status == "FINISHED" and r.data.metrics["train_loss"] > 0 for r in children)
