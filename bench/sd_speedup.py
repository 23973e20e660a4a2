"""Stochastic-depth training speedup: ResNet-110 epoch time without SD (p_L = 1.0) vs linear p_L = 0.5, our loop.

Why: the point of stochastic depth (Huang et al. 2016) is that a dropped block is not computed, so training gets
cheaper. With the linear rule the expected number of computed blocks is sum_l p_l = L - (1 - p_L)(L + 1) / 2, i.e.
40.25 of L = 54 blocks for ResNet-110: an expected-depth speedup of 54 / 40.25 = 1.34 (the paper says ~25% less
time, 1.33x). A minimal implementation measured 1.45x on this machine (shared/NOTES.md); the issue's goal is 1.35x.

Measured with our real loop: ``trainables.loop.fit`` on a ``LocalContext`` with the ``resnet`` trainable's config
(``registry.get("resnet").resolve(...)``: depth 110, MNIST-5k, batch 128, ``epochs=1``,
``limit_train_batches=--steps``), reading ``epoch_seconds`` from the report (training only). Arms are
interleaved (no-SD, SD, no-SD, SD, ...) after an unmeasured one-step warm-up run of each; repeat r uses seed r for
both arms, so the SD arm's drop pattern varies over repeats and the table also gives the speedup those exact draws
predict.
Validation/test splits are left out of the bundle: evaluation is not part of ``epoch_seconds`` and only costs time.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from typing import Any

import _common
import torch
import torch.nn.functional as F
from torch import nn

from trainables import registry
from trainables.batching import BatchLoader
from trainables.classification import fit_classifier
from trainables.context import LocalContext
from trainables.data import DatasetBundle, Split
from trainables.layers import block_seed
from trainables.loop import load_data
from trainables.resnet import build_resnet
from trainables.stochastic_depth import survival_probabilities


def sd_config(p_L: float, seed: int, steps: int, depth: int) -> dict[str, Any]:
    return registry.get("resnet").resolve(
        {"depth": depth, "p_L": p_L, "sd_schedule": "linear", "epochs": 1, "limit_train_batches": steps, "seed": seed}
    )


def without_eval(data: DatasetBundle) -> DatasetBundle:
    """The same training split with empty val/test splits, so that ``fit`` skips evaluation."""
    empty = Split(torch.empty((0, *data.input_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    return dataclasses.replace(data, val=empty, test=empty)


def epoch_seconds(config: dict[str, Any], data: DatasetBundle, root: str) -> float:
    """One ``fit`` of one (limited) epoch; the loop's own ``epoch_seconds``. Built as the resnet trainable does."""
    ctx = LocalContext(checkpoint_root=tempfile.mkdtemp(dir=root))
    fit_classifier(ctx, config, data, lambda: build_resnet(
        depth=config["depth"], num_classes=data.num_classes, in_channels=data.input_shape[0], p_L=config["p_L"],
        sd_schedule=config["sd_schedule"], dropout=config["dropout"], dropout_where=config["dropout_where"],
        seed=config["seed"],
    ))
    return float(ctx.results[-1]["epoch_seconds"])


