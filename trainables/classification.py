"""Image classification as a task of the common loop: one model, cross-entropy, error rates.

The ResNet family, swapout, the NAS children (and every later classifier) are this task with their own model.
``eval_modes`` scores the same weights under other inference rules every epoch (swapout: deterministic vs
stochastic), a paired comparison without training two nets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.adversarial import ADVERSARIAL_DEFAULTS, canonical_adversarial, fgsm_mixed_batch, validate_adversarial
from trainables.batching import BatchLoader
from trainables.context import Context, unwrap
from trainables.data import DatasetBundle
from trainables.loop import LOOP_PATHS, LOOP_USER_ERRORS, fit, load_data, validate_loop_config
from trainables.normalization import has_weight_norm, init_weight_norm, validate_norm
from trainables.registry import Canonical, Mode, TrainFn, Validator, register
from trainables.task import Task, Total

# What a classification trainable reports and which way is better (registered with the trainable).
CLASSIFICATION_METRICS: dict[str, str] = {
    "val_error": "min", "val_accuracy": "max", "val_loss": "min",
    "test_error": "min", "test_accuracy": "max", "test_loss": "min",
    "train_loss": "min", "train_error": "min",
    "params": "min",  # the trained model's parameter count (a cost every comparison of networks reads beside error)
}
CLASSIFICATION_PRIMARY = "val_error"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The model of a classifier: (config, dataset) -> network; also the trainable's ``model`` tool.
BuildModel = Callable[[Mapping[str, Any], DatasetBundle], nn.Module]
# name -> a context manager that puts the model into that inference mode, or None for the model's own mode
# (its metrics are the plain ones, copied, not computed twice).
EvalModes = Mapping[str, Callable[[nn.Module], AbstractContextManager[Any]] | None]
# (model, dataset, directory) -> writes files a user should see beside the run (a linear classifier's templates).
WriteArtifacts = Callable[[nn.Module, DatasetBundle, str], None]


class ClassificationTask(Task):
    """``build_model()`` trained with ``loss_fn`` on ``data``'s train split; val and test scored every epoch."""

    def __init__(self, data: DatasetBundle, build_model: Callable[[], nn.Module], batch_size: int,
                 loss_fn: LossFn = F.cross_entropy, eval_modes: EvalModes | None = None, seed: int = 0,
                 adversarial: tuple[float, float] = (0.0, 0.5), artifacts: WriteArtifacts | None = None) -> None:
        self.data, self.build_model, self.batch_size_, self.loss_fn = data, build_model, batch_size, loss_fn
        self.artifacts = artifacts
        self.adversarial_eps, self.adversarial_fraction = adversarial  # FGSM mix (trainables/adversarial.py)
        self.eval_modes, self.seed = dict(eval_modes or {}), seed
        self._train: BatchLoader | None = None
        self._eval: dict[str, BatchLoader] = {}

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": self.build_model()}

    def initialize(self, models: Mapping[str, nn.Module], ctx: Context) -> None:
        """Weight norm's data-dependent init on the first training batch (epoch 0, this rank's), when the model
        has weight-normalised layers."""
        model = models["model"]
        if has_weight_norm(model):
            x, _ = next(iter(self.train_batches(ctx, 0)))
            init_weight_norm(model, x.to(next(model.parameters()).device))

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        if self._train is None:
            self._train = BatchLoader(
                self.data.train, batch_size=self.batch_size_, mean=self.data.mean, std=self.data.std,
                augment=self.data.augment, shuffle=True, seed=self.seed, rank=ctx.rank, world_size=ctx.world_size,
                device=ctx.device,
            )
        self._train.set_epoch(epoch)
        return self._train

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, Any]:
        x, y = batch
        if self.adversarial_eps > 0:  # adversarial training: part of the batch replaced by its FGSM version
            x = fgsm_mixed_batch(unwrap(self.models["model"]), self.loss_fn, x, y, self.adversarial_eps,
                                 self.adversarial_fraction, self.data.mean, self.data.std)
        logits = self.models["model"](x)
        loss = self.loss_fn(logits, y)
        return {"loss": loss, "error": Total(float((logits.argmax(1) != y).sum()), len(y))}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        if not self._eval:
            self._eval = {
                name: BatchLoader(split, batch_size=512, mean=self.data.mean, std=self.data.std, device=ctx.device)
                for name, split in (("val", self.data.val), ("test", self.data.test)) if len(split.y) > 0
            }
        model = unwrap(self.models["model"])
        metrics: dict[str, float] = {}
        for split, loader in self._eval.items():
            loss, error = evaluate(model, loader, self.loss_fn)
            metrics.update({f"{split}_loss": loss, f"{split}_error": error, f"{split}_accuracy": 1.0 - error})
            for mode, entered in self.eval_modes.items():
                if entered is not None:
                    with entered(model):
                        loss, error = evaluate(model, loader, self.loss_fn)
                metrics.update({f"{split}_loss_{mode}": loss, f"{split}_error_{mode}": error})
        return metrics

    def write_artifacts(self, directory: str) -> None:
        if self.artifacts is not None:
            os.makedirs(directory, exist_ok=True)
            self.artifacts(unwrap(self.models["model"]), self.data, directory)

    def epoch_metrics(self) -> dict[str, Any]:
        return {"params": float(sum(p.numel() for p in unwrap(self.models["model"]).parameters()))}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """Mean loss and error rate of ``model`` in eval mode (stochastic depth scales branches by p_l here)."""
    model.eval()
    loss_sum, errors, seen = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(y)
        errors += int((logits.argmax(1) != y).sum())
        seen += len(y)
    return loss_sum / seen, errors / seen


