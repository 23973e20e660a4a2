"""Inception-v4 and Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke & Alemi 2016, arXiv:1602.07261).

Inception-v4 (Fig. 9): stem (Fig. 3) - 4 x Inception-A (Fig. 4) - Reduction-A (Fig. 7, k, l, m, n = 192, 224, 256,
384) - 7 x Inception-B (Fig. 5) - Reduction-B (Fig. 8) - 3 x Inception-C (Fig. 6) - average pooling - dropout (keep
0.8) - softmax. 299x299x3 -> 35x35x384 -> 17x17x1024 -> 8x8x1536.

Inception-ResNet-v2 (Fig. 15): the same stem - 5 x Inception-ResNet-A (Fig. 16) - Reduction-A (k, l, m, n = 256,
256, 384, 384) - 10 x Inception-ResNet-B (Fig. 17) - Reduction-B (Fig. 18) - 5 x Inception-ResNet-C (Fig. 19) -
average pooling - dropout - softmax, each residual block computing ReLU(x + s F(x)) (Fig. 20, s = residual_scale).
The figures' output widths of the residual blocks' 1x1 convs (1154 in Fig. 17, 2048 in Fig. 19) cannot be added to
their inputs (1152 after Reduction-A, 2144 after Reduction-B): the 1x1 conv restores the input width here, as in
every implementation. ``layout="tf_slim"`` builds the released checkpoint's variant instead (timm's
``inception_resnet_v2``): Inception-v3's stem plus "Mixed_5b" (35x35x320), 10/20/10 blocks with scales 0.17/0.10/0.20,
the last block without ReLU, and a 1x1 conv to 1536 before pooling; its blocks are the paper's.

The small-input variant (``input_size="small"``, for 28x28 / 32x32 / 8x8): every 3x3 conv and pooling is padded
and only the stem's first conv keeps its stride 2 (Mixed-3a's and Mixed-5a's become 1), so the grids are 14/7/4
(28x28) or 16/8/4 (32x32) where the paper has 35/17/8 (the paper's valid convs and three stride-2 steps in the stem
would leave nothing of a 28x28 image: the full network needs at least 75x75). ``width`` multiplies every filter
count and ``blocks`` sets the blocks per stage, so the networks fit a laptop; the block structure (branches,
factorised 1x7/7x1 and 1x3/3x1 convs, filter ratios, residual scaling) is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from trainables import inception_blocks as ib
from trainables.classification import register_classifier
from trainables.data import DatasetBundle, known_input_shape
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.registry import ConfigError, check_choice, check_range

ARCHS = ("inception_v4", "inception_resnet_v2")
INPUT_SIZES = ("auto", "full", "small")
LAYOUTS = ("paper", "tf_slim")
PAPER_BLOCKS: dict[str, tuple[int, int, int]] = {"inception_v4": (4, 7, 3), "inception_resnet_v2": (5, 10, 5)}
MIN_FULL_SIZE = 75  # the smallest input the full-size (valid-padded) stem and reductions leave a 1x1 grid of


class InceptionNet(nn.Module):
    """stem - stage A - Reduction-A - stage B - Reduction-B - stage C - [1x1 conv] - avgpool - dropout - linear."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], head_conv: nn.Module | None, features: int,
                 num_classes: int, dropout: float) -> None:
        super().__init__()
        self.stem = stem
        self.stage_a, self.reduction_a, self.stage_b, self.reduction_b, self.stage_c = stages
        self.head_conv = head_conv if head_conv is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)  # "Average Pooling" over the final 8x8 (small: 4x4) grid
        self.dropout = nn.Dropout(dropout)  # "Dropout (keep 0.8)": p = 0.2
        self.fc = nn.Linear(features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        x = self.stage_c(self.reduction_b(self.stage_b(self.reduction_a(self.stage_a(self.stem(x))))))
        return self.head_conv(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


def _positive_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def build_inception(*, arch: str = "inception_v4", num_classes: int = 1000, in_channels: int = 3,
                    small: bool = False, width: float = 1.0, blocks: Sequence[int] | None = None,
                    residual_scale: float | Sequence[float] | None = None, dropout: float = 0.2,
                    layout: str = "paper") -> InceptionNet:
    """Inception-v4 or Inception-ResNet-v2; ``blocks`` None = the paper's (4, 7, 3) or (5, 10, 5).

    residual_scale: s of every residual block (Inception-ResNet-v2 only), or one s per stage (A, B, C); None: 0.2
        ("paper": Sec. 3.3 gives 0.1 to 0.3), or the released checkpoint's 0.17, 0.10, 0.20 ("tf_slim").
    layout: "paper" (Figs. 3, 15-19) or "tf_slim" (the released checkpoint; full size, width 1 only).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if layout not in LAYOUTS or (layout == "tf_slim" and (arch != "inception_resnet_v2" or small or width != 1.0)):
        raise ValueError(f"layout must be 'paper', or 'tf_slim' for the full-size inception_resnet_v2, got {layout!r}")
    _positive_int("num_classes", num_classes)
    _positive_int("in_channels", in_channels)
    if not 0.0 < width <= 4.0:
        raise ValueError(f"width must be in (0, 4], got {width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    counts = tuple(blocks) if blocks is not None else ((10, 20, 10) if layout == "tf_slim" else PAPER_BLOCKS[arch])
    if len(counts) != 3:
        raise ValueError(f"blocks must be three counts (A, B, C), got {blocks!r}")
    for count in counts:
        _positive_int("blocks per stage", count, low=0)
    if residual_scale is None:
        residual_scale = (0.17, 0.10, 0.20) if layout == "tf_slim" else 0.2
    scales = (residual_scale,) * 3 if isinstance(residual_scale, (int, float)) else tuple(residual_scale)
    if len(scales) != 3 or not all(0.0 < s <= 1.0 for s in scales):
        raise ValueError(f"residual_scale must be in (0, 1] (or three such values), got {residual_scale!r}")

    if arch == "inception_v4":
        net_stem = ib.stem(in_channels, width, small)
        c = net_stem.out_channels
        stage_a = nn.Sequential(*_repeat(ib.inception_a, c, counts[0], width))
        c = _width_after(stage_a, c)
        red_a = ib.reduction_a(c, ib.REDUCTION_A_KLMN[arch], width, small)
        stage_b = nn.Sequential(*_repeat(ib.inception_b, red_a.out_channels, counts[1], width))
        c = _width_after(stage_b, red_a.out_channels)
        red_b = ib.reduction_b(c, width, small)
        stage_c = nn.Sequential(*_repeat(ib.inception_c, red_b.out_channels, counts[2], width))
        features = _width_after(stage_c, red_b.out_channels)
        return InceptionNet(net_stem, [stage_a, red_a, stage_b, red_b, stage_c], None, features, num_classes, dropout)

    # Inception-ResNet-v2: residual blocks keep their input width, so every stage has one width.
    net_stem = ib.tf_slim_stem(in_channels) if layout == "tf_slim" else ib.stem(in_channels, width, small)
    c = net_stem.out_channels
    stage_a = nn.Sequential(*(ib.ir_a(c, width, scales[0]) for _ in range(counts[0])))
    red_a = ib.reduction_a(c, ib.REDUCTION_A_KLMN[arch], width, small)
    c = red_a.out_channels
    stage_b = nn.Sequential(*(ib.ir_b(c, width, scales[1]) for _ in range(counts[1])))
    red_b = ib.reduction_b_v2(c, width, small)
    c = red_b.out_channels
    c_blocks = [ib.ir_c(c, width, scales[2]) for _ in range(counts[2])]
    head_conv, features = None, c
    if layout == "tf_slim" and c_blocks:  # the released net: the last block has scale 1, no ReLU; a 1x1 conv to 1536
        c_blocks[-1] = ib.ir_c(c, width, 1.0, relu=False)
        head_conv, features = ib.ConvBN(c, 1536, 1), 1536
    return InceptionNet(net_stem, [stage_a, red_a, stage_b, red_b, nn.Sequential(*c_blocks)], head_conv, features,
                        num_classes, dropout)


def _repeat(block: Any, in_ch: int, count: int, width: float) -> list[nn.Module]:
    out, c = [], in_ch
    for _ in range(count):
        out.append(block(c, width))
        c = out[-1].out_channels
    return out


def _width_after(stage: nn.Sequential, in_ch: int) -> int:
    return stage[-1].out_channels if len(stage) else in_ch


def residual_blocks(model: nn.Module) -> list[ib.ResidualInception]:
    return [m for m in model.modules() if isinstance(m, ib.ResidualInception)]


# ---- the registered trainable ------------------------------------------------------------------------------------

INCEPTION_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "arch": "inception_resnet_v2",  # or inception_v4
    "input_size": "auto",  # auto: full (Fig. 3 stem, valid convs) for inputs >= 75x75, else the small variant
    "width": 0.125,  # filter-count multiplier (0.125: a 170k-parameter net); the paper: 1.0
    "blocks": [1, 1, 1],  # blocks per stage (A, B, C); the paper: v4 [4, 7, 3], Inception-ResNet-v2 [5, 10, 5]
    "residual_scale": 0.2,  # s in ReLU(x + s F(x)) (Sec. 3.3: 0.1 to 0.3); 1.0 = no scaling; v4 ignores it
    "dropout": 0.2,  # before the classifier; the paper: keep probability 0.8
    # The paper trained with RMSProp (decay 0.9, eps 1.0), lr 0.045 decayed by 0.94 every two epochs (batch 32 per
    # replica): `--set optimizer=rmsprop alpha=0.9 eps=1.0 momentum=0.0 lr=0.045` here; the loop's step schedule
    # takes milestones as fractions of the run, so "x 0.94 every 2 epochs" needs its list of milestones. On a
    # laptop's 3,500 MNIST-5k images SGD with Nesterov momentum and a cosine schedule learns in three epochs
    # (val_error 0.146, 65 s of one CPU thread, measured).
    "lr": 0.05,
    "lr_schedule": "cosine",
    "epochs": 3,
    "batch_size": 64,
    "norm": "batch",  # none | batch | weight | mean_only_batch | weight+mean_only_batch (trainables/normalization)
}

def validate_inception(config: dict[str, Any]) -> None:
    check_choice(config, "arch", ARCHS)
    check_choice(config, "input_size", INPUT_SIZES)
    check_range(config, "width", 0.0, 4.0, low_open=True)
    check_range(config, "residual_scale", 0.0, 1.0, low_open=True)
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    blocks = config["blocks"]
    if len(blocks) != 3 or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 64 for b in blocks):
        raise ConfigError(f"blocks={blocks!r} must be three block counts (stages A, B, C) in [0, 64]")
    shape = known_input_shape(config["dataset"])  # None for a registered dataset: its images are checked in the trial
    size = min(shape[1:]) if shape is not None else None
    if config["input_size"] == "full" and size is not None and size < MIN_FULL_SIZE:
        raise ConfigError(f"input_size='full' needs images of at least {MIN_FULL_SIZE}x{MIN_FULL_SIZE}; "
                          f"dataset {config['dataset']!r} has {size}x{size} (use input_size='small' or 'auto')")


def build(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """The trainable's model for ``config`` on ``data`` (also the ``model`` tool: Deep Compression rebuilds it)."""
    channels, height, width_px = data.input_shape
    small = {"full": False, "small": True}.get(config["input_size"], min(height, width_px) < MIN_FULL_SIZE)
    return apply_norm(build_inception(arch=config["arch"], num_classes=data.num_classes, in_channels=channels,
                                      small=small, width=config["width"], blocks=config["blocks"],
                                      residual_scale=config["residual_scale"], dropout=config["dropout"]),
                      config["norm"])


def canonical_inception(config: dict[str, Any]) -> dict[str, Any]:
    """Inception-v4 has no residual blocks: its residual_scale changes nothing."""
    if config.get("arch") == "inception_v4":
        config["residual_scale"] = INCEPTION_DEFAULTS["residual_scale"]
    return config


train_inception = register_classifier(
    "inception", build, defaults=INCEPTION_DEFAULTS, validate=validate_inception, canonical=canonical_inception,
    description="Inception-v4 / Inception-ResNet-v2 (Szegedy et al. 2016), full size or small-input, on the common "
                "loop.")