def computed_fraction(depth: int, p_L: float, seed: int, steps: int) -> float:
    """Fraction of residual blocks the SD arm actually computed in its ``steps`` steps (replays each block's draws)."""
    blocks = 3 * ((depth - 2) // 6)
    probs = survival_probabilities(blocks, p_L, "linear")
    computed = 0
    for ell, p in enumerate(probs):
        generator = torch.Generator().manual_seed(block_seed(seed, ell))
        computed += sum(torch.rand((), generator=generator).item() < p for _ in range(steps))
    return computed / (blocks * steps)


def breakdown(data: DatasetBundle, depth: int, p_L: float, threads: int, steps: int) -> _common.Table:
    """Forward / backward / optimizer-step time per step, the models interleaved step by step in this process.

    Two models: no SD and SD as built by ``build_resnet`` (whose dropped blocks return the shortcut as is: no no-op
    ReLU). Interleaving per step makes the comparison robust to the shared machine.
    The first step of each model is warm-up and left out. The loop's own per-step work is reproduced: zero_grad
    keeping zeros, backward, SGD step, the two ``float()`` metrics.
    """
    torch.set_num_threads(threads)
    loader = BatchLoader(data.train, batch_size=128, mean=data.mean, std=data.std, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(steps + 1), loader, strict=False)]

    def make(p: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_resnet(depth=depth, num_classes=data.num_classes, in_channels=data.input_shape[0], p_L=p)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        return model, optimizer

    models = {"no SD": make(1.0), "SD (ours)": make(p_L)}
    phases = ("forward + loss", "backward", "optimizer step", "step total")
    seconds: dict[str, dict[str, list[float]]] = {name: {phase: [] for phase in phases} for name in models}
    for step, (x, y) in enumerate(batches):
        for name, (model, optimizer) in models.items():
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            float(loss.detach())
            float((logits.argmax(1) != y).sum())
            t3 = time.perf_counter()
            if step > 0:
                for phase, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                    seconds[name][phase].append(value)
    table = _common.Table(
        f"Per-step breakdown, ResNet-{depth}, {threads} thread(s), models interleaved step by step, median of "
        f"{steps} steps (seed 0)", ["phase", *[f"{name} (s)" for name in models], "no SD / SD (ours)"])
    names = list(models)
    for phase in phases:
        med = [_common.median(seconds[name][phase]) for name in names]
        table.add(phase, *med, med[0] / med[1])
    return table


def block_costs(data: DatasetBundle, depth: int, threads: int, repeats: int = 5) -> list[float]:
    """Forward + backward seconds of every residual block (timed per stage: its first block and a regular one).

    Why: the expected-depth argument assumes every block costs the same. Convolution FLOPs are equal across the
    three stages (H*W*C^2 stays constant), but the measured time is not, and the linear rule drops the late blocks
    most often, so the cost-weighted prediction sum c_l / sum p_l c_l is the fair yardstick for the measurement.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_resnet(depth=depth, num_classes=data.num_classes, in_channels=data.input_shape[0], p_L=1.0)
    model.train()
    loader = BatchLoader(data.train, batch_size=128, mean=data.mean, std=data.std)
    x, _ = next(iter(loader))
    costs: list[float] = []
    with torch.no_grad():
        h = model.stem(x)
    for stage in model.stages:
        stage_input = h
        with torch.no_grad():
            second_input = stage[0](stage_input)
            h = stage(stage_input)
        timed_cost = {}
        for index, block_input in ((0, stage_input), (1, second_input)):
            values = []
            for _ in range(repeats + 1):
                inp = block_input.detach().clone().requires_grad_(True)
                started = time.perf_counter()
                stage[index](inp).sum().backward()
                values.append(time.perf_counter() - started)
            timed_cost[index] = _common.median(values[1:])
        costs += [timed_cost[0]] + [timed_cost[1]] * (len(stage) - 1)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=3)
    parser.add_argument("--steps", type=int, default=8, help="training steps of batch 128 per 'epoch' (default 8)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="torch thread counts, interleaved within each repeat (default 2; e.g. 2 1)")
    parser.add_argument("--depth", type=int, default=110, help="ResNet depth (default 110)")
    parser.add_argument("--p-L", type=float, default=0.5, dest="p_L", help="survival prob. of the last block (0.5)")
    parser.add_argument("--quiet-below", type=float, default=0.1,
                        help="a repeat counts as quiet when both arms saw less foreign load than this (cores)")
    parser.add_argument("--breakdown", action="store_true",
                        help="add a per-step forward/backward/step table, models interleaved step by step")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured one-step runs of each arm first (default 1)")
    args = parser.parse_args()

    data = without_eval(load_data(sd_config(1.0, 0, args.steps, args.depth)))
    root = tempfile.mkdtemp(prefix="bench_sd_speedup_")
    arms = {"no SD (p_L=1.0)": 1.0, f"SD linear p_L={args.p_L:g}": args.p_L}
    keys = [(threads, arm) for threads in args.threads for arm in arms]
    times: dict[tuple[int, str], list[float]] = {key: [] for key in keys}
    foreign: dict[tuple[int, str], list[float]] = {key: [] for key in keys}
    load_before = _common.load1()
    try:
        for _ in range(args.warmup):
            for threads, arm in keys:
                torch.set_num_threads(threads)
                epoch_seconds(sd_config(arms[arm], 0, 1, args.depth), data, root)  # one step is enough to warm up
        for repeat in range(args.repeats):
            for threads, arm in keys:
                torch.set_num_threads(threads)
                with _common.ForeignLoad() as load:
                    seconds = epoch_seconds(sd_config(arms[arm], repeat, args.steps, args.depth), data, root)
                times[threads, arm].append(seconds)
                foreign[threads, arm].append(load.value)
                print(f"repeat {repeat + 1}/{args.repeats} {threads} thread(s) {arm:>22}: {seconds:6.2f} s = "
                      f"{seconds / args.steps:.3f} s/step (foreign load {load.value:.2f} cores)")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    blocks = 3 * ((args.depth - 2) // 6)
    expected = blocks / sum(survival_probabilities(blocks, args.p_L, "linear"))
    realized = [1.0 / computed_fraction(args.depth, args.p_L, r, args.steps) for r in range(args.repeats)]

    table = _common.Table(
        f"Stochastic-depth epoch time, ResNet-{args.depth}, MNIST-5k, {args.steps} steps of 128, "
        f"{args.repeats} interleaved repeats",
        ["threads", "arm", "median s/epoch", "min", "max", "median s/step", "foreign load"],
    )
    ratios = _common.Table("Speedup no-SD / SD (goal >= 1.35)",
                           ["threads", "ratio of medians", "ratio of minima", "median of per-repeat ratios",
                            f"quiet repeats (foreign < {args.quiet_below:g})", "their median ratio"])
    for threads in args.threads:
        for arm in arms:
            values = times[threads, arm]
            table.add(threads, arm, _common.median(values), min(values), max(values),
                      _common.median(values) / args.steps, _common.median(foreign[threads, arm]))
        no_sd, sd = (times[threads, arm] for arm in arms)
        pairwise = [a / b for a, b in zip(no_sd, sd, strict=True)]
        quiet = [ratio for ratio, *loads in zip(pairwise, *(foreign[threads, arm] for arm in arms), strict=True)
                 if max(loads) < args.quiet_below]
        ratios.add(threads, _common.median(no_sd) / _common.median(sd), min(no_sd) / min(sd),
                   _common.median(pairwise), len(quiet), _common.median(quiet))
    ratios.notes.append(f"Predictions: expected depth L / sum p_l = {expected:.3f}; from the blocks these seeds "
                        f"actually computed (median over repeats) {_common.median(realized):.3f}. They count residual "
                        "blocks only: the stem, the head, the shortcuts and the optimizer step (which updates all "
                        "weights in both arms) are not sped up, so a measured ratio a bit below them is expected.")
    ratios.notes.append("foreign load = cores other people's processes kept busy during a run (0 = quiet). With 2 "
                        "torch threads on 2 cores, any foreign load makes OpenMP threads wait for a descheduled "
                        "sibling at every op: step times then swing by several x, and ratios mean little.")
    ratios.notes.append(f"load1 before {load_before:.2f}; "
                        f"{_common.environment(' and '.join(map(str, args.threads)))}")
    tables = [table, ratios]
    if args.breakdown:
        tables += [breakdown(data, args.depth, args.p_L, threads, args.steps) for threads in args.threads]
        probs = survival_probabilities(blocks, args.p_L, "linear")
        costs_table = _common.Table(
            "Residual block cost by stage (forward + backward of one block, batch 128) and the cost-weighted "
            "prediction", ["threads", "stage 1 block (ms)", "stage 2 block (ms)", "stage 3 block (ms)",
                           "L / sum p_l", "sum c_l / sum p_l c_l"])
        for threads in args.threads:
            costs = block_costs(data, args.depth, threads)
            n = blocks // 3
            costs_table.add(threads, *(1000 * costs[i * n + 1] for i in range(3)), expected,
                            sum(costs) / sum(p * c for p, c in zip(probs, costs, strict=True)))
        costs_table.notes.append("Stage k's first block (stride 2 from stage 2 on) is timed apart and used for that "
                                 "block. Both predictions count residual blocks only (not stem, head, optimizer).")
        tables.append(costs_table)
    _common.emit(tables, args.markdown, "## sd_speedup")


if __name__ == "__main__":
    main()
