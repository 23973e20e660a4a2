"""Cost of a training step of each issue-17 method (Mask R-CNN, DenseCap, Nerfies), as a ratio to ResNet-20.

Why: these methods' steps are not one forward pass of one network (a detector samples anchors and RoIs, runs three
heads and matches masks; DenseCap adds an LSTM over every sampled region; Nerfies renders batches of rays through a
deformation field and a coarse and a fine NeRF), so a user cannot guess their cost from a parameter count. A ratio to
the ``resnet`` trainable's ResNet-20 step, measured in the same run, carries over to other machines far better than
milliseconds do, and the switch each paper ablates (RoIAlign / RoIPool, bilinear / RoIPool regions, no warp / SE(3)
warp) gets its own row, so the ablation's price is visible next to its effect in docs/RESULTS.md.

Method: each arm runs its registered trainable exactly as a trial does, ``registry.get(name).train(config,
LocalContext())`` with ``config = spec.resolve(overrides)``, for two report rounds of a few steps
(``limit_train_batches`` or the method's ``steps_per_epoch``) on tiny evaluation sets. The loop times its own
training epoch (``epoch_seconds``: batches, forward, loss, backward, optimizer; no evaluation, checkpoint or data
generation) and reports its optimizer-step counter, so a step's cost is the second round's ``epoch_seconds`` divided
by the steps it took; the first round is warm-up. Arms are interleaved run by run (A, B, C, ..., A, B, C, ...) and
the table gives the median over ``--repeats`` rounds and the ratio of medians to ResNet-20's.

    python bench/method_step.py                  # ~5 min on a quiet 2-core machine
    python bench/method_step.py --repeats 5 --markdown /tmp/method_step.md
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import _common
import torch

from trainables import registry
from trainables.context import LocalContext

BASELINE = "ResNet-20 (resnet, depth 20)"


@dataclass(frozen=True)
class Arm:
    """One row: a trainable with config ``overrides`` (the ablated switch and a small evaluation set)."""

    label: str
    trainable: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


ARMS = (
    Arm(BASELINE, "resnet", {"depth": 20}),
    Arm("mask_rcnn, RoIAlign", "mask_rcnn", {"roi_op": "align", "val_scenes": 4, "test_scenes": 4,
                                             "train_scenes": 64}),
    Arm("mask_rcnn, RoIPool", "mask_rcnn", {"roi_op": "pool", "val_scenes": 4, "test_scenes": 4,
                                            "train_scenes": 64}),
    Arm("densecap, bilinear regions", "densecap", {"region_features": "bilinear", "val_images": 4,
                                                   "test_images": 4, "train_images": 128}),
    Arm("densecap, RoIPool regions", "densecap", {"region_features": "roipool", "val_images": 4,
                                                  "test_images": 4, "train_images": 128}),
    Arm("nerfies, plain NeRF (no warp)", "nerfies", {"warp": "none"}),
    Arm("nerfies, SE(3) warp", "nerfies", {"warp": "se3"}),
)


def seconds_per_step(arm: Arm, steps: int) -> tuple[float, int]:
    """Run ``arm`` for two report rounds; (seconds per optimizer step of the second round, batch size)."""
    spec = registry.get(arm.trainable)
    overrides = {key: value for key, value in arm.overrides.items() if key in spec.defaults}
    budget = {"epochs": 2, "limit_train_batches": steps}
    if "steps_per_epoch" in spec.defaults:  # a method budgeted in optimizer steps ignores limit_train_batches
        budget["steps_per_epoch"] = steps
    config = spec.resolve({**overrides, **budget})
    ctx = LocalContext()
    spec.train(config, ctx)
    first, second = ctx.results[-2], ctx.results[-1]
    taken = int(second["step"]) - int(first["step"])
    return float(second["epoch_seconds"]) / max(taken, 1), int(config.get("batch_size", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a 1-CPU trial)")
    parser.add_argument("--steps", type=int, default=6,
                        help="training batches per report round where the method counts batches (default 6)")
    parser.add_argument("--only", nargs="+", metavar="TRAINABLE", help="only these trainables (and the baseline)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_before = _common.load1()
    arms = [arm for arm in ARMS if arm.label == BASELINE or not args.only or arm.trainable in args.only]

    times: dict[str, list[float]] = {arm.label: [] for arm in arms}
    batch: dict[str, int] = {}
    with _common.ForeignLoad() as foreign, _common.timed() as wall:
        for _ in range(args.repeats):
            for arm in arms:
                seconds, batch[arm.label] = seconds_per_step(arm, args.steps)
                times[arm.label].append(seconds)
    base = _common.median(times[BASELINE])
    table = _common.Table(f"One training step of each method through its trainable (the loop's own timer), "
                          f"{args.threads} thread(s), median of {args.repeats} interleaved runs",
                          ["method", "batch", "median ms / step", "ratio to ResNet-20"])
    for arm in arms:
        step = _common.median(times[arm.label])
        table.add(arm.label, batch[arm.label], 1000 * step, step / base)
    table.notes.append("batch: the trainable's default batch_size (scenes per step for the detectors; Nerfies: "
                       "rays per step are its own key); ResNet-20 on MNIST-5k 1x28x28")
    table.notes.append(f"{args.repeats} interleaved runs of 2 rounds x {args.steps} steps (the first round is "
                       f"warm-up), {wall[0]:.0f} s; foreign load {foreign.value:.2f} cores; load1 before "
                       f"{load_before:.2f}; {_common.environment(str(args.threads))}")
    _common.emit([table], args.markdown, "## method_step")


if __name__ == "__main__":
    main()
