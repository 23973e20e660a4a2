"""The fractional max-pooling network family (Graham 2014, arXiv:1412.6071, Sec. 4) as the trainable ``fmp_net``.

    input (padded) - (k n C2 - FMP(alpha))_L - C2 - C1 - output          (paper, MNIST: k = 32, L = 6, input 36x36)

Layer n = 1..L is a 2x2 valid convolution with k n filters, a leaky ReLU, an FMP layer
(trainables/fractional_pooling.py), then a final C2 (k (L + 1) filters) maps 2x2 to 1x1 and a 1x1 convolution
(C1) gives the class scores. The input is zero-padded (centred) to the smallest size >= the data's (or to
``fmp_pad_to``) whose chain of sizes s -> round((s - 1) / alpha) ends at 2 after L layers: with alpha = sqrt 2,
28x28 MNIST becomes 30x30 (30 -> 21 -> 14 -> 9 -> 6 -> 4 -> 2) and 32x32 CIFAR stays 32x32 (32 -> 22 -> 15 -> 10 ->
6 -> 4 -> 2); the paper pads MNIST to 36x36 (36 -> 25 -> 17 -> 11 -> 7 -> 4 -> 2: ``fmp_pad_to=36``).
``fmp_layers = 0`` takes the smallest L whose chain from the data's own size reaches 2 or less.

Dropout rises linearly with depth (paper, CIFAR nets: "from 0% in the first hidden layer to 50% in the last"):
hidden layer l = 1..L+1 drops with p_l = dropout_max (l - 1) / L.

Test-time model averaging: in eval mode every FMP layer uses pass k of a fixed, seeded family of sequences; with
``passes = N`` the net returns log (1/N sum_k softmax(f(x; sequences_k))), so the loop's argmax/cross-entropy score
the average as it is. Pass 0 alone is "fixed sequences at test time" (N = 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.classification import CLASSIFICATION_METRICS, register_classifier
from trainables.data import DatasetBundle
from trainables.fractional_pooling import FMP_KINDS, FMP_OVERLAPS, FractionalMaxPool, fmp_output_size
from trainables.layers import block_seed
from trainables.loop import LOOP_DEFAULTS
from trainables.registry import ConfigError, check_choice, check_range

MAX_PAD = 64  # padding searched for the chain of sizes to end at 2


def size_chain(size: int, layers: int, alpha: float, overlapping: bool) -> list[int]:
    """Spatial size after each C2-FMP layer: s -> s - 1 (C2) -> N_out (FMP)."""
    chain = [size]
    for _ in range(layers):
        if chain[-1] - 1 < (3 if overlapping else 2):  # C2 leaves too few rows for an FMP of ratio in (1, 2)
            return chain
        chain.append(fmp_output_size(chain[-1] - 1, alpha, overlapping))
    return chain


def padded_size(size: int, layers: int, alpha: float, overlapping: bool, pad_to: int = 0) -> int:
    """The smallest s >= max(size, pad_to) whose chain ends at 2 after ``layers`` layers (the final C2 gives 1x1)."""
    size = max(size, pad_to)
    for s in range(size, size + MAX_PAD + 1):
        chain = size_chain(s, layers, alpha, overlapping)
        if len(chain) == layers + 1 and chain[-1] == 2:
            return s
    raise ValueError(f"no input size in [{size}, {size + MAX_PAD}] reaches 2x2 after {layers} FMP layers "
                     f"(alpha={alpha:g})")


def derive_layers(size: int, alpha: float, overlapping: bool) -> int:
    """The smallest L whose chain from ``size`` reaches 2 or less (so padding, never cropping, makes it end at 2)."""
    for layers in range(1, 40):
        chain = size_chain(size, layers, alpha, overlapping)
        if len(chain) <= layers or chain[-1] <= 2:
            return layers
    raise ValueError(f"cannot derive the number of FMP layers for input size {size}")


class FMPNet(nn.Module):
    """(k n C2 - FMP)_L - C2 - C1 with leaky ReLUs and linearly rising dropout; test-time averaging over ``passes``."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int, alpha: float = math.sqrt(2),
                 kind: str = "pseudorandom", overlapping: bool = True, layers: int = 0, filters_step: int = 32,
                 dropout_max: float = 0.0, leaky_slope: float = 1 / 3, passes: int = 1, pad_to: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.layers = layers or derive_layers(input_size, alpha, overlapping)
        self.input_size = padded_size(input_size, self.layers, alpha, overlapping, pad_to)
        pad = self.input_size - input_size
        self.pad = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)  # centred: left, right, top, bottom
        self.passes = passes
        drops = [dropout_max * (ell - 1) / self.layers for ell in range(1, self.layers + 2)]  # p_l, l = 1..L+1
        blocks: list[nn.Module] = []
        channels = in_channels
        for n in range(1, self.layers + 1):
            blocks += [nn.Conv2d(channels, filters_step * n, 2), nn.LeakyReLU(leaky_slope),
                       FractionalMaxPool(alpha, kind, overlapping, seed=block_seed(seed, n))]
            if drops[n]:  # dropout on the next hidden layer's input: p_{n+1}
                blocks.append(nn.Dropout(drops[n]))
            channels = filters_step * n
        self.features = nn.Sequential(*blocks)
        last = filters_step * (self.layers + 1)
        self.head = nn.Sequential(nn.Conv2d(channels, last, 2), nn.LeakyReLU(leaky_slope),  # C2: 2x2 -> 1x1
                                  nn.Conv2d(last, num_classes, 1), nn.Flatten())  # C1: the class scores
        # He init for leaky ReLUs (torch's default init vanishes through 7 layers without batch norm, which the
        # paper's nets do not have); the classifier scaled down, since max-pooling raises the activations' scale
        # layer by layer and large initial logits make the first SGD steps diverge
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=leaky_slope, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.head[2].weight.mul_(0.1)

    def fmp_layers(self) -> list[FractionalMaxPool]:
        return [m for m in self.modules() if isinstance(m, FractionalMaxPool)]

    def single_pass(self, x: Tensor) -> Tensor:
        return self.head(self.features(F.pad(x, self.pad)))

    @contextmanager
    def averaging(self, passes: int) -> Iterator[None]:
        """Evaluate with test-time averaging over ``passes`` inside the block, whatever the net's own setting."""
        own, self.passes = self.passes, passes
        try:
            yield
        finally:
            self.passes = own

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.passes == 1:
            return self.single_pass(x)  # one fresh sequence per image (training) or the fixed pass 0 (eval)
        probs: Tensor | float = 0.0
        pools = self.fmp_layers()
        try:
            for k in range(self.passes):
                for pool in pools:
                    pool.eval_pass = k  # pass k of every layer's seeded family of sequences
                probs = probs + F.softmax(self.single_pass(x), dim=1)
        finally:
            for pool in pools:
                pool.eval_pass = 0
        probs = probs / self.passes  # p(y|x) = 1/N sum_k softmax(f(x; sequences_k))
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def overlapping_of(value: bool | str) -> bool:
    return value in (True, "overlapping")


