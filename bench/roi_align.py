"""RoIAlign / RoIPool forward + backward cost: the vectorised ops (trainables/roi_ops.py) vs a per-RoI, per-bin loop.

Why: the issue asks for ops vectorised over RoIs, bins and samples; this measures what that buys over the obvious
loop (a Python loop over RoIs and bins, each bin computed with torch ops, so it is differentiable the same way).
Both sides compute the same numbers (checked before timing). Arms are interleaved call by call (vectorised align,
loop align, vectorised pool, loop pool, ...) after one warm-up call each; the table gives medians and the ratio of
medians to the loop of the same op, and the foreign load (cores other processes kept busy). No timed assertions.

    python bench/roi_align.py                      # ~20 s on a quiet 2-core machine
    python bench/roi_align.py --rois 64 --repeats 20 --markdown /tmp/roi_align.md
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import _common
import torch

from trainables.roi_ops import roi_align, roi_pool

Op = Callable[[torch.Tensor], torch.Tensor]


def loop_align(features: torch.Tensor, boxes: torch.Tensor, size: int, scale: float, ratio: int) -> torch.Tensor:
    """RoIAlign (aligned=True, fixed sampling ratio) one RoI and one bin at a time."""
    _, _, H, W = features.shape
    out = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        sx, sy = x1 * scale - 0.5, y1 * scale - 0.5
        bw, bh = (x2 - x1) * scale / size, (y2 - y1) * scale / size
        fmap = features[int(b)]
        bins = []
        for p in range(size):
            for q in range(size):
                total = fmap.new_zeros(fmap.shape[0])
                for i in range(ratio):
                    for j in range(ratio):
                        y = sy + p * bh + (i + 0.5) * bh / ratio
                        x = sx + q * bw + (j + 0.5) * bw / ratio
                        if y < -1 or y > H or x < -1 or x > W:
                            continue
                        y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
                        r0, c0 = int(y), int(x)
                        r1, c1 = min(r0 + 1, H - 1), min(c0 + 1, W - 1)
                        ly, lx = y - r0, x - c0
                        total = total + ((1 - ly) * (1 - lx) * fmap[:, r0, c0] + (1 - ly) * lx * fmap[:, r0, c1]
                                         + ly * (1 - lx) * fmap[:, r1, c0] + ly * lx * fmap[:, r1, c1])
                bins.append(total / ratio**2)
        out.append(torch.stack(bins, 1).reshape(-1, size, size))
    return torch.stack(out)


def loop_pool(features: torch.Tensor, boxes: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    """RoIPool one RoI and one bin at a time (boxes here are non-negative, so Python's round of x.5 is not hit)."""
    _, C, H, W = features.shape
    out = []
    for b, bx1, by1, bx2, by2 in boxes.tolist():
        x1, y1, x2, y2 = (int(math.floor(v * scale + 0.5)) for v in (bx1, by1, bx2, by2))
        bh, bw = max(y2 - y1 + 1, 1) / size, max(x2 - x1 + 1, 1) / size
        bins = []
        for p in range(size):
            h0, h1 = min(max(math.floor(p * bh) + y1, 0), H), min(max(math.ceil((p + 1) * bh) + y1, 0), H)
            for q in range(size):
                w0, w1 = min(max(math.floor(q * bw) + x1, 0), W), min(max(math.ceil((q + 1) * bw) + x1, 0), W)
                cell = features[int(b), :, h0:h1, w0:w1]
                bins.append(cell.amax(dim=(1, 2)) if cell.numel() else features.new_zeros(C))
        out.append(torch.stack(bins, 1).reshape(C, size, size))
    return torch.stack(out)


def step_seconds(fn: Op, x: torch.Tensor) -> float:
    """One forward + backward of ``fn`` on ``x`` (a fresh leaf each time)."""
    leaf = x.detach().requires_grad_(True)
    started = time.perf_counter()
    fn(leaf).square().sum().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rois", type=int, default=32, help="RoIs per call (default 32)")
    parser.add_argument("--channels", type=int, default=16, help="feature channels (default 16)")
    parser.add_argument("--size", type=int, default=7, help="output bins per side (default 7, Mask R-CNN's box head)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = _common.load1()
    gen = torch.Generator().manual_seed(0)
    scale, ratio, n, side = 1 / 8, 2, 2, 40                       # stride-8 map of two 320 x 320 images
    features = torch.randn(n, args.channels, side, side, generator=gen)
    xy = torch.rand(args.rois, 2, generator=gen) * 260
    wh = 16 + torch.rand(args.rois, 2, generator=gen) * 140
    batch = torch.randint(0, n, (args.rois, 1), generator=gen).float()
    boxes = torch.cat([batch, xy, xy + wh], 1)
    arms: dict[str, Op] = {
        "align": lambda f: roi_align(f, boxes, args.size, scale, ratio, aligned=True),
        "align loop": lambda f: loop_align(f, boxes, args.size, scale, ratio),
        "pool": lambda f: roi_pool(f, boxes, args.size, scale),
        "pool loop": lambda f: loop_pool(f, boxes, args.size, scale),
    }
    for name in ("align", "pool"):  # same numbers before timing anything
        torch.testing.assert_close(arms[name](features), arms[f"{name} loop"](features), rtol=1e-4, atol=1e-5)
    for fn in arms.values():
        step_seconds(fn, features)  # warm-up
    steps = {name: (lambda fn=fn: step_seconds(fn, features)) for name, fn in arms.items()}
    with _common.ForeignLoad() as foreign, _common.timed() as wall:
        times = _common.interleaved(steps, args.repeats)
    table = _common.Table(
        f"RoI ops forward + backward, features ({n}, {args.channels}, {side}, {side}), {args.rois} RoIs, "
        f"{args.size}x{args.size} bins, sampling ratio {ratio}, {args.threads} thread(s), median of {args.repeats} "
        "interleaved rounds", ["op", "median ms", "ratio to its loop"])
    for name in arms:
        base = _common.median(times[f"{name.split()[0]} loop"])
        table.add(name, 1000 * _common.median(times[name]), _common.median(times[name]) / base)
    table.notes.append(f"{wall[0]:.0f} s; foreign load {foreign.value:.2f} cores")
    table.notes.append(f"load1 before {load_before:.2f}; {_common.environment(str(args.threads))}")
    _common.emit([table], args.markdown, "## roi_align")


if __name__ == "__main__":
    main()
