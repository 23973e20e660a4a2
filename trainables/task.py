"""What a method writes for the common loop (:func:`trainables.loop.fit`): a task.

A task owns its models, its data and its mathematics; the loop owns everything else (the budget, devices and DDP,
seeding, checkpoints and exact resume, reports, timing). A task

- builds its named models (``build_models``) and, optionally, its named optimizers (``build_optimizers``; the default
  is one optimizer from the config over every parameter);
- gives the loop an iterable of training batches for this rank (``train_batches``): tensors, dicts, lists of
  per-image targets, whatever its ``train_step`` takes;
- does one training step (``train_step``) and returns scalars. With one optimizer and ``manual_optimization =
  False`` it returns ``"loss"`` as a tensor and the loop runs backward and the optimizer step; a task with several
  optimizers (k discriminator steps per generator step) sets ``manual_optimization = True`` and steps them itself;
- evaluates (``evaluate``): a flat dict of metrics, named ``{split}_{metric}`` (``val_error``, ``test_psnr``).

The metrics a task reports are declared where the trainable registers (``metrics=``, ``primary=``), so the control
plane knows each one's direction without guessing from its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainables.optim import build_optimizer

if TYPE_CHECKING:
    from trainables.context import Context


@dataclass(frozen=True)
class Total:
    """A training quantity summed over ``count`` samples (errors in a batch): the loop reports
    sum(total) / sum(count) over the epoch and the ranks, exactly, instead of a mean of per-batch means."""

    total: float
    count: float


class Task(ABC):
    """One method's model(s), data and step; see the module docstring. ``models`` is filled by the loop."""

    manual_optimization: bool = False
    steps_per_epoch: int | None = None  # methods budgeted in optimizer steps: exactly this many per report
    models: dict[str, nn.Module]  # set by the loop: on the device, DDP-wrapped in a group
    optimizers: dict[str, torch.optim.Optimizer]  # set by the loop (a manual_optimization task steps them)

    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """The named models, freshly initialised (the loop has seeded the global RNG with the config's seed)."""

    def build_optimizers(self, models: Mapping[str, nn.Module],
                         config: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers over ``models`` (still bare, before DDP). Default: one from the config over all."""
        params = [p for model in models.values() for p in model.parameters()]
        return {"optimizer": build_optimizer(params, config)}

    def initialize(self, models: Mapping[str, nn.Module], ctx: Context) -> None:  # noqa: B027 (optional hook)
        """Data-dependent initialisation of the freshly built ``models`` (still bare, before DDP), e.g. weight
        norm's (:func:`trainables.normalization.init_weight_norm`). The loop calls it once, only when it does not
        resume from a checkpoint; in a group DDP then broadcasts rank 0's weights. Default: nothing."""

    @abstractmethod
    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        """This rank's training batches of ``epoch``, already on ``ctx.device`` (shuffled per epoch and rank)."""

    @abstractmethod
    def train_step(self, batch: Any, step: int) -> dict[str, Any]:
        """One training step on ``batch`` (``step`` counts optimizer steps from 0 over the whole run).

        Returns scalars: a float or 0-d tensor is a per-batch mean, weighted by :meth:`batch_size` in the epoch's
        mean; a :class:`Total` is summed exactly. Each becomes ``train_{name}`` in the report. Without
        ``manual_optimization`` the dict must hold ``"loss"``, a tensor the loop backpropagates.
        """

    @abstractmethod
    def evaluate(self, ctx: Context) -> dict[str, float]:
        """Metrics of the current weights, keyed ``{split}_{metric}``; runs on every rank."""

    def batch_size(self, batch: Any) -> int:
        """Samples in ``batch`` (weights a per-batch mean): the first tensor's length, else ``len(batch)``."""
        first = batch
        while isinstance(first, (list, tuple)) and first and not isinstance(first, torch.Tensor):
            first = first[0]
        if isinstance(batch, Mapping):
            first = next(iter(batch.values()))
        return len(first) if isinstance(first, torch.Tensor) else len(batch)

    def epoch_metrics(self) -> dict[str, Any]:
        """Anything else to report at the end of an epoch (after :meth:`evaluate`), e.g. an image count."""
        return {}

    def write_artifacts(self, directory: str) -> None:  # noqa: B027 (optional hook; default: nothing to write)
        """Files a user should see beside the run (a classifier's templates, a GAN's samples), written into
        ``directory`` on the chief at every report; they travel with the checkpoint and the MLflow callback logs
        them under the run's ``task/`` artifacts."""

    def state_dict(self) -> dict[str, Any]:
        """Task state outside models and optimizers that a resume needs (an annealed temperature, a baseline)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook; default: no state)
        """Restore :meth:`state_dict`."""
