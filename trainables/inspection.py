"""Looking inside a trained classifier: accuracy under FGSM vs epsilon, and saliency maps, of one checkpoint.

Every classifier registered with :func:`trainables.classification.register_classifier` offers this as its
``inspect`` tool (``python -m orchestrator.inspect RUN_ID``). The net is rebuilt the way Deep Compression rebuilds
a source's net (:mod:`trainables.compression_pipeline`): the trainable's ``model`` builder on the run's config and
dataset, then :func:`trainables.checkpoint.load_weights`. The mathematics is in :mod:`trainables.adversarial`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.adversarial import LossFn, fgsm, fgsm_accuracy, saliency, to_pixels
from trainables.batching import BatchLoader
from trainables.checkpoint import load_weights
from trainables.data import DatasetBundle, Split
from trainables.loop import load_data

BuildModel = Callable[[Mapping[str, Any], DatasetBundle], nn.Module]


@dataclass
class Inspection:
    """What one inspection found: accuracy per epsilon (0.0 = clean) on ``split``, and the images it drew."""

    split: str
    images: int
    accuracy: dict[float, float]
    files: list[str] = field(default_factory=list)


def rebuild(build: BuildModel, config: Mapping[str, Any], checkpoint_dir: str,
            device: str | torch.device = "cpu") -> tuple[nn.Module, DatasetBundle]:
    """The checkpoint's net, in eval mode on ``device``, and its dataset (same split as in training)."""
    data = load_data(config)
    model = build(config, data)
    load_weights(checkpoint_dir, {"model": model})
    return model.to(device).eval(), data


def _eval_split(data: DatasetBundle, max_images: int) -> tuple[str, Split]:
    """The test split (the val split for a dataset without one), or ``max_images`` of it drawn with a fixed seed
    (0: all)."""
    name, split = ("test", data.test) if len(data.test.y) > 0 else ("val", data.val)
    return name, split.subset(max_images)


def inspect_checkpoint(build: BuildModel, loss: Callable[[Mapping[str, Any]], LossFn] | None,
                       config: Mapping[str, Any], checkpoint_dir: str, *, eps: Sequence[float] = (0.05, 0.1),
                       saliency_images: int = 8, out_dir: str = ".", max_images: int = 0,
                       device: str | torch.device = "cpu") -> Inspection:
    """FGSM accuracy at 0 and every ``eps`` (pixel units) on the test split, with J the trainable's own loss; a
    plot of it (``fgsm_accuracy.png``) and a grid of ``saliency_images`` saliency maps (``saliency.png``)."""
    model, data = rebuild(build, config, checkpoint_dir, device)
    loss_fn = loss(config) if loss is not None else F.cross_entropy
    name, split = _eval_split(data, max_images)
    loader = BatchLoader(split, batch_size=256, mean=data.mean, std=data.std, device=device)
    epsilons = sorted({0.0, *map(float, eps)})
    accuracy = fgsm_accuracy(model, loader, epsilons, mean=data.mean, std=data.std, loss_fn=loss_fn)
    result = Inspection(name, len(split.y), accuracy)
    os.makedirs(out_dir, exist_ok=True)
    result.files.append(plot_accuracy(accuracy, os.path.join(out_dir, "fgsm_accuracy.png"),
                                      title=f"FGSM on {data.name} {name} ({len(split.y)} images)"))
    if saliency_images > 0:
        x, y = next(iter(BatchLoader(split, batch_size=saliency_images, mean=data.mean, std=data.std,
                                     device=device)))
        result.files.append(plot_saliency(model, loss_fn, x, y, data, max(epsilons),
                                          os.path.join(out_dir, "saliency.png")))
    return result


def plot_accuracy(accuracy: Mapping[float, float], path: str, title: str) -> str:
    """Accuracy vs epsilon, as Goodfellow et al. plot it; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    eps = sorted(accuracy)
    ax.plot(eps, [accuracy[e] for e in eps], marker="o")
    ax.set(xlabel="epsilon (pixel units, images in [0, 1])", ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_saliency(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, data: DatasetBundle,
                  eps: float, path: str) -> str:
    """One column per image: the image, its saliency map (Simonyan et al.) and its FGSM version at ``eps``, each
    titled with the net's prediction; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = saliency(model, x, y, data.std).cpu()
    adversarial = fgsm(model, loss_fn, x, y, eps, data.mean, data.std) if eps > 0 else x
    with torch.no_grad():
        predicted, predicted_adv = model(x).argmax(1).cpu(), model(adversarial).argmax(1).cpu()
    rows = [("image", to_pixels(x, data.mean, data.std), predicted), ("saliency", maps, None),
            (f"FGSM eps={eps:g}", to_pixels(adversarial, data.mean, data.std), predicted_adv)]
    n = len(y)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.8 * len(rows)), squeeze=False)
    for r, (label, images, predictions) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.set_xticks([]), ax.set_yticks([])
            if label == "saliency":
                ax.imshow(images[i].numpy(), cmap="hot")
            else:
                image = images[i].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"y={int(y[i])} pred={int(predictions[i])}", fontsize=8)
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
