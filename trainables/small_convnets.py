"""Small AlexNet-, VGG- and GoogLeNet-style networks for 28x28 / 32x32 images (CS231n, "ConvNet architectures").

Each keeps its paper's layer pattern and relative widths; ``width`` multiplies every filter and hidden-unit count
(channels = max(1, round(c * width))), and the ImageNet stems shrink to keep small maps:

- ``alexnet`` (Krizhevsky et al. 2012; torchvision's single-tower widths 64-192-384-256-256, FC 4096-4096):
  conv 5x5 (the paper's 11x11/4 stem would leave 5 px of a 28 px digit), overlapping max-pool 3x3/2 after conv1,
  conv2 and conv5 as in the paper, ReLU after every layer, dropout 0.5 before each of the two hidden FC layers. No
  local response normalisation (later work found it adds nothing).
- ``vgg`` (Simonyan & Zisserman 2015, configuration A = VGG-11): 3x3 convolutions, padding 1, max-pool 2x2/2 after
  the stages [64], [128], [256, 256], [512, 512]; VGG-11's fifth stage is left out because 28 px are down to 1 px
  after four pools. Global average pooling, then FC 4096 - 4096 - classes with dropout 0.5. Batch norm after each
  conv (the BN variant; the paper instead initialised deeper nets from shallower trained ones).
- ``googlenet`` (Szegedy et al. 2015, Table 1): nine inception modules 3a, 3b | 4a-4e | 5a, 5b, each the
  concatenation  [1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | max-pool 3x3/1 -> 1x1]  with Table 1's filter counts; max-pool
  3x3/2 between the groups, global average pooling, dropout 0.4, a linear classifier. The stem is one 3x3 conv to
  192 channels and a max-pool 3x3/2 (the paper's 7x7/2 + two pools would bring 28 px to 4 px before module 3a; ours
  leaves 14 px, 7 at 4a, 4 at 5a); no auxiliary classifiers.
  Batch norm after each conv (as in BN-Inception).

VGG and GoogLeNet are built with batch norm and take the normalization switch ``norm`` (none | batch | weight |
mean_only_batch | weight+mean_only_batch, :mod:`trainables.normalization`); AlexNet has none to switch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainables.classification import register_classifier
from trainables.data import DatasetBundle, known_input_shape
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.registry import ConfigError, check_range

ALEXNET_CONVS = ((64, 5), (192, 5), (384, 3), (256, 3), (256, 3))  # (filters, kernel); pool after 0, 1, 4
ALEXNET_POOL_AFTER = (0, 1, 4)
ALEXNET_FC = 4096
VGG_STAGES = ((64,), (128,), (256, 256), (512, 512))  # VGG-11 (configuration A) without its fifth stage
VGG_FC = 4096
# GoogLeNet Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
GOOGLENET_STEM = 192
GOOGLENET_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
GOOGLENET_POOL_AFTER = ("3b", "4e")  # and one after the stem


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def conv_unit(c_in: int, c_out: int, kernel: int, batch_norm: bool) -> list[nn.Module]:
    """conv (same padding) [-> BN] -> ReLU."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not batch_norm)
    return [conv, *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.ReLU(inplace=True)]


