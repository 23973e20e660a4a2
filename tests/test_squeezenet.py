"""SqueezeNet (trainables/squeezenet.py): fire modules, the paper's Table 1 counts, bypass, small inputs, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import registry
from trainables.squeezenet import Fire, SqueezeNet, build_squeezenet, fire_filters, resolve_input_size, spatial_sides

# Table 1 of the paper: (s1x1, e1x1, e3x3) of fire2 .. fire9 in SqueezeNet v1.0.
TABLE1 = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
          (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
TABLE1_PARAMS = 1_248_424  # Table 1, "total" (also torchvision's squeezenet1_0, NOTES.md)
# The AlexNet the paper compares with (Caffe's bvlc_alexnet, grouped conv2/4/5): 60,965,224 parameters.
# torchvision's AlexNet (64-192-384-256-256 filters, no groups) has 61,100,840.
BVLC_ALEXNET_PARAMS = 60_965_224
TORCHVISION_ALEXNET_PARAMS = 61_100_840


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fire_params(c_in: int, s: int, e1: int, e3: int) -> int:
    """Weights plus biases: squeeze 1x1, expand 1x1, expand 3x3."""
    return c_in * s + s + s * e1 + e1 + 9 * s * e3 + e3


def _alexnet(grouped: bool) -> nn.Module:
    """AlexNet on the meta device (shapes only, no memory): grouped = Krizhevsky's / Caffe's two-GPU split."""
    g = 2 if grouped else 1
    widths = (96, 256, 384, 384, 256) if grouped else (64, 192, 384, 256, 256)
    with torch.device("meta"):
        return nn.Sequential(
            nn.Conv2d(3, widths[0], 11, stride=4), nn.Conv2d(widths[0], widths[1], 5, padding=2, groups=g),
            nn.Conv2d(widths[1], widths[2], 3, padding=1), nn.Conv2d(widths[2], widths[3], 3, padding=1, groups=g),
            nn.Conv2d(widths[3], widths[4], 3, padding=1, groups=g),
            nn.Linear(256 * 6 * 6, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000))


# ---------------------------------------------------------------------------------------------- the paper's table
def test_metaparameters_reproduce_table1() -> None:
    assert [fire_filters(i) for i in range(8)] == TABLE1
    net = build_squeezenet()
    assert [(f.squeeze.out_channels, f.expand1x1.out_channels, f.expand3x3.out_channels)
            for f in net.fire_modules()] == TABLE1
    # another point of the design space: e_i = 64 + 32 floor(i / 1), 3x3 share 0.25, SR 0.25
    assert fire_filters(3, base_e=64, incr_e=32, freq=1, pct_3x3=0.25, sq_ratio=0.25) == (40, 120, 40)


def test_v1_parameter_count_matches_table1_exactly() -> None:
    net = build_squeezenet(num_classes=1000)
    by_hand = 96 * 3 * 49 + 96 + 512 * 1000 + 1000  # conv1 7x7, conv10 1x1
    c_in = 96
    for s, e1, e3 in TABLE1:
        by_hand += _fire_params(c_in, s, e1, e3)
        c_in = e1 + e3
    assert _count(net) == by_hand == TABLE1_PARAMS
    assert not any(isinstance(m, nn.Linear) for m in net.modules())  # no fully connected layer


def test_alexnet_is_about_50x_larger() -> None:
    assert _count(_alexnet(grouped=True)) == BVLC_ALEXNET_PARAMS
    assert _count(_alexnet(grouped=False)) == TORCHVISION_ALEXNET_PARAMS
    ratio = BVLC_ALEXNET_PARAMS / _count(build_squeezenet())
    assert ratio == pytest.approx(48.83, abs=0.01)  # the abstract's "50x fewer parameters"


def test_v1_layout_pools_dropout_and_map_sizes() -> None:
    net = build_squeezenet().eval()
    kinds = ["pool" if isinstance(m, nn.MaxPool2d) else "fire" if isinstance(m, Fire) else type(m).__name__
             for m in net.features]
    assert kinds == ["Conv2d", "ReLU", "pool", "fire", "fire", "fire", "pool", "fire", "fire", "fire", "fire", "pool",
                     "fire"]  # late max-pooling: after conv1, fire4, fire8
    assert (net.features[0].kernel_size, net.features[0].stride, net.features[0].out_channels) == ((7, 7), (2, 2), 96)
    assert [type(m) for m in net.classifier] == [nn.Dropout, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d]
    assert net.classifier[0].p == 0.5
    sides: list[int] = []
    for m in net.features:
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and sides == [54, 27, 13] == spatial_sides(224, "imagenet")[1:]


# ---------------------------------------------------------------------------------------------- fire module
@pytest.mark.parametrize(("c_in", "s", "e1", "e3"), [(96, 16, 64, 64), (128, 32, 96, 32)])
def test_fire_module_channels_and_order(c_in: int, s: int, e1: int, e3: int) -> None:
    fire = Fire(c_in, s, e1, e3)
    x = torch.randn(2, c_in, 13, 11)
    out = fire(x)
    assert out.shape == (2, e1 + e3, 13, 11) and fire.out_channels == e1 + e3  # padding 1 keeps the 3x3 map size
    assert _count(fire) == _fire_params(c_in, s, e1, e3)
    assert (out >= 0).all() and (out > 0).any()  # ReLU after each expand, no bypass
    with torch.no_grad():  # silence expand 3x3: the last e3 channels are its output, the first e1 are expand 1x1's
        fire.expand3x3.weight.zero_()
        fire.expand3x3.bias.fill_(-1.0)
        out = fire(x)
    assert torch.equal(out[:, e1:], torch.zeros_like(out[:, e1:])) and (out[:, :e1] > 0).any()


def test_simple_bypass_is_an_identity_add_only_where_channels_match() -> None:
    simple = build_squeezenet(bypass="simple")
    plain = build_squeezenet(bypass="none")
    assert [type(f.bypass).__name__ for f in simple.fire_modules()] == ["NoneType", "Identity"] * 4  # fire3,5,7,9
    assert all(f.bypass is None for f in plain.fire_modules())
    assert _count(simple) == _count(plain)
    fire3 = simple.fire_modules()[1]
    x = torch.randn(2, 128, 9, 9)
    no_bypass = Fire(128, 16, 64, 64)
    no_bypass.load_state_dict(fire3.state_dict())
    assert torch.allclose(fire3(x), no_bypass(x) + x)
    with pytest.raises(ValueError, match="identity bypass needs in == out"):
        Fire(96, 16, 64, 64, "identity")


def test_complex_bypass_adds_1x1_convs_elsewhere() -> None:
    net = build_squeezenet(bypass="complex")
    fires = net.fire_modules()
    convs = [f.bypass for f in fires[0::2]]  # fire2, 4, 6, 8: channels change
    assert all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) for c in convs)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(96, 128), (128, 256), (256, 384), (384, 512)]
    assert all(isinstance(f.bypass, nn.Identity) for f in fires[1::2])
    extra = sum(c_in * c_out + c_out for c_in, c_out in [(96, 128), (128, 256), (256, 384), (384, 512)])
    assert _count(net) - TABLE1_PARAMS == extra == 341_248
    fire2 = fires[0]
    x = torch.randn(1, 96, 5, 5)
    assert torch.allclose(fire2(x), torch.cat([torch.relu(fire2.expand1x1(torch.relu(fire2.squeeze(x)))),
                                               torch.relu(fire2.expand3x3(torch.relu(fire2.squeeze(x))))], 1)
                          + fire2.bypass(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------- input sizes
@pytest.mark.parametrize(("shape", "classes", "pooled"),
                         [((1, 28, 28), 10, [14, 7, 3]), ((3, 32, 32), 100, [16, 8, 4])])
def test_small_input_variant(shape: tuple[int, int, int], classes: int, pooled: list[int]) -> None:
    assert resolve_input_size("auto", shape) == "small"
    net = build_squeezenet(num_classes=classes, input_shape=shape)
    conv1 = net.features[0]
    assert (net.variant, conv1.kernel_size, conv1.stride, conv1.padding) == ("small", (3, 3), (1, 1), (1, 1))
    sides: list[int] = []
    for m in net.features:
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    for training in (True, False):
        out = net.train(training)(torch.randn(2, *shape))
        assert out.shape == (2, classes) and torch.isfinite(out).all()
    assert sides == pooled * 2
    # only conv1's kernel differs from the ImageNet-size net of the same channels and classes
    big = build_squeezenet(num_classes=classes, input_shape=(shape[0], 224, 224))
    assert _count(big) - _count(net) == 96 * shape[0] * (49 - 9)


def test_auto_input_size_and_too_small_inputs() -> None:
    assert resolve_input_size("auto", (3, 224, 224)) == resolve_input_size("auto", (3, 64, 64)) == "imagenet"
    assert resolve_input_size("auto", (1, 8, 8)) == "small"
    assert build_squeezenet(input_shape=(1, 28, 28), input_size="small", num_classes=3)(
        torch.randn(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(ValueError, match="too small for the imagenet SqueezeNet"):
        build_squeezenet(input_shape=(1, 16, 16), input_size="imagenet")  # 16 -> conv1 5 -> 2 -> 1 -> nothing


# ---------------------------------------------------------------------------------------------- the trainable
@pytest.mark.parametrize(("overrides", "message"), [
    ({"pct_3x3": 1.0}, "pct_3x3=1.0 is out of range"), ({"sq_ratio": 0.0}, "sq_ratio=0.0 is out of range"),
    ({"bypass": "dense"}, "bypass='dense' is not one of"), ({"input_size": "huge"}, "input_size='huge'"),
    ({"sq_ratio": 0.001}, "fire2 would have s1x1=0"), ({"freq": 0}, "freq=0 is out of range"),
    ({"dropout": 1.0}, "dropout=1.0 is out of range"),
    ({"dataset": "digits", "input_size": "imagenet"}, "dataset 'digits': input side 8 is too small for the imagenet"),
])
def test_config_validation(overrides: dict, message: str) -> None:
    spec = registry.get("squeezenet")
    with pytest.raises(registry.ConfigError, match=message) as err:
        spec.resolve(overrides)
    assert "\n" not in str(err.value)


def test_registration_and_model_tool() -> None:
    from trainables.loop import load_data

    spec = registry.get("squeezenet")
    assert spec.primary == "val_error" and spec.mode("val_error") == "min"
    config = spec.resolve({"dataset": "digits", "bypass": "complex", "sq_ratio": 0.25})
    data = load_data(config)
    net = spec.tools["model"](config, data)
    assert isinstance(net, SqueezeNet) and net.variant == "small" and net.conv10.out_channels == data.num_classes
    assert [f.squeeze.out_channels for f in net.fire_modules()] == [32, 32, 64, 64, 96, 96, 128, 128]  # SR e_i
    assert net(torch.zeros(2, *data.input_shape)).shape == (2, 10)


def test_squeezenet_learns_digits_in_a_bounded_budget(tmp_path) -> None:  # noqa: ANN001
    """Three epochs of the registered defaults on digits (8x8, 10 classes; ~30 s on one thread here): the error
    must fall far below chance (0.9). Measured: val_error 0.40 after 3 epochs."""
    from trainables.context import LocalContext

    torch.set_num_threads(1)
    spec = registry.get("squeezenet")
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({"dataset": "digits", "epochs": 3}), ctx)
    first, last = ctx.results[0], ctx.results[-1]
    assert len(ctx.results) == 3
    assert last["val_error"] < 0.6 and last["test_error"] < 0.6
    assert last["train_loss"] < first["train_loss"] - 0.3
