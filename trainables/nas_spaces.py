"""Architecture search spaces: an ordered list of categorical decisions (data) and a builder (tokens -> nn.Module).

A token is the index of the chosen value of one decision; a token sequence names one child network. Both spaces are
sized for small images (MNIST 28x28) by default and build for any input shape ``(C, H, W)``.

* **MnasNet factorized hierarchical space** (Tan et al. 2019, sec. 4.1, fig. 4): the network is ``num_blocks``
  blocks (7 by default); per block the controller picks conv op, kernel size, squeeze-and-excitation ratio, skip op,
  filter multiplier and number of layers, and every layer of a block is identical (only the first one strides and
  changes width). The skip op "residual" is the identity where the shapes match and "pooling" (average pool with
  the block's stride + 1x1 projection) where they do not, so no combination is invalid.
* **Zoph & Le CNN space** (Zoph & Le 2017, sec. 3.1 and 3.3): per layer, filter height, filter width, number of
  filters and stride, then one yes/no decision per earlier layer: "take that layer's output as an input". This is
  the paper's anchor points with the sigmoid ``P(j -> i) = sigmoid(v^T tanh(W_prev h_j + W_curr h_i))`` replaced by
  a two-way softmax at the step for the pair (j, i), conditioned (like every decision) on the LSTM state; the
  controller's sequence is otherwise the same. Inputs are concatenated in depth; larger maps are average-pooled to
  the smallest one (the paper zero-pads the smaller one instead); a layer with no selected input reads the image;
  every output no later layer consumes feeds the classifier (globally pooled and concatenated), as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.registry import ConfigError


@dataclass(frozen=True)
class Decision:
    """One categorical decision of a space: its name (``b3.kernel``) and the values a token indexes."""

    name: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class NasSpace:
    """A search space: decisions (in the controller's order), grouped per block/layer, and its builder."""

    name: str
    decisions: tuple[Decision, ...]
    builder: Callable[[list[dict[str, Any]], tuple[int, int, int], int], nn.Module]
    groups: tuple[tuple[int, int], ...]  # [start, end) of each block's / layer's decisions

    @property
    def sizes(self) -> list[int]:
        return [len(d.values) for d in self.decisions]

    def check(self, tokens: Sequence[int]) -> None:
        """Raise :class:`ConfigError` unless ``tokens`` is one valid index per decision."""
        if len(tokens) != len(self.decisions):
            raise ConfigError(f"space '{self.name}' has {len(self.decisions)} decisions, got {len(tokens)} tokens")
        for token, decision in zip(tokens, self.decisions, strict=True):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < len(decision.values):
                raise ConfigError(f"token {token!r} for {decision.name} must index one of {list(decision.values)}")

    def choices(self, tokens: Sequence[int]) -> list[dict[str, Any]]:
        """Tokens -> one ``{decision: value}`` dict per block/layer (names without the block prefix)."""
        self.check(tokens)
        return [
            {self.decisions[i].name.split(".", 1)[1]: self.decisions[i].values[tokens[i]] for i in range(lo, hi)}
            for lo, hi in self.groups
        ]

    def describe(self, tokens: Sequence[int]) -> str:
        """A readable one-line form of an architecture, e.g. ``mbconv6 k3 se0.25 res x1.0 L2 | ...``."""
        return " | ".join(_DESCRIBE[self.name](c) for c in self.choices(tokens))

    def build(self, tokens: Sequence[int], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return self.builder(self.choices(tokens), tuple(input_shape), num_classes)


# ---- MnasNet -------------------------------------------------------------------------------------------------------

MNASNET_OPS = ("conv", "sepconv", "mbconv3", "mbconv6")
# Base filters and first-layer strides per block: MnasNet-A1's (16, 24, 40, 80, 112, 160, 320) with strides
# (1, 2, 2, 2, 1, 2, 1) scaled down for 28x28 inputs and 2 CPU cores (a stride-2 stem, then 14 -> 7 -> 4).
MNASNET_BASE_FILTERS = (8, 12, 16, 24, 32, 48, 64)
MNASNET_STRIDES = (1, 1, 2, 1, 2, 1, 1)
MNASNET_STEM = 8
MAX_MNASNET_BLOCKS = len(MNASNET_BASE_FILTERS)


def mnasnet_space(num_blocks: int = 7) -> NasSpace:
    if not 1 <= num_blocks <= MAX_MNASNET_BLOCKS:
        raise ConfigError(f"the MnasNet space has 1 to {MAX_MNASNET_BLOCKS} blocks, got {num_blocks}")
    per_block = (
        ("op", MNASNET_OPS), ("kernel", (3, 5)), ("se", (0.0, 0.25)), ("skip", ("none", "residual")),
        ("width", (0.75, 1.0, 1.25)), ("layers", (1, 2, 3)),
    )
    decisions = tuple(Decision(f"b{b + 1}.{name}", values) for b in range(num_blocks) for name, values in per_block)
    n = len(per_block)
    return NasSpace("mnasnet", decisions, build_mnasnet, tuple((b * n, (b + 1) * n) for b in range(num_blocks)))


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 ReLU(W1 avgpool(x))) (Hu et al. 2018), squeezed to ``ratio`` of the channels."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


def conv_bn(c_in: int, c_out: int, k: int | tuple[int, int], stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    kh, kw = (k, k) if isinstance(k, int) else k
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, (kh, kw), stride, (kh // 2, kw // 2), groups=groups,
                                         bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MnasLayer(nn.Module):
    """One layer of a block: the op's branch (+ SE), plus the skip op."""

    def __init__(self, c_in: int, c_out: int, stride: int, op: str, kernel: int, se: float, skip: str) -> None:
        super().__init__()
        k = kernel
        if op == "conv":
            branch = [conv_bn(c_in, c_out, k, stride)]
            se_at = c_out
        elif op == "sepconv":  # depthwise k x k, then pointwise 1 x 1 (MobileNet v1)
            branch = [conv_bn(c_in, c_in, k, stride, groups=c_in), conv_bn(c_in, c_out, 1)]
            se_at = c_out
        else:  # MBConv e: 1x1 expand to e*c_in, depthwise k x k, [SE], linear 1x1 projection (MobileNet v2)
            hidden = c_in * int(op[-1])
            branch = [conv_bn(c_in, hidden, 1), conv_bn(hidden, hidden, k, stride, groups=hidden)]
            se_at = hidden
        if se > 0:
            branch.append(SqueezeExcite(se_at, se))
        if op.startswith("mbconv"):
            branch.append(conv_bn(se_at, c_out, 1, relu=False))
        self.branch = nn.Sequential(*branch)
        self.shortcut: nn.Module | None = None
        if skip == "residual":
            if stride == 1 and c_in == c_out:
                self.shortcut = nn.Identity()
            else:  # "pooling" skip: the identity's stand-in where stride or width change
                self.shortcut = nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1
                                              else nn.Identity(), conv_bn(c_in, c_out, 1, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch(x)
        return y if self.shortcut is None else y + self.shortcut(x)


def build_mnasnet(blocks: list[dict[str, Any]], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [conv_bn(input_shape[0], MNASNET_STEM, 3, stride=2)]  # 28 -> 14
    c = MNASNET_STEM
    for b, block in enumerate(blocks):
        c_out = max(4, round(MNASNET_BASE_FILTERS[b] * block["width"]))
        for i in range(block["layers"]):  # all layers identical; the first strides and widens
            layers.append(MnasLayer(c, c_out, MNASNET_STRIDES[b] if i == 0 else 1, block["op"], block["kernel"],
                                    block["se"], block["skip"]))
            c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


# ---- Zoph & Le -----------------------------------------------------------------------------------------------------

# The paper's values are heights/widths (1, 3, 5, 7) and filters (24, 36, 48, 64); filters scaled down for CPUs.
ZOPH_FILTERS = (8, 16, 24, 32)


def zoph_space(num_layers: int = 6) -> NasSpace:
    if not 1 <= num_layers <= 15:
        raise ConfigError(f"the Zoph & Le space has 1 to 15 layers, got {num_layers}")
    decisions: list[Decision] = []
    groups = []
    for i in range(num_layers):
        start = len(decisions)
        decisions += [Decision(f"l{i + 1}.height", (1, 3, 5, 7)), Decision(f"l{i + 1}.width", (1, 3, 5, 7)),
                      Decision(f"l{i + 1}.filters", ZOPH_FILTERS), Decision(f"l{i + 1}.stride", (1, 2))]
        # Anchor point of layer i: one yes/no per earlier layer j ("from_j"), 1-based.
        decisions += [Decision(f"l{i + 1}.from{j + 1}", (False, True)) for j in range(i)]
        groups.append((start, len(decisions)))
    return NasSpace("zoph", tuple(decisions), build_zoph, tuple(groups))


class ZophNet(nn.Module):
    def __init__(self, layers: list[dict[str, Any]], input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.inputs: list[list[int]] = []  # per layer: the earlier layers it reads (empty: the image)
        channels: list[int] = []
        convs = []
        for i, layer in enumerate(layers):
            sources = [j for j in range(i) if layer[f"from{j + 1}"]]
            c_in = sum(channels[j] for j in sources) if sources else input_shape[0]
            convs.append(conv_bn(c_in, layer["filters"], (layer["height"], layer["width"]), layer["stride"]))
            channels.append(layer["filters"])
            self.inputs.append(sources)
        self.convs = nn.ModuleList(convs)
        used = {j for sources in self.inputs for j in sources}
        self.outputs = [j for j in range(len(layers)) if j not in used]  # dangling layers feed the classifier
        self.classifier = nn.Linear(sum(channels[j] for j in self.outputs), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor] = []
        for conv, sources in zip(self.convs, self.inputs, strict=True):
            if sources:
                size = min(outs[j].shape[-1] for j in sources), min(outs[j].shape[-2] for j in sources)
                h = torch.cat([_pool_to(outs[j], (size[1], size[0])) for j in sources], dim=1)
            else:
                h = x
            outs.append(conv(h))
        return self.classifier(torch.cat([outs[j].mean(dim=(-2, -1)) for j in self.outputs], dim=1))


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def build_zoph(layers: list[dict[str, Any]], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return ZophNet(layers, input_shape, num_classes)


# ---- lookup ----------------------------------------------------------------------------------------------------

SPACES: dict[str, Callable[[int], NasSpace]] = {"mnasnet": mnasnet_space, "zoph": zoph_space}
DEFAULT_SIZE = {"mnasnet": 7, "zoph": 6}


def get_space(name: str, size: int = 0) -> NasSpace:
    """Space ``name`` with ``size`` blocks (MnasNet) or layers (Zoph & Le); 0 = the space's default."""
    if name not in SPACES:
        raise ConfigError(f"unknown NAS space '{name}'; known: {', '.join(SPACES)}")
    return SPACES[name](size or DEFAULT_SIZE[name])


def _describe_mnasnet(c: dict[str, Any]) -> str:
    skip = "res" if c["skip"] == "residual" else "noskip"
    return f"{c['op']} k{c['kernel']} se{c['se']:g} {skip} x{c['width']:g} L{c['layers']}"


def _describe_zoph(c: dict[str, Any]) -> str:
    sources = [k[4:] for k, v in c.items() if k.startswith("from") and v]
    return f"{c['height']}x{c['width']}/{c['filters']} s{c['stride']} <-[{','.join(sources) or 'img'}]"


_DESCRIBE = {"mnasnet": _describe_mnasnet, "zoph": _describe_zoph}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one sample (convolutions and linear layers)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)
