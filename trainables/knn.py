"""k-nearest-neighbour classifier (CS231n, "Image classification: data-driven approach, k-Nearest Neighbor").

Training is memorising the training set; a test image x takes the majority label of its k nearest training images
under

    L1:  d_1(x, x') = sum_p |x_p - x'_p|               L2:  d_2(x, x') = sqrt(sum_p (x_p - x'_p)^2)

over the pixels p (normalised with the training set's per-channel mean and std, as every classifier here sees them).
Distances are one ``torch.cdist`` per chunk of test rows (no Python loop over pairs; a chunk bounds memory to
``chunk x N_train`` floats).

Deterministic ties: neighbours are ranked by distance with a stable sort, so equally distant training images rank
by their index in the training split; among classes with the same number of votes the prediction is the class of
the nearest neighbour that belongs to one of them (for k = 2 with two different labels: the nearest one's label).

On the common loop kNN is a task with no models, no optimizers and no training batches: each report round
evaluates val and test error/accuracy and records like any trial. The accuracy-vs-k curve is a sweep over the
``k`` key (``search_spaces/knn_k.yaml``): every point is its own trial with the declared metrics, so the sweep's
table, compare and ``repro/summarize.py --by k distance`` read it like any other curve, and k is chosen on val.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from trainables.batching import BatchLoader
from trainables.context import Context
from trainables.data import DatasetBundle, Split
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit, load_data, validate_loop_config
from trainables.optim import OPTIM_DEFAULTS
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.task import Task

DISTANCES = ("l1", "l2")
KNN_METRICS: dict[str, str] = {"val_error": "min", "val_accuracy": "max", "test_error": "min",
                               "test_accuracy": "max"}

KNN_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "epochs": 1,  # nothing is trained: one report round is the whole run
    "k": 1,
    "distance": "l2",
    "chunk_size": 256,  # test rows per cdist call: memory is chunk_size x N_train floats
}


def pairwise_distances(queries: torch.Tensor, references: torch.Tensor, distance: str) -> torch.Tensor:
    """(Q, N) distances between flattened rows: L1 or L2 (see the module docstring)."""
    p = {"l1": 1.0, "l2": 2.0}[distance]
    # cdist's matrix-product route for L2 (||a||^2 + ||b||^2 - 2 a.b) is fast but can reorder near-ties; the direct
    # route is exact and, at MNIST-5k's sizes, still a second per split.
    return torch.cdist(queries.flatten(1), references.flatten(1), p=p, compute_mode="donot_use_mm_for_euclid_dist")


def vote(neighbour_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Majority label of each row of (Q, k) labels ordered nearest first; ties -> the nearest tied class."""
    counts = torch.zeros(len(neighbour_labels), num_classes, dtype=torch.long, device=neighbour_labels.device)
    counts.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
    tied = counts == counts.max(1, keepdim=True).values  # (Q, C): the classes with the most votes
    in_tied = tied.gather(1, neighbour_labels)  # (Q, k): does neighbour j vote for a most-voted class?
    first = in_tied.int().argmax(1, keepdim=True)  # argmax returns the first maximum: the nearest such neighbour
    return neighbour_labels.gather(1, first).squeeze(1)


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, queries: torch.Tensor, k: int, distance: str,
                num_classes: int, chunk_size: int = 256) -> torch.Tensor:
    """Predicted labels of ``queries`` by their ``k`` nearest rows of ``train_x`` (labels ``train_y``)."""
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k={k} must be in [1, {len(train_x)}] (the training images)")
    out = []
    for start in range(0, len(queries), chunk_size):
        d = pairwise_distances(queries[start:start + chunk_size], train_x, distance)
        order = torch.sort(d, dim=1, stable=True).indices[:, :k]  # stable: equal distances keep index order
        out.append(vote(train_y[order], num_classes))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def normalised(split: Split, data: DatasetBundle, device: torch.device) -> torch.Tensor:
    """All of ``split``'s images as float rows, normalised like every classifier's batches."""
    loader = BatchLoader(split, batch_size=max(1, len(split.y)), mean=data.mean, std=data.std, device=device)
    return torch.cat([x for x, _ in loader]).flatten(1)


class KnnTask(Task):
    """No models, no optimizers, no training batches; ``evaluate`` scores val and test by kNN."""

    def __init__(self, data: DatasetBundle, k: int, distance: str, chunk_size: int) -> None:
        self.data, self.k, self.distance, self.chunk_size = data, k, distance, chunk_size

    def build_models(self) -> dict[str, nn.Module]:
        return {}  # the "model" is the training split itself, reloaded from the same seeded split on a resume

    def build_optimizers(self, models: Mapping[str, nn.Module], config: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        return ()

    def train_step(self, batch: Any, step: int) -> dict[str, Any]:
        raise AssertionError("kNN has no training steps")

    def evaluate(self, ctx: Context) -> dict[str, float]:
        train_x = normalised(self.data.train, self.data, ctx.device)
        train_y = self.data.train.y.to(ctx.device)
        metrics: dict[str, float] = {}
        for name, split in (("val", self.data.val), ("test", self.data.test)):
            if len(split.y) == 0:
                continue
            predicted = knn_predict(train_x, train_y, normalised(split, self.data, ctx.device), self.k,
                                    self.distance, self.data.num_classes, self.chunk_size)
            error = int((predicted.cpu() != split.y).sum()) / len(split.y)
            metrics.update({f"{name}_error": error, f"{name}_accuracy": 1.0 - error})
        return metrics


def validate_knn(config: dict[str, Any]) -> None:
    check_range(config, "k", 1)
    check_choice(config, "distance", DISTANCES)
    check_range(config, "chunk_size", 1)


def canonical_knn(config: dict[str, Any]) -> dict[str, Any]:
    """kNN never builds an optimizer: the optimizer keys cannot change the run (a sweep over them runs once)."""
    config.update({key: value for key, value in OPTIM_DEFAULTS.items()})
    return config


@register("knn", defaults=KNN_DEFAULTS, validate=(validate_loop_config, validate_knn), metrics=KNN_METRICS,
          primary="val_error", user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS, canonical=canonical_knn)
def train_knn(config: dict[str, Any], ctx: Context) -> None:
    """k-nearest neighbours (L1 / L2 distance, majority vote of k) on the common loop; no training steps."""
    data = load_data(config)
    if config["k"] > len(data.train.y):
        raise ConfigError(f"k={config['k']} exceeds the {len(data.train.y)} training images")
    fit(ctx, config, KnnTask(data, config["k"], config["distance"], config["chunk_size"]))
