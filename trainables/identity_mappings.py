"""Residual units of He et al. 2016, "Identity Mappings in Deep Residual Networks" (arXiv:1603.05027), Sec. 3-4.

One unit computes, with x its input, S the shortcut and F the residual branch (BN/ReLU placed by the ordering):

    h = s(x) * S(x) + t(x) * F(x)           shortcut variant (Sec. 3, Fig. 2) chooses S, s and t
    y = post(h)                             ordering (Sec. 4, Fig. 4) chooses post and where BN/ReLU sit in F

Shortcut variants (``shortcut=``):
    identity         s = 1,         t = 1                                    (Fig. 2a)
    scaling          s = lambda,    t = 1 - lambda if scale_branch else 1    (Fig. 2b; the paper's 0.5 / 0.5 row)
    gating           s = 1 - g(x),  t = g(x),   g(x) = sigmoid(W_g x + b_g), W_g a 1x1 conv   (Fig. 2c, exclusive)
    shortcut_gating  s = 1 - g(x),  t = 1                                    (Fig. 2d, shortcut-only gating)
    conv1x1          S(x) = W_s x (1x1 conv on every shortcut), s = t = 1   (Fig. 2e)
    dropout          s = m ~ Bernoulli(1 - rate) per element, not rescaled; at test s = E[m] = 1 - rate   (Fig. 2f)

Orderings (``ordering=``), written for the basic unit (the bottleneck unit has three convs, same pattern):
    original          F = BN(W2 ReLU(BN(W1 x)));     y = ReLU(h)       (Fig. 4a)
    bn_after_add      F = W2 ReLU(BN(W1 x));         y = ReLU(BN(h))   (Fig. 4b)
    relu_before_add   F = ReLU(BN(W2 ReLU(BN(W1 x)))); y = h           (Fig. 4c)
    relu_only_preact  F = BN(W2 ReLU(BN(W1 ReLU(x)))); y = h           (Fig. 4d)
    full_preact       F = W2 ReLU(BN(W1 ReLU(BN(x)))); y = h           (Fig. 4e, the proposed unit)

A unit whose shape changes uses the parameter-free option-A shortcut of ``trainables/resnet.py`` (except conv1x1).
Stochastic depth (Huang et al. 2016) wraps F: h = s S(x) + b_l t F(x), b_l ~ Bernoulli(p_l), F skipped when b_l = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainables.layers import OptionAShortcut
from trainables.stochastic_depth import StochasticDepth

ORDERINGS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
PREACT_ORDERINGS = ("relu_only_preact", "full_preact")
SHORTCUTS = ("identity", "scaling", "gating", "shortcut_gating", "conv1x1", "dropout")
BLOCKS = ("basic", "bottleneck")
BOTTLENECK_EXPANSION = 4  # ResNet-164: 1x1 (c) - 3x3 (c) - 1x1 (4c)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)  # BN supplies the bias


def branch_convs(block: str, in_ch: int, out_ch: int, stride: int) -> list[nn.Conv2d]:
    """The convolutions of F in order: basic 3x3-3x3; bottleneck 1x1-3x3-1x1 (stride on the 3x3, as in fb.resnet)."""
    if block == "basic":
        return [_conv(in_ch, out_ch, 3, stride), _conv(out_ch, out_ch, 3)]
    mid = out_ch // BOTTLENECK_EXPANSION
    return [_conv(in_ch, mid, 1), _conv(mid, mid, 3, stride), _conv(mid, out_ch, 1)]


def make_branch(block: str, in_ch: int, out_ch: int, stride: int, ordering: str, *, first_unit: bool = False,
                dropout: float = 0.0) -> tuple[nn.Sequential, nn.Module]:
    """(F, post): the residual branch with BN/ReLU where ``ordering`` puts them, and what follows the addition.

    ``first_unit``: in a pre-activation net the unit right after the stem's conv-BN-ReLU skips its own leading
    activation (He et al. 2016 Sec. 4.1: "we adopt the first activation right after conv1").
    ``dropout``: nn.Dropout before the last conv of F (the Wide-ResNet placement, between the convs).
    """
    convs = branch_convs(block, in_ch, out_ch, stride)
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        last = i == len(convs) - 1
        if last and dropout > 0:
            layers.append(nn.Dropout(dropout))
        if ordering == "full_preact":  # BN-ReLU-conv, repeated
            if not (first_unit and i == 0):
                layers += [nn.BatchNorm2d(conv.in_channels), nn.ReLU(inplace=False)]
            layers.append(conv)
        elif ordering == "relu_only_preact":  # ReLU-conv-BN, repeated
            if not (first_unit and i == 0):
                layers.append(nn.ReLU(inplace=False))
            layers += [conv, nn.BatchNorm2d(conv.out_channels)]
        else:  # post-activation: conv-BN-ReLU, ..., conv[-BN][-ReLU]
            layers.append(conv)
            if not (last and ordering == "bn_after_add"):
                layers.append(nn.BatchNorm2d(conv.out_channels))
            if not last or ordering == "relu_before_add":
                layers.append(nn.ReLU(inplace=True))
    post: nn.Module
    if ordering == "original":
        post = nn.ReLU()
    elif ordering == "bn_after_add":
        post = nn.Sequential(nn.BatchNorm2d(out_ch), nn.ReLU())
    else:
        post = nn.Identity()
    return nn.Sequential(*layers), post


class Gate(nn.Module):
    """g(x) = sigmoid(W_g x + b_g), W_g a 1x1 conv (strided like the unit); b_g starts at ``bias`` (paper: -6)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, bias: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True)
        nn.init.constant_(self.conv.bias, bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(x))


