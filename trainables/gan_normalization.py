"""The weight normalization of Xiang & Li 2017 for GANs ("On the Effects of Batch and Weight Normalization in
Generative Adversarial Networks", arXiv:1704.03971).

A unit's weight vector w enters only through its direction:

    strict weight-normalized layer:   y = w . x / ||w||                     (no learned scale, no bias)
    affine weight-normalized layer:   y = gamma * w . x / ||w|| + beta      (the output layers)
    translated PReLU (TPReLU):        y = PReLU(x - b) + b                   (b learned per channel)

A strict layer has neither scale nor bias: the learned translation b of the TPReLU that follows it is the layer's
only shift (the paper's TReLU_a(x) = ReLU(x - a) + a, with PReLU's learned negative slope), and the scale a plain
layer would have is pushed, through the positively homogeneous activations, to the affine layer at the network's
output. So every hidden layer keeps its output on the scale of its input (||w / ||w|||| = 1).

||w|| is the norm of one output unit's weights: over (in) for a linear layer, over (in, kh, kw) for a convolution.
A transposed convolution with stride s gives each output pixel only 1 / (s_h s_w) of its kernel taps, so its
norm is taken as ||w|| / sqrt(s_h s_w), the norm of the weights that reach one output pixel (the authors'
code does the same), which keeps the layer's output on its input's scale like the others.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-12  # only keeps an all-zero weight vector from dividing by zero


def unit_weight(v: Tensor, out_dim: int = 0, taps_fraction: float = 1.0) -> Tensor:
    """``v`` with every output unit's weight vector (all dims but ``out_dim``) divided by its norm:
    w / ||w||, where ||w||^2 = taps_fraction * sum w_i^2 (``taps_fraction`` = 1 / (s_h s_w) for a transposed
    convolution, see the module docstring)."""
    dims = [d for d in range(v.dim()) if d != out_dim]
    norm = (v.pow(2).sum(dims, keepdim=True) * taps_fraction).clamp_min(EPS).sqrt()
    return v / norm  # w / ||w||


class _WeightNormalized:
    """Shared by the three layers: the affine part (gamma, beta per output unit) when ``affine``."""

    gamma: nn.Parameter | None
    beta: nn.Parameter | None

    def _init_affine(self, units: int, affine: bool) -> None:
        if affine:
            self.gamma = nn.Parameter(torch.ones(units))
            self.beta = nn.Parameter(torch.zeros(units))
        else:
            self.register_parameter("gamma", None)  # type: ignore[attr-defined]
            self.register_parameter("beta", None)  # type: ignore[attr-defined]

    def _affine(self, y: Tensor) -> Tensor:
        if self.gamma is None:
            return y  # strict: y = w . x / ||w||
        shape = [1, -1] + [1] * (y.dim() - 2)
        return self.gamma.view(shape) * y + self.beta.view(shape)  # affine: y = gamma * w . x / ||w|| + beta


class WNLinear(_WeightNormalized, nn.Linear):
    """y = w . x / ||w||  (strict), or  gamma * w . x / ||w|| + beta  with ``affine=True``."""

    def __init__(self, in_features: int, out_features: int, affine: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._init_affine(out_features, affine)

    def forward(self, x: Tensor) -> Tensor:
        return self._affine(F.linear(x, unit_weight(self.weight, 0)))  # w . x / ||w||, weight (out, in)


class WNConv2d(_WeightNormalized, nn.Conv2d):
    """A convolution whose every output channel's kernel is a unit vector: y = w * x / ||w|| (strict), or
    gamma * w * x / ||w|| + beta (affine); ||w|| over (in, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 affine: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self._init_affine(out_channels, affine)

    def forward(self, x: Tensor) -> Tensor:
        w = unit_weight(self.weight, 0)  # w / ||w||, weight (out, in, kh, kw)
        return self._affine(F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups))


class WNConvTranspose2d(_WeightNormalized, nn.ConvTranspose2d):
    """A transposed convolution with y = w * x / ||w|| (strict) or gamma * w * x / ||w|| + beta (affine),
    ||w||^2 = sum over (in, kh, kw) of w^2 / (s_h s_w): the weights that reach one output pixel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 affine: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self._init_affine(out_channels, affine)

    def forward(self, x: Tensor) -> Tensor:
        # weight (in, out, kh, kw): the output unit is dim 1; each output pixel sees 1/(s_h s_w) of the taps
        w = unit_weight(self.weight, 1, 1.0 / math.prod(self.stride))
        y = F.conv_transpose2d(x, w, None, self.stride, self.padding, self.output_padding, self.groups,
                               self.dilation)
        return self._affine(y)


class TPReLU(nn.Module):
    """Translated PReLU: y = PReLU(x - b) + b, per channel, with PReLU's learned slope a (init 0.25) for
    x < b and a learned translation b (init 0); with a = 0 it is the paper's TReLU_b(x) = ReLU(x - b) + b."""

    def __init__(self, num_channels: int, init: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_channels,), init))  # PReLU's negative slope a
        self.bias = nn.Parameter(torch.zeros(num_channels))  # the translation b

    def forward(self, x: Tensor) -> Tensor:
        b = self.bias.view([1, -1] + [1] * (x.dim() - 2))
        return F.prelu(x - b, self.weight) + b  # PReLU(x - b) + b
