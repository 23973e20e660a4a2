"""The blocks of Inception-v4 and Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke & Alemi 2016, arXiv:1602.07261).

Every convolution is a Conv-BN-ReLU unit (no conv bias, BN eps 1e-3), as in the reference TF-slim implementation
and its PyTorch ports (timm, Cadene); only the residual blocks' "1x1 Conv (Linear)" that restores the input width is
a plain convolution with a bias and no BN or ReLU (the paper: "batch-normalization only on top of the traditional
layers, but not on top of the summations"). Filter counts are the paper's, multiplied by ``width`` (``ch``).

``small=True`` (the 28x28 / 32x32 variant): every 3x3 convolution and pooling is padded ("same"), so a stride-2 step
halves the grid (28 -> 14 -> 7 -> 4) instead of the paper's "V" (valid) 35 -> 17 -> 8.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BN_EPS = 1e-3  # the reference implementations' BN epsilon


def ch(filters: int, width: float) -> int:
    """The paper's filter count scaled by the width multiplier (at least one filter)."""
    return max(1, round(filters * width))


class ConvBN(nn.Sequential):
    """Conv (no bias: BN follows) - BN - ReLU; ``padding="same"`` keeps the grid of a stride-1 conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | str = 0) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(out_ch, eps=BN_EPS), nn.ReLU(inplace=True))
        self.out_channels = out_ch


def _same(k: tuple[int, int]) -> tuple[int, int]:
    return (k[0] // 2, k[1] // 2)


def chain(in_ch: int, spec: list[tuple[int, tuple[int, int]]], width: float) -> nn.Sequential:
    """1x1 then factorised convs: ``spec`` = [(paper filters, (kh, kw)), ...], all stride 1, "same" padded."""
    layers, c = [], in_ch
    for filters, k in spec:
        layers.append(ConvBN(c, ch(filters, width), k, padding=_same(k)))
        c = ch(filters, width)
    seq = nn.Sequential(*layers)
    seq.out_channels = c
    return seq


def out_channels(module: nn.Module, in_ch: int) -> int:
    """Channels ``module`` outputs: its ``out_channels``, a sequence's last such layer's, or ``in_ch`` (pooling)."""
    if hasattr(module, "out_channels"):
        return module.out_channels
    if isinstance(module, nn.Sequential):
        return next((m.out_channels for m in reversed(module) if hasattr(m, "out_channels")), in_ch)
    return in_ch


class Concat(nn.Module):
    """Filter concatenation of parallel branches (each has ``out_channels``, or passes its input through)."""

    def __init__(self, in_ch: int, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out_channels = sum(out_channels(b, in_ch) for b in branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class PoolProj(nn.Sequential):
    """3x3 average pooling (stride 1, padded, padding not counted) then a 1x1 conv: the "Avg Pooling -> 1x1" branch."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), ConvBN(in_ch, out_ch, 1))
        self.out_channels = out_ch


class SplitTail(nn.Module):
    """``trunk`` then two parallel convs (1x3 | 3x1) concatenated: Inception-C's split branches (Fig. 6)."""

    def __init__(self, trunk: nn.Sequential, filters: int, width: float) -> None:
        super().__init__()
        self.trunk = trunk
        self.a = ConvBN(trunk.out_channels, ch(filters, width), (1, 3), padding=(0, 1))
        self.b = ConvBN(trunk.out_channels, ch(filters, width), (3, 1), padding=(1, 0))
        self.out_channels = 2 * ch(filters, width)

    def forward(self, x: Tensor) -> Tensor:
        t = self.trunk(x)
        return torch.cat([self.a(t), self.b(t)], dim=1)


def _down(small: bool) -> int:
    """Padding of a stride-2 3x3 step: 0 ("V", valid) at full size, 1 in the small variant."""
    return 1 if small else 0


def max_pool(small: bool) -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, padding=_down(small))


# ---- Inception-v4 (Figs. 3-8) -------------------------------------------------------------------------------------

