"""Normalization as a switch: batch norm, weight norm, mean-only batch norm (Salimans & Kingma 2016, "Weight
Normalization: A Simple Reparameterization to Accelerate Training of Deep Neural Networks", arXiv:1602.07868).

A unit computes  y = phi(w . x + b).  Weight normalization reparameterises its weight vector (paper eq. 2)

    w = g * v / ||v||                       g a scalar per output unit, ||v|| over every dim but the output dim,

so the norm of w is g, independent of v. Its data-dependent initialisation (paper Sec. 2.2) runs one batch through
the net and, layer by layer, sets

    t = v . x / ||v||,   g <- 1 / sigma[t],   b <- -mu[t] / sigma[t]     (mu, sigma over the batch, per unit)

so every pre-activation has mean 0 and variance 1 on that batch. Mean-only batch norm (Sec. 3) keeps batch norm's
centring and drops its division:  t = w . x,  y = phi(t - mu[t] + b)  (mu: the batch mean in training, a running
mean at test). The paper's best CIFAR-10 result combines the two.

:func:`apply_norm` turns a network built with ``nn.BatchNorm1d/2d`` into any of :data:`NORMS`; a classifier that
registers a ``norm`` default gets the key validated (:func:`validate_norm`) and ends its build with ``apply_norm``.

Optimizer: the gradient of v is scaled by g / ||v|| (paper eq. 3), so plain SGD at a batch-norm net's rate diverges
after the data-dependent init (measured: ResNet-20 at SGD 0.1 and a NAS child at SGD 0.05 reach NaN); the paper
trains with Adam (lr 0.003), which trains ``weight+mean_only_batch`` on the nets tried here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from trainables.registry import check_choice

NORMS: tuple[str, ...] = ("none", "batch", "weight", "mean_only_batch", "weight+mean_only_batch")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
M = TypeVar("M", bound=nn.Module)


def _unit_shape(x: Tensor) -> list[int]:
    """Broadcast shape of a per-unit vector against ``x`` (units on dim 1): (1, C, 1, ...)."""
    return [1, -1] + [1] * (x.dim() - 2)


# ---- weight normalization ----------------------------------------------------------------------------------------


class WeightNorm(nn.Module):
    """The parametrisation ``weight = g * v / ||v||`` of a conv or linear layer (``v`` is the layer's stored weight,
    ``parametrizations.weight.original``; ``g`` is this module's parameter, one per output unit)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        # g = ||v|| at wrap time: w = ||v|| v / ||v|| = v, the function is unchanged
        self.g = nn.Parameter(_norm_per_unit(weight.detach()).clone())

    def forward(self, v: Tensor) -> Tensor:
        shape = [-1] + [1] * (v.dim() - 1)
        # w = g * v / ||v||   (paper eq. 2); the clamp only keeps an all-zero row from dividing by zero
        return self.g.view(shape) * v / _norm_per_unit(v).clamp_min(1e-12).view(shape)


def _norm_per_unit(v: Tensor) -> Tensor:
    """||v|| of each output unit: the norm over every dim but dim 0."""
    return v.flatten(1).norm(dim=1)


def weight_norm(module: M) -> M:
    """Reparameterise ``module.weight`` (a conv or linear layer) as ``g * v / ||v||``; the function is unchanged."""
    parametrize.register_parametrization(module, "weight", WeightNorm(module.weight))
    return module


def weight_norm_of(module: nn.Module) -> WeightNorm | None:
    """The :class:`WeightNorm` parametrising ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, WeightNorm)), None)


def has_weight_norm(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is weight-normalised (and so wants :func:`init_weight_norm`)."""
    return any(weight_norm_of(m) is not None for m in model.modules())


@torch.no_grad()
def init_weight_norm(model: nn.Module, x: Tensor, eps: float = 1e-6, passes: int = 50) -> int:
    """The paper's data-dependent initialisation on the batch ``x``; returns how many layers it set.

    One forward pass in training mode with a hook on every weight-normalised layer: in forward order, each layer
    measures its pre-activation y = g t + b on the batch, per output unit (over the batch and spatial dims), sets

        g <- g / sigma[y]           ( = 1 / sigma[t], the paper's g, since sigma[y] = g sigma[t] )
        b <- (b - mu[y]) / sigma[y] ( = -mu[t] / sigma[t] when b = 0, the paper's b )

    and passes on the normalised output (y - mu) / sigma, which is what the new g and b compute, so the next
    layer is initialised on the statistics it will see. A layer without a bias (followed by mean-only batch norm,
    which centres it) only gets g. A layer that a stochastic-depth draw skipped is set in a further pass (at most
    ``passes``), on that pass's inputs. Everything else in the model (batch-norm running means, the draws of stochastic
    layers, the global RNG) is left as it was: this batch is not a training step.
    """
    touched: set[str] = set()
    handles = []
    done: set[int] = set()

    def hook(module: nn.Module, _inputs: Any, y: Tensor) -> Tensor | None:
        if id(module) in done:  # a layer applied twice in one pass is initialised on its first use
            return None
        done.add(id(module))
        dims = [0, *range(2, y.dim())]
        mu = y.mean(dims)
        sigma = (y.var(dims, unbiased=False) + eps).sqrt()
        weight_norm_of(module).g.div_(sigma)  # g <- g / sigma
        if module.bias is not None:
            module.bias.copy_((module.bias - mu) / sigma)  # b <- (b - mu) / sigma
            return (y - mu.view(_unit_shape(y))) / sigma.view(_unit_shape(y))
        return y / sigma.view(_unit_shape(y))

    for name, module in model.named_modules():
        wn = weight_norm_of(module)
        if wn is not None:
            prefix = f"{name}." if name else ""
            index = list(module.parametrizations.weight).index(wn)
            touched |= {f"{prefix}parametrizations.weight.{index}.g", f"{prefix}bias"}
            handles.append(module.register_forward_hook(hook))
    snapshot = copy.deepcopy(model.state_dict())
    was_training = model.training
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            for _ in range(passes):
                model(x)
                if len(done) == len(handles):
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # Restore every buffer and extra state (running means, generators); keep only the new g and b.
    current = model.state_dict()
    model.load_state_dict({k: current[k] if k in touched else v for k, v in snapshot.items()})
    return len(done)


# ---- mean-only batch normalization -------------------------------------------------------------------------------


class _MeanOnlyBatchNorm(nn.Module):
    """y = x - mu[x] + b per channel: batch norm's centring without its division by the standard deviation."""

    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.momentum = num_features, momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in self._dims:
            raise ValueError(f"{type(self).__name__} expects {self._dims}-dim input, got {tuple(x.shape)}")
        if self.training:
            mu = x.mean([0, *range(2, x.dim())])  # mu[t]: the batch mean of each channel
            with torch.no_grad():  # running = (1 - momentum) running + momentum mu, BatchNorm's convention
                self.running_mean.lerp_(mu.detach(), self.momentum)
        else:
            mu = self.running_mean  # at test: the running mean, as batch norm
        # y = t - mu[t] + b   (paper Sec. 3: no division by sigma[t]); (mu - b) first: one full-size op, not two
        return x - (mu - self.bias).view(_unit_shape(x))

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class MeanOnlyBatchNorm1d(_MeanOnlyBatchNorm):
    """Mean-only batch norm over (N, C) or (N, C, L) inputs."""

    _dims = (2, 3)


class MeanOnlyBatchNorm2d(_MeanOnlyBatchNorm):
    """Mean-only batch norm over (N, C, H, W) inputs."""

    _dims = (4,)


# ---- the switch --------------------------------------------------------------------------------------------------


def apply_norm(model: M, kind: str) -> M:
    """Convert ``model``, built with ``nn.BatchNorm1d/2d``, to the normalization ``kind`` (one of :data:`NORMS`).

    - ``batch``: unchanged (the same object, bit for bit);
    - ``none``: every batch norm becomes Identity;
    - ``weight``: batch norm dropped, every conv and linear layer weight-normalised;
    - ``mean_only_batch``: every batch norm becomes mean-only batch norm (same momentum); layers untouched;
    - ``weight+mean_only_batch``: both of the last two (the paper's best).

    Biases: a conv written ``bias=False`` because batch norm's shift follows it loses that shift when batch norm is
    dropped, so with ``none`` and ``weight`` every conv/linear layer without a bias gets a zero one (the
    data-dependent init then sets it). With mean-only batch norm the layers stay as built: its centring would cancel
    a bias and it brings its own. Nothing is added to a net that had no batch norm, so ``none`` is the identity
    there (SqueezeNet's convs all have biases).
    """
    if kind not in NORMS:
        raise ValueError(f"norm {kind!r} is not one of {', '.join(NORMS)}")
    if kind == "batch":
        return model
    mean_only = kind in ("mean_only_batch", "weight+mean_only_batch")
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, _replacement(child, mean_only))
                replaced += 1
    if mean_only and not replaced:
        raise ValueError(f"norm {kind!r}: the model has no batch norm to make mean-only")
    for module in model.modules():
        if not isinstance(module, _WEIGHTED):
            continue
        if not mean_only and replaced and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], device=module.weight.device,
                                                   dtype=module.weight.dtype))
        if kind.startswith("weight") and weight_norm_of(module) is None:
            weight_norm(module)
    return model


def _replacement(bn: _BatchNorm, mean_only: bool) -> nn.Module:
    if not mean_only:
        return nn.Identity()
    cls = MeanOnlyBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else MeanOnlyBatchNorm1d
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise ValueError(f"mean-only batch norm replaces BatchNorm1d/2d, not {type(bn).__name__}")
    return cls(bn.num_features, momentum=bn.momentum if bn.momentum is not None else 0.1).to(bn.running_mean.device)


def validate_norm(config: Mapping[str, Any]) -> None:
    """``norm`` is one of :data:`NORMS` (ConfigError otherwise)."""
    check_choice(config, "norm", NORMS)