def build(config: Mapping[str, Any], data: DatasetBundle) -> FMPNet:
    """The ``fmp_net`` model for ``data`` (the same builder the train function and the ``model`` tool use)."""
    channels, height, width = data.input_shape
    if height != width:
        raise ValueError(f"fmp_net expects square inputs, got {height}x{width}")
    return FMPNet(in_channels=channels, num_classes=data.num_classes, input_size=height, alpha=config["fmp_alpha"],
                  kind=config["fmp_kind"], overlapping=overlapping_of(config["fmp_overlap"]),
                  layers=config["fmp_layers"], filters_step=config["fmp_filters_step"],
                  dropout_max=config["dropout_max"], leaky_slope=config["leaky_slope"], passes=1,
                  pad_to=config["fmp_pad_to"], seed=config["seed"])


# ---- the registered trainable ------------------------------------------------------------------------------------

# N of the averaged evaluation: the values the metrics are declared for (test_passes and the curve's points).
TEST_PASS_POINTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
FMP_METRICS: dict[str, str] = {
    **CLASSIFICATION_METRICS,
    **{f"{split}_{kind}_avg{n}": "min" for split in ("val", "test") for kind in ("error", "loss")
       for n in TEST_PASS_POINTS[1:]},
}

FMP_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "epochs": 3,
    # Adam: without batch norm (the paper's nets have none) SGD with Nesterov momentum diverged at lr 0.03 and
    # oscillated at 0.01 in the first 30 steps on MNIST-5k, where Adam at 1e-3 fell to ~35% training error
    "optimizer": "adam",
    "lr": 0.001,
    "fmp_alpha": math.sqrt(2),  # pooling ratio in (1, 2); the paper's nets use sqrt 2
    "fmp_kind": "pseudorandom",  # random | pseudorandom increments
    "fmp_overlap": "overlapping",  # overlapping | disjoint (or true | false)
    "fmp_layers": 0,  # C2-FMP layers; 0 = derived from the input size (MNIST and CIFAR: 6)
    "fmp_pad_to": 0,  # pad the input to at least this size (0: the smallest that ends at 2x2; paper MNIST: 36)
    "fmp_filters_step": 16,  # layer n has fmp_filters_step * n filters (the paper: 32 for MNIST; 16 for a laptop)
    "dropout_max": 0.0,  # dropout of the last hidden layer; rises linearly from 0 in the first
    "leaky_slope": 1 / 3,  # leaky ReLU negative slope
    # N of test-time averaging: plain metrics are N = 1 (pass 0, fixed sequences); N > 1 adds {split}_error_avgN
    "test_passes": 4,  # the paper averages up to 100 passes; fmp_test_passes plots error vs N up to 12
    "test_curve": False,  # also report {split}_error_avgn for every declared n < test_passes (error vs N)
}


