"""Original and pre-activation ResNets (He et al. 2015, 2016), bottleneck units, Wide ResNets, stochastic depth.

Net: stem -> three stages of n residual units (widths 16k, 32k, 64k, times 4 for bottleneck units; the first unit
of stages 2 and 3 halves the resolution) -> [final BN-ReLU for pre-activation] -> global average pool -> linear.

    basic units:       depth = 6n + 2   (ResNet-110: n = 18, ~1.7M parameters)
    bottleneck units:  depth = 9n + 2   (ResNet-164: n = 18, ~1.7M parameters)
    widen k:           stage widths 16k / 32k / 64k (Zagoruyko & Komodakis 2016; parameters grow ~k^2)
    stem "cifar":      conv3x3(16)-BN-ReLU;  "imagenet": conv7x7/2(16)-BN-ReLU-maxpool3x3/2 (He et al. 2015)

The units (shortcut variants x orderings) are in ``trainables/identity_mappings.py``; the survival probabilities
p_l of stochastic depth come from ``trainables/stochastic_depth.py`` (one Bernoulli gate per unit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from trainables.classification import register_classifier
from trainables.data import DatasetBundle
from trainables.identity_mappings import (
    BLOCKS,
    BOTTLENECK_EXPANSION,
    ORDERINGS,
    PREACT_ORDERINGS,
    SHORTCUTS,
    ResidualUnit,
)
from trainables.layers import block_seed
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.registry import ConfigError, check_choice, check_range
from trainables.stochastic_depth import SCHEDULES, canonical_schedule, survival_probabilities

STEMS = ("cifar", "imagenet")
_BASE_WIDTHS = (16, 32, 64)
_ARCH = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)$")

# make_unit(in_ch, out_ch, stride, index l = 0..L-1 in network order, first_unit) -> nn.Module
UnitFactory = Callable[[int, int, int, int, bool], nn.Module]


def units_per_stage(depth: int, block: str) -> int:
    """n from depth = 6n + 2 (basic) or 9n + 2 (bottleneck); ValueError with the valid depths otherwise."""
    per_unit = 2 if block == "basic" else 3  # convs per unit
    n, rest = divmod(depth - 2, 3 * per_unit)
    if isinstance(depth, bool) or not isinstance(depth, int) or n < 1 or rest:
        examples = "20, 32, 44, 56, 110, 1202" if block == "basic" else "29, 47, 164, 1001"
        raise ValueError(f"depth={depth!r} must be {3 * per_unit}n+2 for {block} units ({examples})")
    return n


def stage_widths(widen: float, block: str) -> list[int]:
    """Output channels of the three stages: round(16k), round(32k), round(64k), x4 for bottleneck units."""
    expansion = BOTTLENECK_EXPANSION if block == "bottleneck" else 1
    return [max(1, round(w * widen)) * expansion for w in _BASE_WIDTHS]


def parse_arch(arch: str) -> tuple[int, float]:
    """``"110x1"`` -> (110, 1.0): depth x widening factor, one categorical value for paired sweeps."""
    match = _ARCH.match(arch)
    if not match:
        raise ValueError(f"arch={arch!r} must be DEPTHxWIDEN, e.g. 110x1 or 20x2.5")
    return int(match.group(1)), float(match.group(2))


class ResidualNet(nn.Module):
    """stem -> 3 stages of n units from ``make_unit`` -> head (BN-ReLU / ReLU / nothing) -> pool -> linear."""

    def __init__(self, n: int, widths: list[int], make_unit: UnitFactory, *, num_classes: int, in_channels: int,
                 stem: str = "cifar", head: str = "none") -> None:
        super().__init__()
        stem_ch = _BASE_WIDTHS[0]  # 16 channels whatever the widening, as in the CIFAR ResNets and Wide ResNets
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_ch, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True))
        else:  # He et al. 2015's ImageNet stem: 7x7/2 conv, 3x3/2 max pool (input resolution / 4)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_ch, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        stages: list[nn.Module] = []
        in_ch, ell = stem_ch, 0
        for stage, width in enumerate(widths):
            units = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                units.append(make_unit(in_ch, width, stride, ell, ell == 0))
                in_ch, ell = width, ell + 1
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        # Pre-activation nets end on an addition: the paper adds a final activation before pooling.
        if head == "bn_relu":
            self.head: nn.Module = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True))
        elif head == "relu":
            self.head = nn.ReLU()
        else:
            self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:  # gates keep their b_g initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He init
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.head(self.stages(self.stem(x)))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def build_preact_resnet(*, depth: int = 110, block: str = "basic", ordering: str = "full_preact",
                        shortcut: str = "identity", widen: float = 1.0, stem: str = "cifar", num_classes: int = 10,
                        in_channels: int = 3, p_L: float = 1.0, sd_schedule: str = "linear", dropout: float = 0.0,
                        scale: float = 0.5, scale_branch: bool = False, gate_bias: float = -6.0,
                        shortcut_dropout: float = 0.5, seed: int = 0) -> ResidualNet:
    """ResNet-``depth`` with ``block`` units in ``ordering``, the ``shortcut`` variant, widening ``widen``.

    p_L / sd_schedule: stochastic depth over the L = 3n units (p_L = 1: none), gate of unit l seeded from (seed, l).
    dropout: rate of nn.Dropout before the last conv of every branch (Wide-ResNet placement); 0 adds nothing.
    scale / scale_branch: lambda of the ``scaling`` shortcut; scale_branch also multiplies F by 1 - lambda.
    gate_bias: initial b_g of the gating shortcuts. shortcut_dropout: rate of the ``dropout`` shortcut.
    """
    for name, value, choices in (("block", block, BLOCKS), ("ordering", ordering, ORDERINGS),
                                 ("shortcut", shortcut, SHORTCUTS), ("stem", stem, STEMS)):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
    n = units_per_stage(depth, block)
    if not widen > 0:
        raise ValueError(f"widen={widen!r} must be > 0")
    if not 0.0 <= dropout < 1.0 or not 0.0 <= shortcut_dropout < 1.0:
        raise ValueError(f"dropout rates must be in [0, 1), got {dropout!r}, {shortcut_dropout!r}")
    probs = survival_probabilities(3 * n, p_L, sd_schedule)  # raises on a bad p_L / schedule

    def make_unit(in_ch: int, out_ch: int, stride: int, ell: int, first: bool) -> nn.Module:
        return ResidualUnit(
            in_ch, out_ch, stride, block=block, ordering=ordering, shortcut=shortcut, survival_prob=probs[ell],
            seed=block_seed(seed, ell), first_unit=first and ordering in PREACT_ORDERINGS, dropout=dropout,
            scale=scale, scale_branch=scale_branch, gate_bias=gate_bias, shortcut_dropout=shortcut_dropout,
        )

    head = {"full_preact": "bn_relu", "relu_only_preact": "relu"}.get(ordering, "none")
    return ResidualNet(n, stage_widths(widen, block), make_unit, num_classes=num_classes, in_channels=in_channels,
                       stem=stem, head=head)


# ---- the registered trainable ------------------------------------------------------------------------------------

PREACT_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "depth": 110,  # 6n+2 (basic) or 9n+2 (bottleneck: 164 = ResNet-164)
    "block": "basic",  # basic | bottleneck
    "ordering": "full_preact",  # original | bn_after_add | relu_before_add | relu_only_preact | full_preact
    "shortcut": "identity",  # identity | scaling | gating | shortcut_gating | conv1x1 | dropout
    "widen": 1.0,  # Wide-ResNet k: stage widths 16k / 32k / 64k
    "arch": "",  # "DEPTHxWIDEN" (e.g. "20x2.5"): sets depth and widen together, for paired sweeps; "" = unused
    "stem": "cifar",  # cifar: conv3x3; imagenet: conv7x7/2 + maxpool/2
    "p_L": 1.0,  # stochastic depth: survival of the last unit; 1.0 = none
    "sd_schedule": "linear",  # linear: p_l = 1 - l/L (1 - p_L); uniform: p_l = p_L
    "dropout": 0.0,  # dropout between the convs of each branch (Wide ResNet)
    "shortcut_scale": 0.5,  # lambda of shortcut=scaling
    "scale_branch": False,  # shortcut=scaling: also multiply F by 1 - lambda
    "gate_bias": -6.0,  # initial b_g of shortcut=gating / shortcut_gating (the paper's best, -6)
    "shortcut_dropout": 0.5,  # rate of shortcut=dropout
    "norm": "batch",  # none | batch | weight | mean_only_batch | weight+mean_only_batch (trainables/normalization)
}


def architecture(config: dict[str, Any]) -> tuple[int, float]:
    """(depth, widen): from ``arch`` when it is set, else from ``depth`` and ``widen``."""
    return parse_arch(config["arch"]) if config["arch"] else (config["depth"], config["widen"])


def validate_preact(config: dict[str, Any]) -> None:
    check_choice(config, "block", BLOCKS)
    check_choice(config, "ordering", ORDERINGS)
    check_choice(config, "shortcut", SHORTCUTS)
    check_choice(config, "stem", STEMS)
    check_choice(config, "sd_schedule", SCHEDULES)
    try:
        depth, widen = architecture(config)
        units_per_stage(depth, config["block"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not 0 < widen <= 64:
        raise ConfigError(f"widen={widen!r} is out of range: must be in (0, 64]")
    check_range(config, "p_L", 0.0, 1.0)
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    check_range(config, "shortcut_scale", 0.0, 1.0)
    check_range(config, "gate_bias", -50.0, 50.0)
    check_range(config, "shortcut_dropout", 0.0, 1.0, high_open=True)


def build_from_config(config: dict[str, Any], num_classes: int, in_channels: int) -> ResidualNet:
    depth, widen = architecture(config)
    return build_preact_resnet(
        depth=depth, block=config["block"], ordering=config["ordering"], shortcut=config["shortcut"], widen=widen,
        stem=config["stem"], num_classes=num_classes, in_channels=in_channels, p_L=config["p_L"],
        sd_schedule=config["sd_schedule"], dropout=config["dropout"], scale=config["shortcut_scale"],
        scale_branch=config["scale_branch"], gate_bias=config["gate_bias"],
        shortcut_dropout=config["shortcut_dropout"], seed=config["seed"],
    )


def preact_from_config(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """The net ``config`` trains on ``data``: the train function's builder and the ``model`` tool."""
    return apply_norm(build_from_config(dict(config), data.num_classes, data.input_shape[0]), config["norm"])


train_preact_resnet = register_classifier(
    "preact_resnet", preact_from_config, defaults=PREACT_DEFAULTS, validate=validate_preact,
    canonical=canonical_schedule,
    description="Original / pre-activation ResNets: orderings, shortcut ablations, bottleneck, widening, stochastic "
                "depth.")
