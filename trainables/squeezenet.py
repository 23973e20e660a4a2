"""SqueezeNet (Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer 2016, arXiv:1602.07360).

The fire module (Sec. 3.2): a squeeze layer of s1x1 1x1 filters feeds an expand layer of e1x1 1x1 and e3x3 3x3
filters (padding 1), whose outputs are concatenated; a ReLU follows every convolution. The eight fire modules
fire2..fire9 (i = 0..7) are sized by the metaparameters of Sec. 5:

    e_i     = base_e + incr_e * floor(i / freq)      expand filters of fire module i
    e3x3_i  = e_i * pct_3x3                          e1x1_i = e_i - e3x3_i
    s1x1_i  = SR * e_i                               SR: the squeeze ratio

v1.0 (Table 1) is base_e = 128, incr_e = 128, freq = 2, pct_3x3 = 0.5, SR = 0.125: fire2 s16 e64/e64, fire3 s16
e64/e64, fire4 s32 e128/e128, fire5 s32 e128/e128, fire6 s48 e192/e192, fire7 s48 e192/e192, fire8 s64 e256/e256,
fire9 s64 e256/e256 (tests/test_squeezenet.py checks it). The macroarchitecture (Table 1, Fig. 2 left): conv1
7x7/2 with 96 filters, max-pool 3x3/2 after conv1, fire4 and fire8 ("late downsampling", Sec. 3.1; ceil mode as in
the paper's Caffe model), dropout 0.5 before conv10 (a 1x1 conv to the classes, ReLU), global average pooling, no
fully connected layer. 1,248,424 parameters with 1000 classes, as in Table 1 and torchvision's squeezenet1_0.

Bypass (Sec. 6, Fig. 2): ``simple`` adds the input to the output of each fire module whose input and output channels
agree (v1.0: fire3, 5, 7, 9); ``complex`` also adds a 1x1 convolution of the input (as many filters as the module
outputs) around the others (v1.0: fire2, 4, 6, 8). The sum is not passed through another ReLU (the bypass models
of the paper's Caffe release add after the concatenation and feed the sum on). Complex bypass on v1.0 adds
341,248 parameters (1,589,672 in all, 6.1 MiB at 32 bits); Table 6 lists 7.7 MB for it and does not say how its
1x1 bypass convs are sized beyond "as many filters as output channels", so that figure is not checked.

Input sizes: ``imagenet`` is v1.0 exactly (224 px in: 109 -> 54 -> 27 -> 13 maps; the paper's Caffe crops 227 and
gets 111 -> 55 -> 27 -> 13; global pooling makes the counts the same). ``small`` is ours, for 28x28 / 32x32 (and
digits' 8x8): conv1 is 3x3/1 with padding 1 instead of 7x7/2, because a 7x7/2 conv on 28 px leaves 11 px and the
three pools would bring fire9 down to 1x1 (its 3x3 expands would see padding only). The pools stay where the paper
puts them: 28 -> 14 -> 7 -> 3 and 32 -> 16 -> 8 -> 4 at fire9. ``auto`` takes ``imagenet`` from 64 px up.
Parameters differ only in conv1 (3x3 instead of 7x7 kernels). ``conv10_relu=False`` drops v1.0's ReLU on the class
maps (the registered trainable's laptop default; see SQUEEZENET_DEFAULTS for why).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainables.classification import register_classifier
from trainables.data import DatasetBundle, known_input_shape
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.registry import ConfigError, check_choice, check_range

BYPASS = ("none", "simple", "complex")
INPUT_SIZES = ("auto", "imagenet", "small")
NUM_FIRE = 8  # fire2 .. fire9
POOL_AFTER_FIRE = (2, 6)  # i of fire4 and fire8: max-pool after them (and after conv1)
CONV1_FILTERS = 96  # Table 1
AUTO_IMAGENET_SIDE = 64  # input_size="auto": the ImageNet stem from this many pixels up


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, so 0.5 * 2k and 0.125 * 8k are exact and no banker's rounding


def fire_filters(i: int, base_e: int = 128, incr_e: int = 128, freq: int = 2, pct_3x3: float = 0.5,
                 sq_ratio: float = 0.125) -> tuple[int, int, int]:
    """(s1x1, e1x1, e3x3) of fire module i (0 = fire2), the paper's Sec. 5 formulas."""
    e = base_e + incr_e * (i // freq)  # e_i = base_e + incr_e * floor(i / freq)
    e3 = _round(e * pct_3x3)  # e_{i,3x3} = e_i * pct_3x3
    e1 = e - e3  # e_{i,1x1} = e_i - e_{i,3x3}
    s = _round(sq_ratio * e)  # s_{i,1x1} = SR * e_i
    if min(s, e1, e3) < 1:
        raise ValueError(f"fire{i + 2} would have s1x1={s}, e1x1={e1}, e3x3={e3}: every layer needs a filter "
                         f"(base_e={base_e}, incr_e={incr_e}, freq={freq}, pct_3x3={pct_3x3}, sq_ratio={sq_ratio})")
    return s, e1, e3


class Fire(nn.Module):
    """squeeze 1x1 (s1x1) -> ReLU -> [expand 1x1 (e1x1) -> ReLU | expand 3x3 pad 1 (e3x3) -> ReLU], concatenated;
    plus an optional bypass: the identity (``simple``, channels must agree) or a 1x1 conv (``complex``)."""

    def __init__(self, in_ch: int, s1x1: int, e1x1: int, e3x3: int, bypass: str = "none") -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, s1x1, 1)
        self.expand1x1 = nn.Conv2d(s1x1, e1x1, 1)
        self.expand3x3 = nn.Conv2d(s1x1, e3x3, 3, padding=1)
        self.out_channels = e1x1 + e3x3
        self.bypass: nn.Module | None = None
        if bypass == "identity":
            if in_ch != self.out_channels:
                raise ValueError(f"an identity bypass needs in == out channels, got {in_ch} -> {self.out_channels}")
            self.bypass = nn.Identity()
        elif bypass == "conv":
            self.bypass = nn.Conv2d(in_ch, self.out_channels, 1)  # Fig. 2 right: filters = the module's outputs
        elif bypass != "none":
            raise ValueError(f"bypass={bypass!r} is not one of 'none', 'identity', 'conv'")

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.squeeze(x))
        out = torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], dim=1)
        return out if self.bypass is None else out + self.bypass(x)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)  # Table 1: maxpool 3x3/2 (Caffe rounds up)


