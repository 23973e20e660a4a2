"""Linear classifier with the multiclass SVM or the softmax loss (CS231n, "Linear classification").

The score function is linear in the flattened pixels x_i (normalised like every classifier's input):

    s = f(x_i; W, b) = W x_i + b

Multiclass SVM (Weston & Watkins form, CS231n's "hinge loss") with margin delta = 1:

    L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + delta)

Softmax (cross-entropy) loss:

    L_i = -log( e^{s_{y_i}} / sum_j e^{s_j} ) = -s_{y_i} + log sum_j e^{s_j}

The data loss is the mean over the batch, L = (1/N) sum_i L_i. The regulariser lambda * sum W^2 is not in the loss
function (the loop's loss gets scores and labels only): it is the optimizer's ``weight_decay``, which adds
``weight_decay * W`` to the gradient, i.e. the gradient of lambda * sum W^2 with lambda = weight_decay / 2
(on the bias too, which CS231n leaves out; with one bias per class it changes little). Reported losses are the data
loss alone.

The learned rows of W, reshaped to images, are the class templates the notes draw (:func:`class_templates`,
:func:`save_templates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.classification import LossFn, register_classifier
from trainables.context import unwrap
from trainables.data import DatasetBundle
from trainables.loop import LOOP_DEFAULTS
from trainables.registry import check_choice, check_range

LOSSES = ("svm", "softmax")


def svm_loss(scores: torch.Tensor, y: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Mean multiclass hinge loss of (N, C) ``scores`` for labels ``y``."""
    correct = scores.gather(1, y[:, None])  # s_{y_i}, (N, 1)
    margins = (scores - correct + delta).clamp(min=0.0)  # max(0, s_j - s_{y_i} + delta)
    margins = margins.scatter(1, y[:, None], 0.0)  # the sum runs over j != y_i
    return margins.sum(1).mean()  # L = (1/N) sum_i L_i


def softmax_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of (N, C) ``scores`` for labels ``y``."""
    # L_i = -s_{y_i} + log sum_j e^{s_j}   (logsumexp subtracts max_j s_j first: the notes' numeric-stability trick)
    return (torch.logsumexp(scores, 1) - scores.gather(1, y[:, None]).squeeze(1)).mean()


def loss_for(config: Mapping[str, Any]) -> LossFn:
    if config["loss"] == "svm":
        delta = float(config["delta"])
        return lambda scores, y: svm_loss(scores, y, delta)
    return softmax_loss


LINEAR_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "loss": "softmax",
    "delta": 1.0,  # the SVM's margin; CS231n: delta = 1 is safe because lambda sets the scale of W
    # SGD with Nesterov momentum 0.9 (the loop's default) at lr 0.01, 10 epochs on MNIST-5k, seed 0: val_error 0.092
    # (svm) and 0.076 (softmax), test_error 0.112 and 0.104 (measured).
    "lr": 0.01,
    "weight_decay": 5e-4,  # lambda = 2.5e-4 in lambda * sum W^2 (module docstring)
    "epochs": 10,
}


def validate_linear(config: dict[str, Any]) -> None:
    check_choice(config, "loss", LOSSES)
    check_range(config, "delta", 0.0, low_open=True)


def build(config: Mapping[str, Any], data: DatasetBundle) -> nn.Module:
    """s = W x + b over the flattened pixels."""
    channels, height, width = data.input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, data.num_classes))


def class_templates(model: nn.Module, data: DatasetBundle) -> torch.Tensor:
    """The rows of W as images: (num_classes, C, H, W), in normalised-pixel units."""
    linear = next(m for m in unwrap(model).modules() if isinstance(m, nn.Linear))
    return linear.weight.detach().cpu().reshape(data.num_classes, *data.input_shape)


def save_templates(path: str | Path, templates: torch.Tensor, class_names: Sequence[str] | None = None) -> Path:
    """One PNG with a panel per class; each template is min-max scaled to [0, 1] on its own, as the notes draw
    them (the sign and shape matter, not the absolute scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(templates)
    names = list(class_names) if class_names is not None else [str(i) for i in range(count)]
    fig, axes = plt.subplots(1, count, figsize=(1.2 * count, 1.5), squeeze=False)
    for ax, template, name in zip(axes[0], templates, names, strict=True):
        low, high = template.min(), template.max()
        image = ((template - low) / (high - low).clamp(min=1e-12)).permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_templates(model: nn.Module, data: DatasetBundle, directory: str) -> None:
    """The run's ``task/templates.png``: what each class's row of W has learned to look for."""
    save_templates(Path(directory) / "templates.png", class_templates(model, data))


train_linear = register_classifier(
    "linear", build, defaults=LINEAR_DEFAULTS, validate=validate_linear, loss=loss_for, artifacts=write_templates,
    description="Linear classifier s = Wx + b with the multiclass SVM (hinge) or softmax loss (CS231n).")
