"""Cost of one training step of each network issue 14 added, as a ratio to ResNet-20 (the network users know).

Why: a user choosing between ``fmp_net``, ``squeezenet``, ``inception`` and a Deep Compression run wants to know what
an epoch of each will cost before starting a sweep; a ratio to the ``resnet`` trainable's ResNet-20 on the same
machine, measured in the same run, carries over to other machines far better than milliseconds do.

Method: every network is built through the registry's model tool, ``registry.get(name).tools["model"](config,
data)`` with ``config = registry.get(name).resolve(overrides)``, at the trainable's default batch size, and trained
by the loop's own pieces: the classification task's ``train_step`` (forward, cross-entropy), then
``zero_grad(set_to_none=False)``, ``backward`` and ``step`` of the optimizer the task builds from the config
(``Task.build_optimizers``: the optimizer the trainable's config names). One fixed batch per network comes from the
loop's ``BatchLoader`` (MNIST-5k, 1x28x28, 10 classes; ``--cifar`` adds a 3x32x32 table on random uint8 images,
since no CIFAR files ship with the project), so data loading is not in the time. The Deep Compression rows are
SqueezeNet with the pipeline's own parametrisations (``prune_model``: weight = W * M; ``quantise_model``: weight =
C[I], fine-tuning the centroids) at the ``deep_compression`` trainable's default sparsity and bits, with the
optimizer of ``phase_config`` (the source's, lr scaled): the exact per-step code path of retraining and fine-tuning,
on untrained weights (the cost does not depend on what the weights are). SqueezeNet v1.0 at ImageNet size (224x224,
1000 classes, batch 8) is an extra row, dropped with a note when its warm-up step takes more than ``--max-step``.

Networks are interleaved step by step (A, B, C, ..., A, B, C, ...) after ``--warmup`` steps each; the table gives the
median over ``--repeats`` rounds and the ratio of medians to ResNet-20's.

    python bench/train_step.py                     # ~2 min on a quiet 2-core machine
    python bench/train_step.py --repeats 20 --cifar --markdown /tmp/train_step.md
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import _common
import torch
from torch import nn

from trainables import registry
from trainables.batching import BatchLoader
from trainables.classification import ClassificationTask
from trainables.compression_pipeline import phase_config
from trainables.data import DatasetBundle, Split, load_dataset
from trainables.deep_compression import prune_model, quantise_model

BASELINE = "ResNet-20 (resnet, depth 20)"


@dataclass(frozen=True)
class Arm:
    """One row: a trainable's network with config ``overrides``; ``stage`` "pruned" / "quantised" puts the Deep
    Compression parametrisations on it; ``shape`` (C, H, W, classes) replaces the table's input (ImageNet row)."""

    label: str
    trainable: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    stage: str = "plain"
    shape: tuple[int, int, int, int] | None = None


ARMS = (
    Arm(BASELINE, "resnet", {"depth": 20}),
    Arm("fmp_net", "fmp_net"),
    Arm("squeezenet (small input)", "squeezenet"),
    Arm("squeezenet pruned: retrain step (masks)", "squeezenet", stage="pruned"),
    Arm("squeezenet quantised: fine-tune step (centroids)", "squeezenet", stage="quantised"),
    Arm("inception_v4 (small input)", "inception", {"arch": "inception_v4"}),
    Arm("inception_resnet_v2 (small input)", "inception", {"arch": "inception_resnet_v2"}),
)
IMAGENET = Arm("squeezenet v1.0, ImageNet 224x224", "squeezenet", {"batch_size": 8}, shape=(3, 224, 224, 1000))