def spatial_sides(side: int, variant: str) -> list[int]:
    """Feature-map side after conv1 and after each of the three pools; ValueError if the input is too small."""
    if variant == "imagenet":
        sides = [(side - 7) // 2 + 1]  # conv1 7x7/2, no padding
    elif variant == "small":
        sides = [side]  # conv1 3x3/1, padding 1
    else:
        raise ValueError(f"variant={variant!r} is not one of 'imagenet', 'small'")
    for _ in range(3):
        if sides[-1] < 2:
            raise ValueError(f"input side {side} is too small for the {variant} SqueezeNet (maps {sides})")
        sides.append(math.ceil((sides[-1] - 3) / 2) + 1)  # pool 3x3/2, ceil mode
    return sides


def resolve_input_size(input_size: str, input_shape: tuple[int, int, int]) -> str:
    """``auto`` -> ``imagenet`` from AUTO_IMAGENET_SIDE pixels up, else ``small``."""
    if input_size == "auto":
        return "imagenet" if min(input_shape[1:]) >= AUTO_IMAGENET_SIDE else "small"
    if input_size not in INPUT_SIZES:
        raise ValueError(f"input_size={input_size!r} is not one of {', '.join(INPUT_SIZES)}")
    return input_size


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, variant: str = "imagenet",
                 base_e: int = 128, incr_e: int = 128, freq: int = 2, pct_3x3: float = 0.5, sq_ratio: float = 0.125,
                 bypass: str = "none", dropout: float = 0.5, conv10_relu: bool = True) -> None:
        super().__init__()
        if bypass not in BYPASS:
            raise ValueError(f"bypass={bypass!r} is not one of {', '.join(BYPASS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if freq < 1 or base_e < 1 or incr_e < 0:
            raise ValueError(f"need base_e >= 1, incr_e >= 0, freq >= 1, got {base_e}, {incr_e}, {freq}")
        self.variant = variant
        if variant == "imagenet":
            conv1 = nn.Conv2d(in_channels, CONV1_FILTERS, 7, stride=2)  # Table 1: conv1 7x7/2, 96 filters
        elif variant == "small":
            conv1 = nn.Conv2d(in_channels, CONV1_FILTERS, 3, padding=1)  # ours: keep 28/32 px maps (docstring)
        else:
            raise ValueError(f"variant={variant!r} is not one of 'imagenet', 'small'")
        layers: list[nn.Module] = [conv1, nn.ReLU(inplace=True), _pool()]
        in_ch = CONV1_FILTERS
        for i in range(NUM_FIRE):
            s, e1, e3 = fire_filters(i, base_e, incr_e, freq, pct_3x3, sq_ratio)
            matches = in_ch == e1 + e3
            kind = "none" if bypass == "none" else "identity" if matches else "conv" if bypass == "complex" else "none"
            layers.append(Fire(in_ch, s, e1, e3, kind))
            in_ch = e1 + e3
            if i in POOL_AFTER_FIRE:
                layers.append(_pool())
        self.features = nn.Sequential(*layers)
        self.conv10 = nn.Conv2d(in_ch, num_classes, 1)  # conv10 1x1/1 to the classes: no fully connected layer
        # dropout 50% before conv10; conv10's ReLU (v1.0 has it: class scores are averaged ReLU maps); avgpool10
        relu10: list[nn.Module] = [nn.ReLU(inplace=True)] if conv10_relu else []
        self.classifier = nn.Sequential(nn.Dropout(dropout), self.conv10, *relu10, nn.AdaptiveAvgPool2d(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.conv10:
                    nn.init.normal_(m.weight, 0.0, 0.01)  # the Caffe model's gaussian std 0.01 for conv10
                else:
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # He init: no BN in this net
                nn.init.zeros_(m.bias)

    def fire_modules(self) -> list[Fire]:
        return [m for m in self.features if isinstance(m, Fire)]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)


def build_squeezenet(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
                     input_size: str = "auto", **metaparameters: Any) -> SqueezeNet:
    """SqueezeNet for ``input_shape`` (C, H, W); ``metaparameters``: base_e, incr_e, freq, pct_3x3, sq_ratio,
    bypass, dropout (v1.0's values by default). Raises ValueError if the input is too small for the variant."""
    variant = resolve_input_size(input_size, input_shape)
    spatial_sides(min(input_shape[1:]), variant)  # raises on inputs the pools cannot take
    return SqueezeNet(num_classes, input_shape[0], variant, **metaparameters)


# ---- the registered trainable ------------------------------------------------------------------------------------

SQUEEZENET_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "base_e": 128,  # Sec. 5 metaparameters; the defaults are v1.0
    "incr_e": 128,
    "freq": 2,
    "pct_3x3": 0.5,
    "sq_ratio": 0.125,  # SR
    "bypass": "none",  # none | simple (identity where channels agree) | complex (+ 1x1 conv elsewhere)
    "dropout": 0.5,  # before conv10
    # v1.0 puts a ReLU on conv10 before the average pool (build_squeezenet keeps it by default). The trainable turns
    # it off: with 10 classes a class whose conv10 maps all go negative gets no gradient again (measured on digits,
    # Adam 1e-3: val_error stuck at 0.64 after 6 epochs with it, 0.40 after 3 without). --set conv10_relu=true.
    "conv10_relu": False,
    "input_size": "auto",  # auto | imagenet (v1.0 stem) | small (3x3/1 conv1, for 28/32 px)
    # The paper trains with SGD (momentum 0.9, weight decay 2e-4) from lr 0.04, decayed linearly over the run, at
    # batch 512 on ImageNet. Without BN this net is slow to start on plain SGD at laptop budgets; Adam at 1e-3 with
    # the same linear decay learns MNIST-5k in a couple of epochs. Use --set optimizer=sgd lr=0.04 momentum=0.9
    # nesterov=false weight_decay=2e-4 for the paper's optimizer.
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "linear",
    "lr_final": 0.1,  # the schedule steps per epoch and lr * lr_final is the last epoch's: 0 would waste it
    "batch_size": 64,
    "norm": "none",  # none | weight (trainables/normalization): SqueezeNet has no batch norm to switch
}


def validate_squeezenet(config: dict[str, Any]) -> None:
    check_range(config, "base_e", 1)
    check_range(config, "incr_e", 0)
    check_range(config, "freq", 1)
    check_range(config, "pct_3x3", 0.0, 1.0, low_open=True, high_open=True)  # the paper sweeps 1% to 99%
    check_range(config, "sq_ratio", 0.0, 1.0, low_open=True)  # the paper sweeps 0.125 to 1.0
    check_choice(config, "bypass", BYPASS)
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    check_choice(config, "input_size", INPUT_SIZES)
    check_choice(config, "norm", ("none", "weight"))  # no batch norm: batch / mean-only variants would change nothing
    for i in range(NUM_FIRE):
        try:
            fire_filters(i, config["base_e"], config["incr_e"], config["freq"], config["pct_3x3"], config["sq_ratio"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    shape = known_input_shape(config["dataset"])
    if shape is not None:  # too small an image for the variant's pools: say so now, not in every trial
        try:
            spatial_sides(min(shape[1:]), resolve_input_size(config["input_size"], shape))
        except ValueError as err:
            raise ConfigError(f"dataset {config['dataset']!r}: {err} (use input_size='small' or 'auto')") from None


def build(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """The SqueezeNet ``config`` describes for ``data`` (the model tool: Deep Compression rebuilds nets with it)."""
    return apply_norm(build_squeezenet(
        num_classes=data.num_classes, input_shape=data.input_shape, input_size=config["input_size"],
        base_e=config["base_e"], incr_e=config["incr_e"], freq=config["freq"], pct_3x3=config["pct_3x3"],
        sq_ratio=config["sq_ratio"], bypass=config["bypass"], dropout=config["dropout"],
        conv10_relu=config["conv10_relu"],
    ), config["norm"])


train_squeezenet = register_classifier(
    "squeezenet", build, defaults=SQUEEZENET_DEFAULTS, validate=validate_squeezenet,
    description="SqueezeNet (Iandola et al. 2016): fire modules sized by base_e, incr_e, freq, pct_3x3, SR; bypass "
                "variants.")
