"""The common loop's training epoch alone, for benchmarks: the classification task on a given model and loader."""

from __future__ import annotations

from torch import nn

from trainables.batching import BatchLoader
from trainables.classification import ClassificationTask


class TrainOnly(ClassificationTask):
    """The classification task on a given model and loader, without evaluation: the loop's training epoch alone."""

    def __init__(self, model: nn.Module, loader: BatchLoader) -> None:
        self.model, self.loader = model, loader
        super().__init__(None, lambda: model, batch_size=0)  # type: ignore[arg-type]

    def train_batches(self, ctx: object, epoch: int) -> BatchLoader:
        self.loader.set_epoch(epoch)
        return self.loader

    def evaluate(self, ctx: object) -> dict[str, float]:
        return {}