def stem(in_ch: int, width: float, small: bool) -> nn.Sequential:
    """Fig. 3, the stem of Inception-v4 and Inception-ResNet-v2: 299x299x3 -> 35x35x384.

    conv 3x3/2 V (32) - conv 3x3 V (32) - conv 3x3 (64) - [maxpool 3x3/2 V | conv 3x3/2 V (96)] -
    [1x1 (64) - 3x3 V (96) | 1x1 (64) - 7x1 (64) - 1x7 (64) - 3x3 V (96)] - [conv 3x3/2 V (192) | maxpool /2 V].
    Small variant: every conv and pooling is padded and only the first conv keeps its stride 2 (Mixed-3a's and
    Mixed-5a's "/2" become stride 1), so the stem halves the grid once (28 -> 14, 32 -> 16: the 35x35 grid's role);
    halving at the input rather than at Mixed-5a makes the stem 4x cheaper at the same output grid.
    """
    s2, p = (1, 1) if small else (2, 0)  # the stride of the later "/2" steps; valid (0) or "same" (1) padding
    c32, c64, c96, c192 = (ch(f, width) for f in (32, 64, 96, 192))
    pool3a = nn.MaxPool2d(3, stride=s2, padding=p)
    mixed3a = Concat(c64, pool3a, ConvBN(c64, c96, 3, stride=s2, padding=p))
    c = mixed3a.out_channels
    mixed4a = Concat(
        c,
        nn.Sequential(ConvBN(c, c64, 1), ConvBN(c64, c96, 3, padding=p)),
        nn.Sequential(ConvBN(c, c64, 1), ConvBN(c64, c64, (7, 1), padding=(3, 0)),
                      ConvBN(c64, c64, (1, 7), padding=(0, 3)), ConvBN(c64, c96, 3, padding=p)),
    )
    c = mixed4a.out_channels
    mixed5a = Concat(c, ConvBN(c, c192, 3, stride=s2, padding=p), nn.MaxPool2d(3, stride=s2, padding=p))
    seq = nn.Sequential(ConvBN(in_ch, c32, 3, stride=2, padding=p), ConvBN(c32, c32, 3, padding=p),
                        ConvBN(c32, c64, 3, padding=1), mixed3a, mixed4a, mixed5a)
    seq.out_channels = mixed5a.out_channels
    return seq


def inception_a(in_ch: int, width: float) -> Concat:
    """Fig. 4 (35x35 grid): [avgpool - 1x1 (96) | 1x1 (96) | 1x1 (64) - 3x3 (96) | 1x1 (64) - 3x3 (96) - 3x3 (96)]."""
    return Concat(in_ch, PoolProj(in_ch, ch(96, width)), chain(in_ch, [(96, (1, 1))], width),
                  chain(in_ch, [(64, (1, 1)), (96, (3, 3))], width),
                  chain(in_ch, [(64, (1, 1)), (96, (3, 3)), (96, (3, 3))], width))


def inception_b(in_ch: int, width: float) -> Concat:
    """Fig. 5 (17x17 grid): [avgpool - 1x1 (128) | 1x1 (384) | 1x1 (192) - 1x7 (224) - 7x1 (256) |
    1x1 (192) - 1x7 (192) - 7x1 (224) - 1x7 (224) - 7x1 (256)]."""
    return Concat(in_ch, PoolProj(in_ch, ch(128, width)), chain(in_ch, [(384, (1, 1))], width),
                  chain(in_ch, [(192, (1, 1)), (224, (1, 7)), (256, (7, 1))], width),
                  chain(in_ch, [(192, (1, 1)), (192, (1, 7)), (224, (7, 1)), (224, (1, 7)), (256, (7, 1))], width))


def inception_c(in_ch: int, width: float) -> Concat:
    """Fig. 6 (8x8 grid): [avgpool - 1x1 (256) | 1x1 (256) | 1x1 (384) - (1x3 (256) | 3x1 (256)) |
    1x1 (384) - 1x3 (448) - 3x1 (512) - (1x3 (256) | 3x1 (256))]."""
    return Concat(in_ch, PoolProj(in_ch, ch(256, width)), chain(in_ch, [(256, (1, 1))], width),
                  SplitTail(chain(in_ch, [(384, (1, 1))], width), 256, width),
                  SplitTail(chain(in_ch, [(384, (1, 1)), (448, (1, 3)), (512, (3, 1))], width), 256, width))


# Table 1: the filters k, l, m, n of Reduction-A per network.
REDUCTION_A_KLMN: dict[str, tuple[int, int, int, int]] = {
    "inception_v4": (192, 224, 256, 384),
    "inception_resnet_v1": (192, 192, 256, 384),
    "inception_resnet_v2": (256, 256, 384, 384),
}


def reduction_a(in_ch: int, klmn: tuple[int, int, int, int], width: float, small: bool) -> Concat:
    """Fig. 7 (35 -> 17): [maxpool 3x3/2 V | conv 3x3/2 V (n) | 1x1 (k) - 3x3 (l) - 3x3/2 V (m)]."""
    k, l_, m, n = (ch(f, width) for f in klmn)
    d = _down(small)
    return Concat(in_ch, max_pool(small), ConvBN(in_ch, n, 3, stride=2, padding=d),
                  nn.Sequential(ConvBN(in_ch, k, 1), ConvBN(k, l_, 3, padding=1),
                                ConvBN(l_, m, 3, stride=2, padding=d)))


def reduction_b(in_ch: int, width: float, small: bool) -> Concat:
    """Fig. 8 (17 -> 8): [maxpool 3x3/2 V | 1x1 (192) - 3x3/2 V (192) | 1x1 (256) - 1x7 (256) - 7x1 (320) -
    3x3/2 V (320)]."""
    d = _down(small)
    a = chain(in_ch, [(192, (1, 1))], width)
    b = chain(in_ch, [(256, (1, 1)), (256, (1, 7)), (320, (7, 1))], width)
    return Concat(in_ch, max_pool(small),
                  nn.Sequential(a, ConvBN(a.out_channels, ch(192, width), 3, stride=2, padding=d)),
                  nn.Sequential(b, ConvBN(b.out_channels, ch(320, width), 3, stride=2, padding=d)))


