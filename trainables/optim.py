"""Optimizers, learning-rate schedules and warm-up, built from a trainable's config.

Every supervised trainable has these keys (``OPTIM_DEFAULTS``, part of the loop's defaults). A task with several
optimizers (a GAN's generator and discriminator) gives each a prefix: ``g_lr``, ``d_optimizer`` ... override the
unprefixed keys for that optimizer only (see :func:`build_optimizer`).

The defaults are the optimizer of the stochastic-depth and ResNet papers: SGD, momentum 0.9, Nesterov, weight decay
1e-4, lr 0.1 divided by 10 at 50% and 75% of the epochs. Schedules step once per epoch (a report round), so a
resumed run continues them from the checkpoint exactly.

Warm-up (He et al. 2015, Sec. 4.2, ResNet-110: "we use 0.01 to warm up the training until the training error is
below 80% (about 400 iterations), and then go back to 0.1"): ``warmup_lr`` replaces the scheduled lr either for the
first ``warmup_steps`` optimizer steps, or, with ``warmup_steps = 0``, until an epoch ends with training error below
``warmup_until_error`` (decided per epoch, so every DDP rank switches together).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from trainables.registry import ConfigError, check_choice, check_range

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("step", "cosine", "linear", "constant")

OPTIM_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,  # SGD momentum; RMSProp's momentum too
    "nesterov": True,
    "weight_decay": 1e-4,
    "betas": [0.9, 0.999],  # Adam / AdamW
    "alpha": 0.99,  # RMSProp's smoothing constant (PyTorch's name)
    "eps": 1e-8,  # Adam / AdamW / RMSProp / Adagrad denominator
    "lr_schedule": "step",  # step: x lr_gamma at lr_milestones; cosine / linear: to lr * lr_final over the epochs
    "lr_milestones": [0.5, 0.75],  # fractions of `epochs` at which lr is multiplied by lr_gamma
    "lr_gamma": 0.1,
    "lr_final": 0.0,  # cosine / linear: the last epoch's lr as a fraction of lr
    "warmup_lr": None,  # None = no warm-up
    "warmup_steps": 0,  # > 0: warm up for this many optimizer steps; 0: until the training error is low enough
    "warmup_until_error": 0.8,
}


def _key(config: Mapping[str, Any], prefix: str, name: str) -> Any:
    return config.get(f"{prefix}{name}", config[name]) if prefix else config[name]


def validate_optim_config(config: Mapping[str, Any], prefix: str = "") -> None:
    """Range checks for the optimizer keys (``prefix``-ed ones where a task has several optimizers)."""
    view = {name: _key(config, prefix, name) for name in OPTIM_DEFAULTS}
    check_choice(view, "optimizer", OPTIMIZERS)
    check_choice(view, "lr_schedule", SCHEDULES)
    check_range(view, "lr", 0.0, low_open=True)
    check_range(view, "momentum", 0.0, 1.0, high_open=True)
    check_range(view, "weight_decay", 0.0)
    check_range(view, "alpha", 0.0, 1.0, low_open=True, high_open=True)
    check_range(view, "eps", 0.0, low_open=True)
    check_range(view, "lr_gamma", 0.0, 1.0, low_open=True)
    check_range(view, "lr_final", 0.0, 1.0)
    check_range(view, "warmup_steps", 0)
    check_range(view, "warmup_until_error", 0.0, 1.0, low_open=True)
    if view["warmup_lr"] is not None:
        check_range(view, "warmup_lr", 0.0, low_open=True)
    if len(view["betas"]) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in view["betas"]):
        raise ConfigError(f"{prefix}betas={view['betas']!r} must be two numbers in [0, 1)")
    if not all(isinstance(m, (int, float)) and 0.0 < m < 1.0 for m in view["lr_milestones"]):
        raise ConfigError(f"{prefix}lr_milestones={view['lr_milestones']!r} must be fractions of the epochs in (0, 1)")
    if view["optimizer"] == "sgd" and view["nesterov"] and view["momentum"] == 0.0:
        raise ConfigError(f"{prefix}nesterov=True needs {prefix}momentum > 0")


def build_optimizer(params: Iterable[torch.nn.Parameter], config: Mapping[str, Any],
                    prefix: str = "") -> torch.optim.Optimizer:
    """The optimizer ``config`` names; ``prefix`` keys (``d_lr``) override the shared ones for this optimizer."""
    kind, lr, wd = _key(config, prefix, "optimizer"), _key(config, prefix, "lr"), _key(config, prefix, "weight_decay")
    eps = _key(config, prefix, "eps")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=_key(config, prefix, "momentum"),
                               nesterov=_key(config, prefix, "nesterov"), weight_decay=wd)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=eps)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=_key(config, prefix, "alpha"), eps=eps, weight_decay=wd,
                                   momentum=_key(config, prefix, "momentum"))
    betas = tuple(_key(config, prefix, "betas"))
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    raise ConfigError(f"{prefix}optimizer={kind!r} is not one of {', '.join(OPTIMIZERS)}")


def build_optimizers_per_model(models: Mapping[str, torch.nn.Module],
                               config: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
    """One optimizer from the shared config keys for each named model (a GAN's generator and discriminator, which
    must not share an optimizer's state), named after the model."""
    return {name: build_optimizer(model.parameters(), config) for name, model in models.items()}


def build_schedule(optimizer: torch.optim.Optimizer, config: Mapping[str, Any], epochs: int,
                   prefix: str = "") -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule ``config`` names over ``epochs`` epochs."""
    kind = _key(config, prefix, "lr_schedule")
    if kind == "step":
        milestones = sorted({max(1, round(m * epochs)) for m in _key(config, prefix, "lr_milestones")})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones,
                                                    gamma=_key(config, prefix, "lr_gamma"))
    final = _key(config, prefix, "lr_final")
    last = max(1, epochs - 1)  # epoch index whose lr is lr * final
    if kind == "cosine":
        # lr_t = lr_final + (lr - lr_final) * (1 + cos(pi t / T)) / 2   (Loshchilov & Hutter 2017, no restarts)
        def factor(t: int) -> float:
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(t, last) / last))
    elif kind == "linear":
        def factor(t: int) -> float:
            return 1.0 + (final - 1.0) * min(t, last) / last
    else:
        def factor(t: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Warmup:
    """The warm-up of the module docstring for a set of optimizers; its state goes into the checkpoint."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.lr = config["warmup_lr"]
        self.steps = int(config["warmup_steps"])
        self.until_error = float(config["warmup_until_error"])
        self.on = self.lr is not None

    def lr_for_step(self, step: int) -> float | None:
        """The lr that replaces the scheduled one at optimizer step ``step`` (0-based), or None."""
        if not self.on:
            return None
        if self.steps > 0 and step >= self.steps:
            self.on = False
            return None
        return self.lr

    def end_of_epoch(self, train_error: float | None) -> None:
        """By training error (``warmup_steps = 0``): the next epoch goes back to the schedule once it is low."""
        if self.on and self.steps == 0 and train_error is not None and train_error < self.until_error:
            self.on = False

    def state_dict(self) -> dict[str, Any]:
        return {"warming_up": self.on}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.on = bool(state.get("warming_up", self.on))
