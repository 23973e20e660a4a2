"""Fractional max-pooling layer cost: ours (trainables/fractional_pooling.py) vs ``torch.nn.FractionalMaxPool2d``.

Why: the issue's goal is at most 1.5x torch's time, forward + backward, on the configuration both layers cover
(pseudorandom sequences, overlapping pooling, alpha = sqrt 2; torch pools 2x2 windows at its sequence's points, ours
the paper's regions [a_{i-1}, a_i] of 2 or 3 rows, so ours reads a little more). Each call draws fresh sequences in
both layers (per image; torch also per channel). The shapes are the first FMP layers of the fmp_net trainable on
MNIST (16n filters, batch 128). Arms are interleaved call by call (ours, torch, ours, torch, ...) after one warm-up
call each; the table gives medians, the ratio of medians and the foreign load (cores other processes kept busy).
"""

from __future__ import annotations

import argparse
import math
import time

import _common
import torch
import torch.nn.functional as F

from trainables.fractional_pooling import FractionalMaxPool, fmp_output_size

SHAPES = ((128, 16, 29), (128, 32, 20), (128, 48, 13))  # (batch, channels, input size) of fmp_net's first layers


def step_seconds(fn, x: torch.Tensor) -> float:  # noqa: ANN001
    """One forward + backward of ``fn`` on ``x`` (a fresh leaf each time, so gradients do not accumulate)."""
    leaf = x.detach().requires_grad_(True)
    started = time.perf_counter()
    fn(leaf).sum().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = _common.load1()
    table = _common.Table(
        f"FMP forward + backward, pseudorandom overlapping, alpha = sqrt 2, {args.threads} thread(s), "
        f"{args.repeats} interleaved repeats (median ms)",
        ["input (B, C, H=W)", "output", "ours", "torch", "ours / torch", "foreign load"])
    ratios = []
    for batch, channels, size in SHAPES:
        x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))
        ours = FractionalMaxPool(math.sqrt(2), "pseudorandom", overlapping=True, seed=0).train()
        n_out = fmp_output_size(size, math.sqrt(2), overlapping=True)

        def theirs(t: torch.Tensor, n_out: int = n_out) -> torch.Tensor:
            return F.fractional_max_pool2d(t, 2, output_size=n_out)

        arms = {"ours": ours, "torch": theirs}
        times: dict[str, list[float]] = {name: [] for name in arms}
        for fn in arms.values():
            step_seconds(fn, x)  # warm-up
        with _common.ForeignLoad() as load:
            for _ in range(args.repeats):
                for name, fn in arms.items():
                    times[name].append(step_seconds(fn, x))
        med = {name: _common.median(values) for name, values in times.items()}
        ratios.append(med["ours"] / med["torch"])
        table.add(f"({batch}, {channels}, {size})", n_out, 1000 * med["ours"], 1000 * med["torch"], ratios[-1],
                  load.value)
    table.notes.append(f"goal: ours / torch <= 1.5; worst shape {max(ratios):.2f}")
    table.notes.append(f"load1 before {load_before:.2f}; {_common.environment(str(args.threads))}")
    _common.emit([table], args.markdown, "## fmp_layer")


if __name__ == "__main__":
    main()