# ---- Inception-ResNet-v2 (Figs. 16-20) ----------------------------------------------------------------------------

class ResidualInception(nn.Module):
    """Fig. 20: out = ReLU(x + s * Linear1x1(concat(branches(x)))), s the residual scale (Sec. 3.3: "scaling down
    the residuals before adding them to the previous layer activation", s in 0.1 .. 0.3; s = 1 is no scaling).

    The 1x1 "Linear" conv maps the concatenation back to the input's width (the addition needs it); it has a bias
    and no BN. ``relu=False`` leaves out the ReLU after the sum (the reference code's last block).
    """

    def __init__(self, in_ch: int, branches: Concat, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.branches = branches
        self.up = nn.Conv2d(branches.out_channels, in_ch, 1)  # "1x1 Conv (... Linear)"
        self.scale = float(scale)
        self.relu = relu
        self.out_channels = in_ch

    def residual(self, x: Tensor) -> Tensor:
        """The unscaled residual branch F(x)."""
        return self.up(self.branches(x))

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.residual(x)  # x + s F(x)
        return torch.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, relu={self.relu}"


def ir_a(in_ch: int, width: float, scale: float) -> ResidualInception:
    """Fig. 16 (35x35): [1x1 (32) | 1x1 (32) - 3x3 (32) | 1x1 (32) - 3x3 (48) - 3x3 (64)] - 1x1 Linear (in_ch)."""
    return ResidualInception(in_ch, Concat(
        in_ch, chain(in_ch, [(32, (1, 1))], width), chain(in_ch, [(32, (1, 1)), (32, (3, 3))], width),
        chain(in_ch, [(32, (1, 1)), (48, (3, 3)), (64, (3, 3))], width)), scale)


def ir_b(in_ch: int, width: float, scale: float) -> ResidualInception:
    """Fig. 17 (17x17): [1x1 (192) | 1x1 (128) - 1x7 (160) - 7x1 (192)] - 1x1 Linear (in_ch; the figure's 1154)."""
    return ResidualInception(in_ch, Concat(
        in_ch, chain(in_ch, [(192, (1, 1))], width),
        chain(in_ch, [(128, (1, 1)), (160, (1, 7)), (192, (7, 1))], width)), scale)


def ir_c(in_ch: int, width: float, scale: float, relu: bool = True) -> ResidualInception:
    """Fig. 19 (8x8): [1x1 (192) | 1x1 (192) - 1x3 (224) - 3x1 (256)] - 1x1 Linear (in_ch; the figure's 2048)."""
    return ResidualInception(in_ch, Concat(
        in_ch, chain(in_ch, [(192, (1, 1))], width),
        chain(in_ch, [(192, (1, 1)), (224, (1, 3)), (256, (3, 1))], width)), scale, relu)


def reduction_b_v2(in_ch: int, width: float, small: bool) -> Concat:
    """Fig. 18 (17 -> 8): [maxpool 3x3/2 V | 1x1 (256) - 3x3/2 V (384) | 1x1 (256) - 3x3/2 V (288) |
    1x1 (256) - 3x3 (288) - 3x3/2 V (320)]."""
    d = _down(small)

    def down(trunk: nn.Sequential, filters: int) -> nn.Sequential:
        seq = nn.Sequential(trunk, ConvBN(trunk.out_channels, ch(filters, width), 3, stride=2, padding=d))
        seq.out_channels = ch(filters, width)
        return seq

    return Concat(in_ch, max_pool(small), down(chain(in_ch, [(256, (1, 1))], width), 384),
                  down(chain(in_ch, [(256, (1, 1))], width), 288),
                  down(chain(in_ch, [(256, (1, 1)), (288, (3, 3))], width), 320))


def tf_slim_stem(in_ch: int) -> nn.Sequential:
    """The stem of the released TF-slim Inception-ResNet-v2 checkpoint (timm's and Cadene's port), not Fig. 3:
    Inception-v3's stem (3x3/2 V 32, 3x3 V 32, 3x3 64, maxpool, 1x1 80, 3x3 V 192, maxpool) then "Mixed_5b"
    [1x1 (96) | 1x1 (48) - 5x5 (64) | 1x1 (64) - 3x3 (96) - 3x3 (96) | avgpool - 1x1 (64)]: 35x35x320."""
    mixed5b = Concat(192, ConvBN(192, 96, 1), chain(192, [(48, (1, 1)), (64, (5, 5))], 1.0),
                     chain(192, [(64, (1, 1)), (96, (3, 3)), (96, (3, 3))], 1.0), PoolProj(192, 64))
    seq = nn.Sequential(ConvBN(in_ch, 32, 3, stride=2), ConvBN(32, 32, 3), ConvBN(32, 64, 3, padding=1),
                        nn.MaxPool2d(3, stride=2), ConvBN(64, 80, 1), ConvBN(80, 192, 3), nn.MaxPool2d(3, stride=2),
                        mixed5b)
    seq.out_channels = mixed5b.out_channels
    return seq
