"""Adversarial examples and saliency maps: looking at what a trained classifier attends to.

Fast gradient sign method (Goodfellow, Shlens and Szegedy 2015, "Explaining and Harnessing Adversarial Examples",
eq. in Sec. 4):

    x_adv = x + eps * sign(grad_x J(theta, x, y))

with ``eps`` in PIXEL units (images in [0, 1]), although the nets see normalised inputs ``(x - mean) / std``
(:class:`trainables.batching.BatchLoader`): the attack maps the batch back to pixels, steps there, clamps to the
valid range [0, 1] and normalises again. Since std > 0 the gradient w.r.t. the normalised input has the same sign
as the gradient w.r.t. the pixels, so one backward pass serves both.

Adversarial training (Goodfellow et al. Sec. 5 train on J~ = a J(x) + (1 - a) J(x_adv); like Kurakin et al. 2017
we mix in batch space): a fraction of every training batch is replaced by its FGSM version, made with the weights
of that step. Keys ``adversarial_eps`` (0 = off) and ``adversarial_fraction``, for every classifier.

Saliency (Simonyan, Vedaldi and Zisserman 2014, "Deep Inside Convolutional Networks", Sec. 3.1):

    M_ij = max_c | d S_y / d x_cij |

the magnitude of the gradient of the (unnormalised) class score S_y w.r.t. the input pixels, max over channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.layers import SeededDraws
from trainables.registry import check_range

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Config keys every classifier gets (merged in register_classifier): eps in pixel units, 0.0 = plain training.
ADVERSARIAL_DEFAULTS: dict[str, Any] = {"adversarial_eps": 0.0, "adversarial_fraction": 0.5}


def validate_adversarial(config: Mapping[str, Any]) -> None:
    """eps in [0, 1] (pixel units; a step of 1 saturates every pixel) and the replaced fraction in [0, 1]."""
    check_range(config, "adversarial_eps", 0.0, 1.0)
    check_range(config, "adversarial_fraction", 0.0, 1.0)


def canonical_adversarial(config: dict[str, Any]) -> dict[str, Any]:
    """Without the attack (eps = 0) the fraction cannot change the run: write it one way."""
    if config.get("adversarial_eps", 0.0) == 0.0 and "adversarial_fraction" in config:
        config["adversarial_fraction"] = ADVERSARIAL_DEFAULTS["adversarial_fraction"]
    return config


def _channels(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised input -> pixels in [0, 1]: ``x * std + mean`` per channel."""
    return x * _channels(std, x) + _channels(mean, x)


def to_normalised(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Pixels -> what the net sees: ``(pixels - mean) / std`` per channel."""
    return (pixels - _channels(mean, pixels)) / _channels(std, pixels)


@contextlib.contextmanager
def no_side_effects(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Forward passes inside leave the model as they found it: BatchNorm running statistics, the model's own draw
    generators (stochastic depth) and the global RNG (dropout) are restored, so the training step that follows sees
    the same net and the same random draws as without the attack."""
    buffers = [b.detach().clone() for b in model.buffers()]
    draws = [(m, m.generator.get_state()) for m in model.modules() if isinstance(m, SeededDraws)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers, strict=True):
            buffer.copy_(saved)
    for module, state in draws:
        module.generator.set_state(state)


def input_gradient(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x J(theta, x, y) for a batch of normalised inputs; the weights get no gradient."""
    x = x.detach().requires_grad_(True)
    loss = loss_fn(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, eps: float,
         mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The FGSM version of the normalised batch ``x`` at ``eps`` pixel units (the model's current mode is used)."""
    if eps == 0:
        return x
    grad = input_gradient(model, loss_fn, x, y)
    pixels = to_pixels(x.detach(), mean, std)
    # x_adv = x + eps * sign(grad_x J(theta, x, y)), in pixel space, kept a valid image  (Goodfellow et al. 2015)
    adversarial = torch.clamp(pixels + eps * torch.sign(grad), 0.0, 1.0)
    return to_normalised(adversarial, mean, std)


def fgsm_mixed_batch(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, eps: float,
                     fraction: float, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``x`` with its first ``round(fraction * len(x))`` samples replaced by their FGSM versions (the batches are
    shuffled, so these are a random subset). The attack uses the weights and mode of this step, without side
    effects on the model (:func:`no_side_effects`)."""
    k = round(fraction * len(x))
    if k == 0 or eps == 0:
        return x
    with no_side_effects(model, x.device):
        adversarial = fgsm(model, loss_fn, x[:k], y[:k], eps, mean, std)
    return torch.cat([adversarial, x[k:]]) if k < len(x) else adversarial


def fgsm_accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], eps_list: Sequence[float],
                  *, mean: Sequence[float], std: Sequence[float], loss_fn: LossFn = F.cross_entropy
                  ) -> dict[float, float]:
    """Accuracy of ``model`` (eval mode) on FGSM examples of every batch of ``loader``, per eps (0 = clean)."""
    model.eval()
    correct = dict.fromkeys(eps_list, 0)
    seen = 0
    for x, y in loader:
        grad = input_gradient(model, loss_fn, x, y) if any(eps > 0 for eps in eps_list) else None
        pixels = to_pixels(x, mean, std)
        with torch.no_grad():
            for eps in eps_list:
                # the same step as fgsm(), sharing one gradient between the epsilons
                adversarial = x if eps == 0 else to_normalised(
                    torch.clamp(pixels + eps * torch.sign(grad), 0.0, 1.0), mean, std)
                correct[eps] += int((model(adversarial).argmax(1) == y).sum())
        seen += len(y)
    return {eps: correct[eps] / seen for eps in eps_list}


def saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, std: Sequence[float]) -> torch.Tensor:
    """Saliency maps (B, H, W) of the normalised batch ``x`` for classes ``y``, w.r.t. pixels (model in eval mode)."""
    model.eval()
    x = x.detach().requires_grad_(True)
    scores = model(x).gather(1, y.view(-1, 1)).sum()  # S_y of each sample: the class score before the softmax
    (grad,) = torch.autograd.grad(scores, x)
    # d S_y / d pixel = d S_y / d x_normalised / std;  M_ij = max_c |d S_y / d x_cij|  (Simonyan et al. 2014)
    return (grad / _channels(std, grad)).abs().amax(dim=1)