def validate_fmp(config: dict[str, Any]) -> None:
    check_range(config, "fmp_alpha", 1.0, 2.0, low_open=True, high_open=True)
    check_choice(config, "fmp_kind", FMP_KINDS)
    check_choice(config, "fmp_overlap", (*FMP_OVERLAPS, True, False))
    for key in ("fmp_layers", "fmp_pad_to", "fmp_filters_step", "test_passes"):
        if isinstance(config[key], bool) or not isinstance(config[key], int):
            raise ConfigError(f"{key}={config[key]!r} must be an integer")
    check_range(config, "fmp_layers", 0, 30)
    check_range(config, "fmp_pad_to", 0, 1024)
    check_range(config, "fmp_filters_step", 1, 4096)
    check_range(config, "dropout_max", 0.0, 1.0, high_open=True)
    check_range(config, "leaky_slope", 0.0, 1.0)
    check_choice(config, "test_passes", TEST_PASS_POINTS)
    check_choice(config, "test_curve", (True, False))


def averaged_modes(config: Mapping[str, Any]) -> dict[str, Any]:
    """eval_modes for the averaged evaluations: avgN for N = test_passes (and the curve's points below it)."""
    top = config["test_passes"]
    points = [n for n in TEST_PASS_POINTS[1:] if n < top] if config["test_curve"] else []
    return {f"avg{n}": (lambda net, n=n: net.averaging(n)) for n in [*points, top] if n > 1}


train_fmp_net = register_classifier(
    "fmp_net", build, defaults=FMP_DEFAULTS, validate=validate_fmp, metrics=FMP_METRICS, eval_modes=averaged_modes,
    description="Fractional max-pooling nets (Graham 2014): C2-FMP layers, fixed or test-time averaged sequences at "
                "eval.")
