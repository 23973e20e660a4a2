"""CIFAR ResNet (He et al. 2016) with stochastic depth, as in Huang et al. 2016, Sec. 4.

depth = 6n + 2: conv3x3(16)-BN-ReLU stem, three stages of n basic blocks with 16/32/64 filters
(the first block of stages 2 and 3 halves the resolution), global average pooling, linear classifier.
ResNet-110 (n = 18, L = 54 blocks) has ~1.7M parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.classification import register_classifier
from trainables.data import DatasetBundle
from trainables.layers import OptionAShortcut, block_seed
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.registry import ConfigError, check_choice, check_range
from trainables.stochastic_depth import StochasticDepth, canonical_schedule, survival_probabilities

_STAGE_WIDTHS = (16, 32, 64)
_DROPOUT_WHERE = ("branch", "head")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)  # bias off: BN follows


class BasicBlock(nn.Module):
    """H_l = ReLU(b_l f_l(H_{l-1}) + id(H_{l-1})), f_l = conv3x3-BN-ReLU-[Dropout]-conv3x3-BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, survival_prob: float, seed: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv3x3(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))  # Wide-ResNet placement: between the two convs
        layers += [_conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch)]
        self.branch = StochasticDepth(nn.Sequential(*layers), survival_prob, seed=seed)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = OptionAShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x)
        f = self.branch(x)  # train: b_l f_l(x), None when b_l = 0;  eval: p_l f_l(x)
        if f is None:
            # H_l = ReLU(id(H_{l-1})) = id(H_{l-1}): the input left a ReLU (and option A only averages and zero-pads),
            # so it is already non-negative and a dropped block costs nothing but the shortcut.
            return identity
        return F.relu(identity + f)  # not in-place: `identity` may be x itself


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int, in_channels: int, probs: list[float], dropout: float,
                 dropout_where: str, seed: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        branch_dropout = dropout if dropout_where == "branch" else 0.0
        stages: list[nn.Module] = []
        in_ch, ell = 16, 0  # ell indexes blocks 0..L-1 across all stages, in network order (block l = ell+1)
        for stage, width in enumerate(_STAGE_WIDTHS):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride, probs[ell], block_seed(seed, ell), branch_dropout))
                in_ch, ell = width, ell + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # global average pooling: any input size works
        self.head_dropout = nn.Dropout(dropout) if dropout_where == "head" and dropout > 0 else None
        self.fc = nn.Linear(in_ch, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He init
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        if self.head_dropout is not None:
            x = self.head_dropout(x)
        return self.fc(x)


def build_resnet(*, depth: int = 110, num_classes: int = 10, in_channels: int = 3, p_L: float = 1.0,
                 sd_schedule: str = "linear", dropout: float = 0.0, dropout_where: str = "branch",
                 seed: int = 0) -> nn.Module:
    """CIFAR ResNet-`depth` with stochastic depth.

    p_L / sd_schedule: survival probabilities p_l = survival_probabilities(L, p_L, sd_schedule) for the
        L = 3n blocks in network order ("linear": p_l = 1 - l/L (1 - p_L); "uniform": p_l = p_L).
        p_L = 1.0 is a plain ResNet. Block l's Bernoulli generator is seeded from (seed, l).
    dropout / dropout_where: dropout rate in [0, 1); 0 adds no module.
        "branch": nn.Dropout between the two convs of every residual branch, after the first BN-ReLU
                  (the Wide-ResNet placement); it is skipped together with a dropped branch.
        "head":   one nn.Dropout on the pooled features, before the final linear layer.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth!r}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if dropout_where not in _DROPOUT_WHERE:
        raise ValueError(f"dropout_where must be one of {_DROPOUT_WHERE}, got {dropout_where!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n = (depth - 2) // 6
    probs = survival_probabilities(3 * n, p_L, sd_schedule)  # raises on bad p_L / schedule
    return CifarResNet(n, num_classes, in_channels, probs, dropout, dropout_where, seed)


# ---------------------------------------------------------------------------------------------------
# Trainable registration (appended by the integrator).
# ---------------------------------------------------------------------------------------------------

RESNET_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "depth": 110,  # 6n+2; the sweeps shipped in search_spaces/ pick smaller nets for laptop budgets
    "p_L": 1.0,  # survival probability of the last block; 1.0 = no stochastic depth (the paper uses 0.5)
    "sd_schedule": "linear",  # linear decay p_l = 1 - l/L (1 - p_L), or uniform p_l = p_L
    "dropout": 0.0,
    "dropout_where": "branch",  # branch: between the two convs of each block; head: before the classifier
    "norm": "batch",  # none | batch | weight | mean_only_batch | weight+mean_only_batch (trainables/normalization)
}


def validate_resnet(config: dict[str, Any]) -> None:
    depth = config["depth"]
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"depth={depth} must be 6n+2 (20, 32, 44, 56, 110, 1202)")
    check_range(config, "p_L", 0.0, 1.0)
    check_choice(config, "sd_schedule", ("linear", "uniform"))
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    check_choice(config, "dropout_where", _DROPOUT_WHERE)


def canonical_resnet(config: dict[str, Any]) -> dict[str, Any]:
    """Configs that train the same net: with dropout 0 no dropout module exists, wherever it was placed; with
    p_L = 1 the stochastic-depth schedule draws nothing."""
    if config.get("dropout") == 0.0:
        config["dropout_where"] = RESNET_DEFAULTS["dropout_where"]
    return canonical_schedule(config)


def resnet_from_config(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """The net ``config`` trains on ``data``: the train function's builder, and the ``model`` tool (Deep
    Compression rebuilds a checkpoint's net with it)."""
    return apply_norm(build_resnet(
        depth=config["depth"], num_classes=data.num_classes, in_channels=data.input_shape[0], p_L=config["p_L"],
        sd_schedule=config["sd_schedule"], dropout=config["dropout"], dropout_where=config["dropout_where"],
        seed=config["seed"],
    ), config["norm"])


train_resnet = register_classifier(
    "resnet", resnet_from_config, defaults=RESNET_DEFAULTS, validate=validate_resnet, canonical=canonical_resnet,
    description="CIFAR ResNet (6n+2) with stochastic depth and dropout (Huang et al. 2016) on the common loop.")