def pooled_side(side: int, pools: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Feature-map side after ``pools`` max-pools; ValueError when the input is too small for them."""
    for _ in range(pools):
        if side + 2 * padding < kernel:
            raise ValueError(f"the input is too small: a {kernel}x{kernel} pool meets a {side} px map")
        side = (side + 2 * padding - kernel) // stride + 1
    return side


def he_init(model: nn.Module) -> None:
    """W ~ N(0, 2 / fan_in), b = 0 (He et al. 2015) for every conv and linear layer: without BN, PyTorch's default
    (uniform, variance 1 / (3 fan_in)) shrinks the signal layer by layer and the small AlexNet sat at chance for its
    first 40 steps (measured); the paper's N(0, 0.01) needed its hand-set biases of 1."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class AlexNetSmall(nn.Module):
    def __init__(self, in_channels: int, side: int, num_classes: int, width: float, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (filters, kernel) in enumerate(ALEXNET_CONVS):
            layers += conv_unit(c_in, scaled(filters, width), kernel, batch_norm=False)
            c_in = scaled(filters, width)
            if i in ALEXNET_POOL_AFTER:
                layers.append(nn.MaxPool2d(3, stride=2))  # overlapping pooling (Sec. 3.4): z = 3, s = 2
        self.features = nn.Sequential(*layers)
        out_side = pooled_side(side, len(ALEXNET_POOL_AFTER), 3, 2)
        fc = scaled(ALEXNET_FC, width)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * out_side * out_side, fc), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Linear(fc, num_classes))

        he_init(self)
        nn.init.normal_(self.classifier[-1].weight, std=0.01)  # the paper's N(0, 0.01): small initial scores

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class VGGSmall(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage in VGG_STAGES:
            for filters in stage:
                layers += conv_unit(c_in, scaled(filters, width), 3, batch_norm)
                c_in = scaled(filters, width)
            layers.append(nn.MaxPool2d(2, stride=2))
        self.features = nn.Sequential(*layers)
        fc = scaled(VGG_FC, width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(fc, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class Inception(nn.Module):
    """[1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | max-pool 3x3/1 -> 1x1], concatenated along channels."""

    def __init__(self, c_in: int, n1: int, r3: int, n3: int, r5: int, n5: int, pool_proj: int,
                 batch_norm: bool) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(*conv_unit(c_in, n1, 1, batch_norm))
        self.branch3 = nn.Sequential(*conv_unit(c_in, r3, 1, batch_norm), *conv_unit(r3, n3, 3, batch_norm))
        self.branch5 = nn.Sequential(*conv_unit(c_in, r5, 1, batch_norm), *conv_unit(r5, n5, 5, batch_norm))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                         *conv_unit(c_in, pool_proj, 1, batch_norm))
        self.out_channels = n1 + n3 + n5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class GoogLeNetSmall(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        c_in = scaled(GOOGLENET_STEM, width)
        # ours: a 3x3 stem and one max-pool 3x3/2 (28 -> 14 px at module 3a; the paper: 224 -> 28 px)
        layers: list[nn.Module] = [*conv_unit(in_channels, c_in, 3, batch_norm), nn.MaxPool2d(3, stride=2, padding=1)]
        for name, filters in GOOGLENET_MODULES.items():
            module = Inception(c_in, *(scaled(c, width) for c in filters), batch_norm=batch_norm)
            layers.append(module)
            c_in = module.out_channels
            if name in GOOGLENET_POOL_AFTER:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c_in, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ---- the registered trainables -----------------------------------------------------------------------------------

# Adam 1e-3 with a cosine decay trains all three from the first epoch (the papers' SGD with momentum: --set
# optimizer=sgd lr=0.01 weight_decay=5e-4). Measured on MNIST-5k with epochs=3, seed 0, one thread of a loaded
# 2-core CPU: val_error after each epoch / test_error / seconds -- alexnet 0.212 0.090 0.090 / 0.107 / 33 s (with
# start-up); vgg 0.082 0.034 0.038 / 0.052 / 8 s; googlenet 0.140 0.042 0.036 / 0.063 / 70 s.
CONVNET_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "width": 0.25,
    "dropout": 0.5,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "epochs": 8,
    "batch_size": 64,
}
ALEXNET_DEFAULTS: dict[str, Any] = dict(CONVNET_DEFAULTS)
VGG_DEFAULTS: dict[str, Any] = {**CONVNET_DEFAULTS, "width": 0.125, "norm": "batch"}
GOOGLENET_DEFAULTS: dict[str, Any] = {**CONVNET_DEFAULTS, "width": 0.125, "dropout": 0.4, "norm": "batch"}


def _validate(pools: int, kernel: int, stride: int, padding: int = 0) -> Callable[[dict[str, Any]], None]:
    """Range checks plus: the dataset's images survive the network's pools (known before any trial starts)."""
    def validate(config: dict[str, Any]) -> None:
        check_range(config, "width", 0.0, 4.0, low_open=True)
        check_range(config, "dropout", 0.0, 1.0, high_open=True)
        shape = known_input_shape(config["dataset"])
        if shape is not None:
            try:
                if pooled_side(min(shape[1:]), pools, kernel, stride, padding) < 1:
                    raise ValueError("the input is too small for the pools")
            except ValueError as err:
                raise ConfigError(f"dataset {config['dataset']!r} ({shape[1]}x{shape[2]}): {err}") from None
    return validate


def build_alexnet(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    channels, height, width_px = data.input_shape
    return AlexNetSmall(channels, min(height, width_px), data.num_classes, config["width"], config["dropout"])


def build_vgg(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    return apply_norm(VGGSmall(data.input_shape[0], data.num_classes, config["width"], config["dropout"], True),
                      config["norm"])


def build_googlenet(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    return apply_norm(GoogLeNetSmall(data.input_shape[0], data.num_classes, config["width"], config["dropout"], True),
                      config["norm"])


train_alexnet = register_classifier(
    "alexnet", build_alexnet, defaults=ALEXNET_DEFAULTS, validate=_validate(len(ALEXNET_POOL_AFTER), 3, 2),
    description="Small AlexNet-style convnet (Krizhevsky et al. 2012) for 28/32 px images; `width` multiplier.")
train_vgg = register_classifier(
    "vgg", build_vgg, defaults=VGG_DEFAULTS, validate=_validate(len(VGG_STAGES), 2, 2),
    description="Small VGG-11-style convnet (Simonyan & Zisserman 2015), 3x3 convs, `norm` switch; `width`.")
train_googlenet = register_classifier(
    "googlenet", build_googlenet, defaults=GOOGLENET_DEFAULTS,
    validate=_validate(len(GOOGLENET_POOL_AFTER) + 1, 3, 2, padding=1),
    description="Small GoogLeNet-style network (Szegedy et al. 2015): nine inception modules; `width`, `norm` switch.")