class ResidualUnit(nn.Module):
    """y = post(s(x) S(x) + b_l t(x) F(x)), the variants in the module docstring."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, block: str = "basic", ordering: str = "full_preact",
                 shortcut: str = "identity", survival_prob: float = 1.0, seed: int = 0, first_unit: bool = False,
                 dropout: float = 0.0, scale: float = 0.5, scale_branch: bool = False, gate_bias: float = -6.0,
                 shortcut_dropout: float = 0.5) -> None:
        super().__init__()
        branch, self.post = make_branch(block, in_ch, out_ch, stride, ordering, first_unit=first_unit,
                                        dropout=dropout)
        self.branch = StochasticDepth(branch, survival_prob, seed=seed)
        self.kind = shortcut
        if shortcut == "conv1x1":
            self.shortcut: nn.Module = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        elif stride != 1 or in_ch != out_ch:
            self.shortcut = OptionAShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Identity()
        self.gate = Gate(in_ch, out_ch, stride, gate_bias) if shortcut in ("gating", "shortcut_gating") else None
        self.scale = float(scale)
        self.scale_branch = bool(scale_branch)
        self.shortcut_dropout = float(shortcut_dropout)

    def forward(self, x: Tensor) -> Tensor:
        s_x = self.shortcut(x)  # S(x)
        f = self.branch(x)  # train: b_l F(x) (None when b_l = 0);  eval: p_l F(x)
        kind = self.kind
        if kind == "scaling":
            s_x = self.scale * s_x  # lambda * S(x)
            if f is not None and self.scale_branch:
                f = (1.0 - self.scale) * f  # (1 - lambda) * F(x)
        elif kind in ("gating", "shortcut_gating"):
            g = self.gate(x)  # g(x) = sigmoid(W_g x + b_g)
            s_x = (1.0 - g) * s_x  # (1 - g(x)) * S(x)
            if f is not None and kind == "gating":
                f = g * f  # g(x) * F(x): exclusive gating
        elif kind == "dropout":
            keep = 1.0 - self.shortcut_dropout
            if self.training:
                s_x = s_x * torch.bernoulli(torch.full_like(s_x, keep))  # m * S(x), m ~ Bernoulli(1 - rate)
            else:
                s_x = keep * s_x  # E[m] * S(x)
        h = s_x if f is None else s_x + f  # h = s S(x) + t F(x)
        return self.post(h)  # y = post(h)
