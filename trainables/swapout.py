"""Swapout (Singh, Hoiem & Forsyth 2016, "Swapout: Learning an ensemble of deep architectures", arXiv:1605.06465).

A residual unit with input X and residual branch F computes

    Y = Theta1 * X + Theta2 * F(X)                                  (paper eq. 3)

with Theta1, Theta2 independent tensors of i.i.d. Bernoulli(theta1), Bernoulli(theta2) entries, drawn per
mini-batch and per element. Special cases (tested in tests/test_swapout.py):

    Theta1 = Theta2 = 1                      plain residual unit   Y = X + F(X)
    Theta1 = 1, Theta2 = b 1, b ~ B(p)       stochastic depth      one draw per unit (``granularity="unit"``)
    Theta1 = 0, Theta2 ~ B(q) per element    dropout of F(X)       Y = Theta2 * F(X)

Rates per unit l = 1..L: ``linear``  theta_l = 1 + (l - 1) / (L - 1) * (theta_L - 1)  (Linear(1, theta_L), from 1 at
the first unit to theta_L at the last), or ``uniform`` theta_l = theta_L; the paper ties theta1 = theta2.

Inference: ``deterministic`` replaces the masks by their expectations, Y = theta1 X + theta2 F(X); ``stochastic``
averages the softmax over N sampled forward passes, p(y|x) = 1/N sum_i softmax(f(x; Theta^(i))), and returns
log p(y|x) as the logits, so the common loop's evaluate (argmax, cross-entropy) scores the ensemble as it is.
F is the full pre-activation basic branch (BN-ReLU-conv3x3-BN-ReLU-conv3x3) of ``trainables/identity_mappings.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.classification import CLASSIFICATION_METRICS, EvalModes, register_classifier
from trainables.data import DatasetBundle
from trainables.identity_mappings import make_branch
from trainables.layers import OptionAShortcut, SeededDraws, block_seed
from trainables.loop import LOOP_DEFAULTS
from trainables.normalization import apply_norm
from trainables.preact_resnet import ResidualNet, stage_widths, units_per_stage
from trainables.registry import ConfigError, check_choice, check_range

SWAP_SCHEDULES = ("linear", "uniform")
INFERENCE = ("deterministic", "stochastic")
# The trainable's ``inference`` also takes "both": deterministic metrics, plus both modes scored on the same weights.
TRAINABLE_INFERENCE = (*INFERENCE, "both")
GRANULARITY = ("element", "unit")


def swapout_rates(num_units: int, final: float, schedule: str = "linear") -> list[float]:
    """theta_l for units l = 1..L: Linear(1, final) or Uniform(final)."""
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"final rate must be in [0, 1], got {final!r}")
    if schedule == "uniform" or num_units == 1:
        return [float(final)] * num_units
    if schedule == "linear":
        # theta_l = 1 + (l - 1) / (L - 1) * (theta_L - 1): 1 at the first unit, theta_L at the last
        return [1.0 + (ell - 1) / (num_units - 1) * (final - 1.0) for ell in range(1, num_units + 1)]
    raise ValueError(f"unknown schedule {schedule!r}, expected one of {SWAP_SCHEDULES}")


class SwapoutUnit(SeededDraws, nn.Module):
    """Y = Theta1 * S(X) + Theta2 * F(X), S the identity (option A where the shape changes).

    Masks come from this unit's own CPU generator (seeded per unit), so they are reproducible, checkpointed with
    the weights, and independent of the global RNG. ``sampling`` = True makes eval mode draw masks too (used by
    stochastic inference). A rate of exactly 1 or 0 draws nothing. ``granularity="unit"`` draws one Bernoulli per
    mask per forward instead of one per element; with theta2 = 0 drawn the branch is not computed.
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module, theta1: float, theta2: float, seed: int = 0,
                 granularity: str = "element") -> None:
        super().__init__()
        if not (0.0 <= theta1 <= 1.0 and 0.0 <= theta2 <= 1.0):
            raise ValueError(f"swapout rates must be in [0, 1], got {theta1!r}, {theta2!r}")
        if granularity not in GRANULARITY:
            raise ValueError(f"granularity={granularity!r} is not one of {', '.join(GRANULARITY)}")
        self.branch, self.shortcut = branch, shortcut
        self.theta1, self.theta2 = float(theta1), float(theta2)
        self.granularity = granularity
        self.rank_varying = granularity == "element"  # one draw per unit (SD-like) agrees across ranks
        self.sampling = False
        self.seed_draws(seed)

    def _mask(self, theta: float, like: Tensor) -> Tensor | float:
        """Theta ~ Bernoulli(theta): 1 iff u < theta, u ~ U[0, 1) (the same draw as StochasticDepth)."""
        if theta in (0.0, 1.0):
            return theta  # deterministic: no draw
        if self.granularity == "unit":
            return float(torch.rand((), generator=self.generator).item() < theta)
        # Per-element masks differ between DDP ranks (each rank holds other samples of one large batch).
        u = torch.rand(like.shape, generator=self.draw_generator())
        return (u < theta).to(device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        s = self.shortcut(x)  # X (option A where the shape changes)
        if self.training or self.sampling:
            theta1 = self._mask(self.theta1, s)  # Theta1
            theta2 = self._mask(self.theta2, s)  # Theta2
        else:
            theta1, theta2 = self.theta1, self.theta2  # E[Theta1], E[Theta2]
        out = s if isinstance(theta1, float) and theta1 == 1.0 else theta1 * s
        if isinstance(theta2, float) and theta2 == 0.0:
            return out  # Theta2 = 0: F(X) contributes nothing, so it is not computed
        f = self.branch(x)
        return out + (f if isinstance(theta2, float) and theta2 == 1.0 else theta2 * f)  # Theta1 X + Theta2 F(X)

    def extra_repr(self) -> str:
        return f"theta1={self.theta1:.4g}, theta2={self.theta2:.4g}, granularity={self.granularity}"


class SwapoutNet(ResidualNet):
    """A pre-activation ResNet of swapout units; eval mode infers deterministically or by averaging N samples."""

    def __init__(self, *args: Any, inference: str = "deterministic", samples: int = 30, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inference, self.samples = inference, samples

    @contextmanager
    def inferring(self, mode: str) -> Iterator[None]:
        """Evaluate in ``mode`` (deterministic or stochastic) inside the block, whatever the net's own setting."""
        if mode not in INFERENCE:
            raise ValueError(f"inference={mode!r} is not one of {', '.join(INFERENCE)}")
        own, self.inference = self.inference, mode
        try:
            yield
        finally:
            self.inference = own

    def swapout_units(self) -> list[SwapoutUnit]:
        return [m for m in self.modules() if isinstance(m, SwapoutUnit)]

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.inference == "deterministic":
            return super().forward(x)
        units = self.swapout_units()
        for unit in units:
            unit.sampling = True
        try:
            # p(y|x) = 1/N sum_i softmax(f(x; Theta^(i)));  logits := log p(y|x)
            probs = torch.stack([F.softmax(super(SwapoutNet, self).forward(x), dim=1)
                                 for _ in range(self.samples)]).mean(0)
        finally:
            for unit in units:
                unit.sampling = False
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def build_swapout_resnet(*, depth: int = 20, widen: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                         final_rate: float = 0.5, schedule: str = "linear", inference: str = "deterministic",
                         samples: int = 30, dropout: float = 0.0, seed: int = 0) -> SwapoutNet:
    """Pre-activation ResNet-``depth`` (6n+2, basic units) with swapout, theta1 = theta2 = theta_l per unit."""
    if inference not in INFERENCE:
        raise ValueError(f"inference={inference!r} is not one of {', '.join(INFERENCE)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be a positive int")
    n = units_per_stage(depth, "basic")
    rates = swapout_rates(3 * n, final_rate, schedule)

    def make_unit(in_ch: int, out_ch: int, stride: int, ell: int, first: bool) -> nn.Module:
        branch, _ = make_branch("basic", in_ch, out_ch, stride, "full_preact", first_unit=first, dropout=dropout)
        shortcut = OptionAShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()
        return SwapoutUnit(branch, shortcut, rates[ell], rates[ell], seed=block_seed(seed, ell))

    return SwapoutNet(n, stage_widths(widen, "basic"), make_unit, num_classes=num_classes, in_channels=in_channels,
                      head="bn_relu", inference=inference, samples=samples)


# ---- the registered trainable ------------------------------------------------------------------------------------

SWAPOUT_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "depth": 20,  # 6n+2, pre-activation basic units
    "widen": 1.0,  # Wide-ResNet k (the paper's swapout nets are wide: e.g. 32 layers, k = 4)
    "swap_schedule": "linear",  # linear: Linear(1, swap_final); uniform: every unit swap_final
    "swap_final": 0.5,  # theta at the last unit (theta1 = theta2); 1.0 = plain pre-activation ResNet
    # deterministic: masks -> expectations; stochastic: mean softmax of N samples; both: deterministic metrics plus
    # {split}_error_deterministic / {split}_error_stochastic of the same weights each epoch (a paired comparison)
    "inference": "deterministic",
    "inference_samples": 30,  # N of stochastic inference (the paper: 30)
    "dropout": 0.0,  # dropout between the convs of each branch
    "norm": "batch",  # none | batch | weight | mean_only_batch | weight+mean_only_batch (trainables/normalization)
}


def validate_swapout(config: dict[str, Any]) -> None:
    try:
        units_per_stage(config["depth"], "basic")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_range(config, "widen", 0.0, 64.0, low_open=True)
    check_choice(config, "swap_schedule", SWAP_SCHEDULES)
    check_range(config, "swap_final", 0.0, 1.0)
    check_choice(config, "inference", TRAINABLE_INFERENCE)
    check_range(config, "inference_samples", 1, 1000)
    check_range(config, "dropout", 0.0, 1.0, high_open=True)


def swapout_from_config(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """The net ``config`` trains on ``data``: the train function's builder and the ``model`` tool
    (``inference=both`` builds the deterministic net; the stochastic rule is an eval mode of the same weights)."""
    both = config["inference"] == "both"
    return apply_norm(build_swapout_resnet(
        depth=config["depth"], widen=config["widen"], num_classes=data.num_classes, in_channels=data.input_shape[0],
        final_rate=config["swap_final"], schedule=config["swap_schedule"],
        inference="deterministic" if both else config["inference"],
        samples=config["inference_samples"], dropout=config["dropout"], seed=config["seed"],
    ), config["norm"])


def paired_inference(config: Mapping[str, Any]) -> EvalModes | None:
    """inference=both: the plain metrics are the deterministic ones (copied as *_deterministic, not computed twice),
    and the stochastic ensemble is scored on the same weights."""
    if config["inference"] != "both":
        return None
    return {"deterministic": None, "stochastic": lambda net: net.inferring("stochastic")}


# inference=both reports {split}_{error,loss}_{mode} beside the plain metrics: declared, so that a sweep, compare or
# a claim (the paired stochastic-vs-deterministic test of Part I, claim 4) may rank and read them.
SWAPOUT_METRICS = {**CLASSIFICATION_METRICS, **{f"{split}_{kind}_{mode}": "min" for split in ("val", "test")
                                                for kind in ("error", "loss") for mode in INFERENCE}}

train_swapout = register_classifier(
    "swapout", swapout_from_config, defaults=SWAPOUT_DEFAULTS, validate=validate_swapout, eval_modes=paired_inference,
    metrics=SWAPOUT_METRICS,
    description="Swapout (Singh et al. 2016) on a pre-activation ResNet: rate schedule, deterministic or stochastic "
                "inference.")