def fit_classifier(ctx: Context, config: Mapping[str, Any], data: DatasetBundle, build_model: Callable[[], nn.Module],
                   *, loss_fn: LossFn = F.cross_entropy, eval_modes: EvalModes | None = None,
                   artifacts: WriteArtifacts | None = None) -> dict[str, Any]:
    """Train ``build_model()`` on ``data`` with the common loop; returns the last epoch's metrics."""
    adversarial = (float(config.get("adversarial_eps", 0.0)), float(config.get("adversarial_fraction", 0.5)))
    task = ClassificationTask(data, build_model, config["batch_size"], loss_fn, eval_modes, seed=int(config["seed"]),
                              adversarial=adversarial, artifacts=artifacts)
    return fit(ctx, config, task)


def register_classifier(name: str, build: BuildModel, *, defaults: Mapping[str, Any], description: str,
                        validate: Validator | tuple[Validator, ...] = (),
                        eval_modes: Callable[[Mapping[str, Any]], EvalModes | None] | None = None,
                        metrics: Mapping[str, Mode] = CLASSIFICATION_METRICS, canonical: Canonical | None = None,
                        loss: Callable[[Mapping[str, Any]], LossFn] | None = None,
                        artifacts: WriteArtifacts | None = None) -> TrainFn:
    """Register ``name`` as image classification on the common loop and return its train function.

    A classifier writes only its model, ``build(config, data)``: the loop's keys are validated before its own
    ``validate``; it reports :data:`CLASSIFICATION_METRICS` (or ``metrics``) ranked by val_error; ``build`` is also
    its ``model`` tool (Deep Compression rebuilds a checkpoint's net with it); ``eval_modes(config)`` names other
    inference rules scored on the same weights every epoch; ``loss(config)`` replaces cross-entropy (a linear SVM's
    hinge loss); ``artifacts(model, data, directory)`` writes files logged with the run (``task/``). A ``norm`` key
    in ``defaults`` opts into the normalization switch (:mod:`trainables.normalization`): it is validated here, and
    ``build`` ends with ``apply_norm(net, config["norm"])``, so the ``model`` tool rebuilds the same layers. Every
    classifier also gets the adversarial-training keys (:data:`ADVERSARIAL_DEFAULTS`) and the ``inspect`` tool (FGSM
    accuracy and saliency maps of a checkpoint, :mod:`trainables.inspection`).
    """
    validators = validate if isinstance(validate, tuple) else (validate,)
    if "norm" in defaults:
        validators = (*validators, validate_norm)

    def train(config: dict[str, Any], ctx: Context) -> None:
        data = load_data(config)
        modes = eval_modes(config) if eval_modes is not None else None
        loss_fn = loss(config) if loss is not None else F.cross_entropy
        fit_classifier(ctx, config, data, lambda: build(config, data), loss_fn=loss_fn, eval_modes=modes or None,
                       artifacts=artifacts)

    # Named after the method, in its module, so tracebacks and profiles say which trainable ran.
    train.__name__ = train.__qualname__ = f"train_{name}"
    train.__module__, train.__doc__ = build.__module__, description
    canonical_all = canonical_adversarial if canonical is None else lambda c: canonical_adversarial(canonical(c))
    return register(name, defaults={**defaults, **ADVERSARIAL_DEFAULTS},
                    validate=(validate_loop_config, validate_adversarial, *validators), description=description,
                    metrics=metrics, primary=CLASSIFICATION_PRIMARY, user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS,
                    canonical=canonical_all, tools={"model": build, "inspect": inspect_tool(build, loss)})(train)


def inspect_tool(build: BuildModel, loss: Callable[[Mapping[str, Any]], LossFn] | None) -> Callable[..., Any]:
    """A classifier's ``inspect`` tool, :func:`trainables.inspection.inspect_checkpoint` with its builder and loss
    bound; imported when called, so registering a classifier does not import matplotlib."""
    def inspect(config: Mapping[str, Any], checkpoint_dir: str, **options: Any) -> Any:
        from trainables.inspection import inspect_checkpoint

        return inspect_checkpoint(build, loss, config, checkpoint_dir, **options)
    return inspect
