"""Cost of one training step of ResNet-20 under each normalization, as a ratio to batch norm (issue 15).

Claim (Salimans & Kingma 2016): weight normalization costs less per step than batch normalization (their CIFAR-10
net: about 16% faster); mean-only batch norm keeps batch norm's centring but not its division.

Method: ``bench/train_step.py``'s ``Runner`` (the network built through the ``resnet`` trainable's model tool with
``norm`` set, the classification task's ``train_step``, ``zero_grad``, ``backward``, the optimizer step the config
names, one fixed MNIST-5k batch at the trainable's default batch size), one arm per value of
``trainables.normalization.NORMS``. Weight norm's data-dependent init is not run: it changes the values of g and b,
not the cost of a step. Arms are interleaved step by step after ``--warmup`` steps each; the table gives the median
over ``--repeats`` rounds and the ratio of medians to ``batch``.

    python bench/norm_step.py                        # ~1 min on a quiet 2-core machine
    python bench/norm_step.py --repeats 40 --threads 2 --markdown /tmp/norm_step.md
"""

from __future__ import annotations

import argparse

import _common
import torch
from train_step import Arm, Runner

from trainables.data import load_dataset
from trainables.normalization import NORMS

BASELINE = "batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a 1-CPU trial)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first (default 2)")
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth, 6n+2 (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = _common.load1()

    data = load_dataset("mnist5k")
    runners = {norm: Runner(Arm(norm, "resnet", {"depth": args.depth, "norm": norm}), data) for norm in NORMS}
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    with _common.ForeignLoad() as foreign, _common.timed() as wall:
        times = _common.interleaved({label: runner.step for label, runner in runners.items()}, args.repeats)
    base = _common.median(times[BASELINE])
    table = _common.Table(f"One training step (forward + backward + optimizer) of ResNet-{args.depth} by norm, "
                          f"MNIST-5k 1x28x28, {args.threads} thread(s), median of {args.repeats} interleaved rounds",
                          ["norm", "parameters", "batch", "median ms / step", f"ratio to {BASELINE}"])
    for norm, runner in runners.items():
        ms = 1000 * _common.median(times[norm])
        table.add(norm, runner.parameters, runner.batch_size, ms, ms / 1000 / base)
    table.notes.append("the paper's claim: weight / batch < 1 (about 0.86 on its CIFAR-10 net, on a GPU)")
    table.notes.append(f"{args.repeats} interleaved rounds after {args.warmup} warm-up steps each, {wall[0]:.0f} s; "
                       f"foreign load {foreign.value:.2f} cores")
    table.notes.append(f"load1 before {load_before:.2f}; {_common.environment(str(args.threads))}")
    _common.emit([table], args.markdown, "## norm_step")


if __name__ == "__main__":
    main()