def synthetic_bundle(channels: int, size: int, classes: int, images: int) -> DatasetBundle:
    """Random uint8 images of one shape (the timing does not depend on the pixels)."""
    gen = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (images, channels, size, size), dtype=torch.uint8, generator=gen),
                  torch.randint(0, classes, (images,), generator=gen))
    empty = Split(torch.zeros(0, channels, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    return DatasetBundle(name=f"random {channels}x{size}x{size}", train=train, val=empty, test=empty,
                         num_classes=classes, input_shape=(channels, size, size), mean=(0.5,) * channels,
                         std=(0.25,) * channels, augment="none")


class Runner:
    """One arm, built: its model, optimizer, the classification task's ``train_step`` and one fixed batch."""

    def __init__(self, arm: Arm, data: DatasetBundle) -> None:
        spec = registry.get(arm.trainable)
        config = spec.resolve(dict(arm.overrides))
        torch.manual_seed(config["seed"])
        self.model: nn.Module = spec.tools["model"](config, data)
        if arm.stage != "plain":  # the pipeline's retraining / fine-tuning: source config and optimizer, lr scaled
            dc = registry.get("deep_compression").resolve({"source": arm.trainable,
                                                           "source_config": dict(arm.overrides)})
            fc = dc["sparsity"] if dc["sparsity_fc"] == -1.0 else dc["sparsity_fc"]  # as run_pipeline reads them
            sparsity = {"conv": dc["sparsity"], "fc": fc}
            prune_model(self.model, sparsity)
            if arm.stage == "quantised":
                quantise_model(self.model, {"conv": dc["bits_conv"], "fc": dc["bits_fc"]})
            config = phase_config(dc, config, epochs=1)
        # parameters the optimizer updates (a quantised layer's are its centroids)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.batch_size = int(config["batch_size"])
        self.task = ClassificationTask(data, lambda: self.model, self.batch_size, seed=int(config["seed"]))
        self.task.models = {"model": self.model}
        self.optimizer = self.task.build_optimizers({"model": self.model}, config)["optimizer"]
        loader = BatchLoader(data.train, batch_size=self.batch_size, mean=data.mean, std=data.std,
                             augment=data.augment, shuffle=True, seed=0)
        self.batch = next(iter(loader))
        self.model.train()

    def step(self) -> float:
        """Seconds of one training step, as the loop runs it (trainables/loop.py)."""
        started = time.perf_counter()
        out = self.task.train_step(self.batch, 0)
        self.optimizer.zero_grad(set_to_none=False)
        out["loss"].backward()
        self.optimizer.step()
        return time.perf_counter() - started


def measure(title: str, arms: list[tuple[Arm, DatasetBundle]], args: argparse.Namespace) -> _common.Table:
    """Build every arm, warm it up, drop those slower than ``--max-step``, then time interleaved rounds."""
    runners: dict[str, Runner] = {}
    dropped: list[str] = []
    for arm, data in arms:
        runner = Runner(arm, data)
        warm = [runner.step() for _ in range(args.warmup)]
        if arm.label != BASELINE and warm[-1] > args.max_step:
            dropped.append(f"{arm.label}: {warm[-1]:.1f} s a warm-up step > --max-step {args.max_step:g} s, not timed")
            continue
        runners[arm.label] = runner
    with _common.ForeignLoad() as foreign, _common.timed() as wall:
        times = _common.interleaved({label: runner.step for label, runner in runners.items()}, args.repeats)
    base = _common.median(times[BASELINE])
    table = _common.Table(title, ["network", "parameters", "batch", "median ms / step", "ms / image",
                                  "ratio to ResNet-20"])
    for label, runner in runners.items():
        ms = 1000 * _common.median(times[label])
        table.add(label, runner.parameters, runner.batch_size, ms, ms / runner.batch_size, ms / 1000 / base)
    plain = _common.median(times.get("squeezenet (small input)", []))
    for stage in ("pruned: retrain step (masks)", "quantised: fine-tune step (centroids)"):
        label = f"squeezenet {stage}"
        if label in times and not math.isnan(plain):
            table.notes.append(f"{label} / plain squeezenet step: {_common.median(times[label]) / plain:.2f}")
    table.notes += dropped
    table.notes.append("parameters: what the optimizer updates (the quantised net's are its shared centroids and "
                       "biases); pruned and quantised rows: deep_compression defaults on untrained weights")
    table.notes.append(f"{args.repeats} interleaved rounds after {args.warmup} warm-up steps each, {wall[0]:.0f} s; "
                       f"foreign load {foreign.value:.2f} cores")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a 1-CPU trial)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per network first (default 2)")
    parser.add_argument("--cifar", action="store_true", help="also a table at 3x32x32 (random images)")
    parser.add_argument("--no-imagenet", action="store_true", help="skip the SqueezeNet v1.0 224x224 row")
    parser.add_argument("--max-step", type=float, default=5.0,
                        help="drop a network whose warm-up step takes longer, in seconds (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # k-means on untrained weights meets duplicate values; the codebook's size does not change a step's cost
    warnings.filterwarnings("ignore", message="Number of distinct clusters")
    load_before = _common.load1()

    mnist = load_dataset("mnist5k")
    arms = [(arm, mnist) for arm in ARMS]
    if not args.no_imagenet:
        c, size, _, classes = IMAGENET.shape  # type: ignore[misc]
        arms.append((IMAGENET, synthetic_bundle(c, size, classes, images=IMAGENET.overrides["batch_size"])))
    tables = [measure(f"One training step (forward + backward + optimizer), MNIST-5k 1x28x28, {args.threads} "
                      f"thread(s), median of {args.repeats} interleaved rounds", arms, args)]
    if args.cifar:
        cifar = synthetic_bundle(3, 32, 10, images=128)
        tables.append(measure(f"One training step, 3x32x32 (random images, 10 classes), {args.threads} thread(s), "
                              f"median of {args.repeats} interleaved rounds", [(arm, cifar) for arm in ARMS], args))
    tables[-1].notes.append(f"load1 before {load_before:.2f}; {_common.environment(str(args.threads))}")
    _common.emit(tables, args.markdown, "## train_step")


if __name__ == "__main__":
    main()
