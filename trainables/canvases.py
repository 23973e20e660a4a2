"""Multi-digit canvases for AIR (Eslami et al. 2016, Sec. 3.1: "multi-MNIST", 0 to 2 digits on a 50x50 canvas).

Each canvas holds n digits, n uniform in {min_digits, ..., max_digits}, each pasted at a uniformly random position
(fully inside the canvas, overlaps allowed, composed by the pixel-wise maximum so values stay in [0, 255]). The true
count and each digit's pixel box (x0, y0, x1, y1) come with the canvas; AIR never sees them in training, they only
score it (count accuracy, the boxes in the artifacts).

Canvases of a split are made from that split's digits only (MNIST-5k's train / val / test), so a test canvas holds
digits training never saw; the index of every pasted digit in its source split is kept (``sources``) so a test can
check it. A set of canvases is a function of its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data import load_dataset

# Seeds of the held-out canvases: val follows split_seed (as the loop's val split does); test is fixed, so test
# numbers of runs with different split seeds stay comparable (the digits of mnist5k's test split are fixed too).
_VAL_SEED_OFFSET, _TEST_SEED = 7_919, 104_729


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value under ==
class Canvases:
    """``x`` uint8 (N, 1, S, S); ``counts`` int64 (N,); ``boxes`` float32 (N, K, 4) pixel boxes of the digits
    (rows beyond a canvas' count are -1); ``sources`` int64 (N, K): each digit's index in its split (-1 beyond)."""

    x: torch.Tensor
    counts: torch.Tensor
    boxes: torch.Tensor
    sources: torch.Tensor

    def __len__(self) -> int:
        return len(self.counts)


def resize_digits(digits: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (M, 1, d, d) digits -> uint8 (M, 1, size, size) (area-averaged when shrinking)."""
    if digits.shape[-1] == size:
        return digits
    mode = "area" if size < digits.shape[-1] else "bilinear"
    out = F.interpolate(digits.float(), size=(size, size), mode=mode)
    return out.round().clamp(0, 255).to(torch.uint8)


def make_canvases(digits: torch.Tensor, n: int, canvas_size: int, max_digits: int, seed: int,
                  min_digits: int = 0) -> Canvases:
    """``n`` canvases of ``digits`` (uint8 (M, 1, d, d)), each with a count uniform in [min_digits, max_digits]."""
    if not 0 <= min_digits <= max_digits:
        raise ValueError(f"need 0 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    d = digits.shape[-1]
    if d > canvas_size:
        raise ValueError(f"digits of {d} pixels do not fit a {canvas_size}-pixel canvas")
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_digits, max_digits + 1, size=n)
    k = max(max_digits, 1)
    sources = np.where(np.arange(k) < counts[:, None], rng.integers(0, len(digits), size=(n, k)), -1)
    corners = rng.integers(0, canvas_size - d + 1, size=(n, k, 2))  # (x0, y0) of each digit's square
    boxes = np.concatenate([corners, corners + d], -1).astype(np.float32)
    boxes[sources < 0] = -1.0
    pixels = digits.numpy()
    x = np.zeros((n, 1, canvas_size, canvas_size), dtype=np.uint8)
    for i, j in zip(*np.nonzero(sources >= 0), strict=True):
        x0, y0 = corners[i, j]
        patch = x[i, :, y0:y0 + d, x0:x0 + d]
        np.maximum(patch, pixels[sources[i, j]], out=patch)
    return Canvases(torch.from_numpy(x), torch.from_numpy(counts.astype(np.int64)), torch.from_numpy(boxes),
                    torch.from_numpy(sources.astype(np.int64)))


@dataclass(frozen=True)
class CanvasData:
    """The digits canvases are made from, per split, and the fixed held-out canvases: ``val``, ``test`` (counts
    0..max_digits) and ``extrapolation`` (k -> canvases with exactly k > max_digits digits, from test digits)."""

    train_digits: torch.Tensor
    val_digits: torch.Tensor
    test_digits: torch.Tensor
    val: Canvases
    test: Canvases
    extrapolation: dict[int, Canvases]
    canvas_size: int
    max_digits: int

    def train_canvases(self, n: int, seed: int) -> Canvases:
        """Fresh training canvases (one set per epoch and rank: AIR sees new arrangements of the train digits)."""
        return make_canvases(self.train_digits, n, self.canvas_size, self.max_digits, seed)


def load_canvas_data(config: dict[str, Any]) -> CanvasData:
    """Digits of ``config['dataset']``'s seeded splits resized to ``digit_size``, and the held-out canvases."""
    bundle = load_dataset(config["dataset"], data_dir=config["data_dir"], val_size=config["val_size"],
                          split_seed=config["split_seed"], augment="none")
    size, canvas, top = config["digit_size"], config["canvas_size"], config["max_digits"]
    train, val, test = (resize_digits(s.x, size) for s in (bundle.train, bundle.val, bundle.test))
    val_set = make_canvases(val, config["val_canvases"], canvas, top, config["split_seed"] + _VAL_SEED_OFFSET)
    test_set = make_canvases(test, config["test_canvases"], canvas, top, _TEST_SEED)
    extra = {k: make_canvases(test, config["test_canvases"], canvas, k, _TEST_SEED + k, min_digits=k)
             for k in range(top + 1, config["eval_max_digits"] + 1)}
    return CanvasData(train, val, test, val_set, test_set, extra, canvas, top)
