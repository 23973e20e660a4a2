"""Tests of Inception-v4 and Inception-ResNet-v2 (trainables/inception.py, trainables/inception_blocks.py); no Ray."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainables import inception_blocks as ib
from trainables import registry
from trainables.inception import build, build_inception, residual_blocks

torch.set_num_threads(1)  # the machine is shared; every test here is sized for one thread


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- parameter counts by hand, from the paper's figures (independent of the module code) -------------------------
def conv(cin: int, cout: int, kh: int = 1, kw: int = 1) -> int:
    return cin * cout * kh * kw + 2 * cout  # Conv-BN-ReLU: no conv bias, BN gamma and beta (running stats: buffers)


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout  # the residual blocks' "1x1 Conv (Linear)" and the classifier: weight and bias


STEM = (conv(3, 32, 3, 3) + conv(32, 32, 3, 3) + conv(32, 64, 3, 3) + conv(64, 96, 3, 3)  # Fig. 3
        + conv(160, 64) + conv(64, 96, 3, 3) + conv(160, 64) + conv(64, 64, 7, 1) + conv(64, 64, 1, 7)
        + conv(64, 96, 3, 3) + conv(192, 192, 3, 3))


def red_a(c: int, k: int, l_: int, m: int, n: int) -> int:
    return conv(c, n, 3, 3) + conv(c, k) + conv(k, l_, 3, 3) + conv(l_, m, 3, 3)  # Fig. 7


def v4_params(classes: int) -> int:
    a = conv(384, 96) * 2 + conv(384, 64) * 2 + conv(64, 96, 3, 3) * 2 + conv(96, 96, 3, 3)  # Fig. 4
    b = (conv(1024, 128) + conv(1024, 384) + conv(1024, 192) * 2 + conv(192, 224, 1, 7) + conv(224, 256, 7, 1)
         + conv(192, 192, 1, 7) + conv(192, 224, 7, 1) + conv(224, 224, 1, 7) + conv(224, 256, 7, 1))  # Fig. 5
    c = (conv(1536, 256) * 2 + conv(1536, 384) * 2 + conv(384, 256, 1, 3) * 2 + conv(384, 448, 1, 3)
         + conv(448, 512, 3, 1) + conv(512, 256, 1, 3) * 2)  # Fig. 6
    rb = conv(1024, 192) + conv(192, 192, 3, 3) + conv(1024, 256) + conv(256, 256, 1, 7) + conv(256, 320, 7, 1) \
        + conv(320, 320, 3, 3)  # Fig. 8
    return STEM + 4 * a + red_a(384, 192, 224, 256, 384) + 7 * b + rb + 3 * c + linear(1536, classes)


def irv2_params(classes: int, tf_slim: bool = False) -> int:
    def ira(c: int) -> int:  # Fig. 16
        return conv(c, 32) * 3 + conv(32, 32, 3, 3) + conv(32, 48, 3, 3) + conv(48, 64, 3, 3) + linear(128, c)

    def irb(c: int) -> int:  # Fig. 17
        return conv(c, 192) + conv(c, 128) + conv(128, 160, 1, 7) + conv(160, 192, 7, 1) + linear(384, c)

    def irc(c: int) -> int:  # Fig. 19
        return conv(c, 192) * 2 + conv(192, 224, 1, 3) + conv(224, 256, 3, 1) + linear(448, c)

    def red_b2(c: int) -> int:  # Fig. 18
        return conv(c, 256) * 3 + conv(256, 384, 3, 3) + conv(256, 288, 3, 3) * 2 + conv(288, 320, 3, 3)

    if not tf_slim:  # Fig. 15: 35x35x384 -> 17x17x1152 -> 8x8x2144
        return (STEM + 5 * ira(384) + red_a(384, 256, 256, 384, 384) + 10 * irb(1152) + red_b2(1152) + 5 * irc(2144)
                + linear(2144, classes))
    stem_tf = (conv(3, 32, 3, 3) + conv(32, 32, 3, 3) + conv(32, 64, 3, 3) + conv(64, 80) + conv(80, 192, 3, 3)
               + conv(192, 96) + conv(192, 48) + conv(48, 64, 5, 5) + conv(192, 64) * 2 + conv(64, 96, 3, 3)
               + conv(96, 96, 3, 3))  # 35x35x320
    return (stem_tf + 10 * ira(320) + red_a(320, 256, 256, 384, 384) + 20 * irb(1088) + red_b2(1088) + 10 * irc(2080)
            + conv(2080, 1536) + linear(1536, classes))


def test_parameter_counts_of_the_full_size_models() -> None:
    """Inception-v4 is the reference implementations' network exactly: 42,679,816 parameters with 1000 classes in
    timm (`inception_v4`), osmr/imgclsmob (`InceptionV4`) and keras-hub (`inception_v4_imagenet`), none of which
    has the TF-slim auxiliary head; BN's gamma and beta count, its running statistics are buffers. The released
    Inception-ResNet-v2 (timm/Cadene/imgclsmob: 55,843,464) is not Fig. 15's net (another stem, twice the blocks,
    a 1x1 conv to 1536 at the end): our ``layout="tf_slim"`` rebuilds it to the parameter, and the paper layout
    (Figs. 3, 15-19) matches the count by hand from the figures. (The NOTES' timm figures 41,158,186 and
    54,321,834 are these nets with 10 classes: 1537 x 990 parameters fewer.)"""
    v4, v4_10 = build_inception(arch="inception_v4"), build_inception(arch="inception_v4", num_classes=10)
    released = build_inception(arch="inception_resnet_v2", layout="tf_slim")
    paper = build_inception(arch="inception_resnet_v2")  # no forward: about 1 s of CPU per model
    assert _params(v4) == v4_params(1000) == 42_679_816
    assert _params(v4_10) == v4_params(10) == 41_158_186
    assert _params(released) == irv2_params(1000, tf_slim=True) == 55_843_464
    assert [b.scale for b in residual_blocks(released)] == [0.17] * 10 + [0.1] * 20 + [0.2] * 9 + [1.0]
    assert not residual_blocks(released)[-1].relu and sum(b.relu for b in residual_blocks(released)) == 39
    assert _params(paper) == irv2_params(1000) == 32_433_928
    assert len(residual_blocks(paper)) == 20 and len(residual_blocks(released)) == 40


# ---- shapes --------------------------------------------------------------------------------------------------------
KLMN_V4, KLMN_R2 = ib.REDUCTION_A_KLMN["inception_v4"], ib.REDUCTION_A_KLMN["inception_resnet_v2"]


@pytest.mark.parametrize(("make", "shape", "expected"), [
    (lambda: ib.inception_a(384, 1.0), (1, 384, 5, 5), (1, 384, 5, 5)),  # Fig. 4: 4 x 96
    (lambda: ib.inception_b(1024, 1.0), (1, 1024, 5, 5), (1, 1024, 5, 5)),  # Fig. 5: 384 + 256 + 256 + 128
    (lambda: ib.inception_c(1536, 1.0), (1, 1536, 3, 3), (1, 1536, 3, 3)),  # Fig. 6: 256 + 512 + 512 + 256
    (lambda: ib.reduction_a(384, KLMN_V4, 1.0, False), (1, 384, 9, 9), (1, 1024, 4, 4)),  # Fig. 7: 384 + n + m
    (lambda: ib.reduction_b(1024, 1.0, False), (1, 1024, 9, 9), (1, 1536, 4, 4)),  # Fig. 8: 1024 + 192 + 320
    (lambda: ib.ir_a(384, 1.0, 0.2), (1, 384, 5, 5), (1, 384, 5, 5)),  # Fig. 16
    (lambda: ib.reduction_a(384, KLMN_R2, 1.0, False), (1, 384, 9, 9), (1, 1152, 4, 4)),  # 384 + 384 + 384
    (lambda: ib.ir_b(1152, 1.0, 0.2), (1, 1152, 5, 5), (1, 1152, 5, 5)),  # Fig. 17
    (lambda: ib.reduction_b_v2(1152, 1.0, False), (1, 1152, 9, 9), (1, 2144, 4, 4)),  # Fig. 18: + 384 + 288 + 320
    (lambda: ib.ir_c(2144, 1.0, 0.2), (1, 2144, 3, 3), (1, 2144, 3, 3)),  # Fig. 19
    (lambda: ib.reduction_a(24, KLMN_V4, 0.25, True), (2, 24, 7, 7), (2, 24 + 96 + 64, 4, 4)),  # small: 7 -> 4
    (lambda: ib.reduction_b_v2(16, 0.25, True), (2, 16, 14, 14), (2, 16 + 96 + 72 + 80, 7, 7)),  # small: 14 -> 7
    (lambda: ib.stem(1, 0.25, True), (2, 1, 28, 28), (2, 96, 14, 14)),  # small stem: 28 -> 14
    (lambda: ib.tf_slim_stem(3), (1, 3, 75, 75), (1, 320, 7, 7)),  # 75 -> 37 -> 35 -> 17 -> 15 -> 7
])
def test_block_output_shapes(make, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:  # noqa: ANN001
    block = make().eval()
    with torch.no_grad():
        out = block(torch.randn(shape))
    assert tuple(out.shape) == expected
    assert block.out_channels == expected[1]


def _grids(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    grids: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: grids.append(tuple(out.shape[1:])))
             for m in (model.stem, model.stage_a, model.stage_b, model.stage_c)]
    with torch.no_grad():
        out = model.eval()(x)
    for h in hooks:
        h.remove()
    return out, grids


@pytest.mark.parametrize(("arch", "widths"), [("inception_v4", (384, 1024, 1536)),
                                              ("inception_resnet_v2", (384, 1152, 2144))])
def test_full_size_forward_299(arch: str, widths: tuple[int, int, int]) -> None:
    """299x299x3 -> 35x35 -> 17x17 -> 8x8 -> 1000 logits (one block per stage: the grids and widths are the same)."""
    model = build_inception(arch=arch, blocks=(1, 1, 1))
    out, grids = _grids(model, torch.randn(1, 3, 299, 299))
    a, b, c = widths
    assert tuple(out.shape) == (1, 1000) and torch.isfinite(out).all()
    assert grids == [(384, 35, 35), (a, 35, 35), (b, 17, 17), (c, 8, 8)]


@pytest.mark.parametrize("arch", ["inception_v4", "inception_resnet_v2"])
@pytest.mark.parametrize(("shape", "grid"), [((2, 1, 28, 28), (14, 7, 4)), ((2, 3, 32, 32), (16, 8, 4))])
def test_small_input_variant(arch: str, shape: tuple[int, ...], grid: tuple[int, int, int]) -> None:
    model = build(registry.get("inception").resolve({"arch": arch}),
                  SimpleNamespace(input_shape=shape[1:], num_classes=10))  # input_size auto -> small
    out, grids = _grids(model, torch.randn(shape))
    assert tuple(out.shape) == (2, 10) and torch.isfinite(out).all()
    assert [g[1] for g in grids] == [grid[0], grid[0], grid[1], grid[2]]
    model.train()(torch.randn(shape)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_auto_input_size_picks_the_paper_stem_for_large_images() -> None:
    config = registry.get("inception").resolve({"width": 0.125})
    first = build(config, SimpleNamespace(input_shape=(3, 299, 299), num_classes=5)).stem[0][0]
    assert (first.stride, first.padding) == ((2, 2), (0, 0))  # Fig. 3: 3x3/2 V
    small = build(config, SimpleNamespace(input_shape=(3, 74, 74), num_classes=5)).stem[0][0]
    assert small.padding == (1, 1)
    forced = build({**config, "input_size": "full"}, SimpleNamespace(input_shape=(3, 80, 80), num_classes=5))
    assert forced.stem[0][0].padding == (0, 0)


# ---- residual scaling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda s: ib.ir_a(16, 0.25, s), lambda s: ib.ir_b(24, 0.25, s),
                                  lambda s: ib.ir_c(32, 0.25, s)])
def test_block_output_is_relu_of_x_plus_scaled_branch(make) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    block = make(0.2).double().eval()
    assert isinstance(block, ib.ResidualInception) and block.scale == 0.2
    for m in block.modules():  # non-trivial BN statistics, so the branch is far from zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, block.out_channels, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        f = block.up(torch.cat([b(x) for b in block.branches.branches], dim=1))  # F(x) by hand
        assert f.abs().mean() > 0.1
        for s in (0.1, 0.3, 1.0):
            block.scale = s
            assert torch.allclose(block(x), torch.relu(x + s * f), atol=1e-12, rtol=0)  # ReLU(x + s F(x))
        block.scale = 0.1
        assert not torch.allclose(block(x), torch.relu(x + f))  # the scale matters
        nn.init.zeros_(block.up.weight)
        nn.init.zeros_(block.up.bias)
        assert torch.equal(block(x), torch.relu(x))  # zero branch: the block is ReLU(x)


def test_configured_scale_reaches_every_residual_block() -> None:
    spec = registry.get("inception")
    data = SimpleNamespace(input_shape=(1, 28, 28), num_classes=10)
    model = build(spec.resolve({"residual_scale": 0.3, "blocks": [2, 3, 1]}), data)
    assert [b.scale for b in residual_blocks(model)] == [0.3] * 6
    assert residual_blocks(build(spec.resolve({"arch": "inception_v4"}), data)) == []
    per_stage = build_inception(arch="inception_resnet_v2", small=True, width=0.125, residual_scale=(0.1, 0.2, 0.3))
    assert sorted({b.scale for b in residual_blocks(per_stage)}) == [0.1, 0.2, 0.3]


# ---- the registered trainable ---------------------------------------------------------------------------------------
def test_registration_and_validation() -> None:
    spec = registry.get("inception")
    assert spec.primary == "val_error" and spec.mode("val_error") == "min" and spec.tools["model"] is build
    assert spec.defaults["dropout"] == pytest.approx(0.2)  # the paper's keep probability 0.8
    for overrides, message in [({"arch": "inception_v3"}, "arch="), ({"input_size": "full"}, "at least 75x75"),
                               ({"residual_scale": 0.0}, "residual_scale"), ({"residual_scale": 1.5}, "residual_scale"),
                               ({"blocks": [1, 1]}, "three block counts"), ({"blocks": [1, -1, 1]}, "three block"),
                               ({"width": 0.0}, "width"), ({"dropout": 1.0}, "dropout")]:
        with pytest.raises(registry.ConfigError, match=message) as err:
            spec.resolve(overrides)
        assert "\n" not in str(err.value)
    v4 = [spec.canonical_form(spec.resolve({"arch": "inception_v4", "residual_scale": s})) for s in (0.1, 1.0)]
    assert v4[0] == v4[1]  # Inception-v4 has no residual blocks: one trial, whatever s
    r2 = [spec.canonical_form(spec.resolve({"residual_scale": s})) for s in (0.1, 1.0)]
    assert r2[0] != r2[1]


def test_the_trainable_learns_digits_in_a_bounded_budget(tmp_path) -> None:  # noqa: ANN001
    """Laptop defaults (Inception-ResNet-v2, small input, width 0.125, one block per stage) on sklearn digits:
    three epochs of ~1,260 images must bring the validation error far below chance (0.9)."""
    from trainables.context import LocalContext

    spec = registry.get("inception")
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({"dataset": "digits", "epochs": 3}), ctx)
    errors = [r["val_error"] for r in ctx.results]
    assert len(errors) == 3 and errors[-1] < 0.4 and errors[-1] < errors[0]
    assert ctx.results[-1]["train_loss"] < ctx.results[0]["train_loss"]


def test_the_shipped_space_sweeps_the_scale_and_compares_archs_by_set() -> None:
    from orchestrator import spaces

    spec, space = registry.get("inception"), spaces.load_space("inception_residual_scale")
    base = space.validate(spec)
    assert (base["arch"], base["input_size"], space.seeds) == ("inception_resnet_v2", "small", 3)
    assert space.searched == {"residual_scale": {"grid": [0.1, 0.2, 0.3, 1.0]}} and space.num_trials() == 12
    v4 = space.with_overrides({"arch": "inception_v4"})  # --set arch=inception_v4: s changes nothing, once per seed
    v4.validate(spec)
    assert v4.num_trials() == 3
