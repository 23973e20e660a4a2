"""Fractional max-pooling (Graham 2014, "Fractional Max-Pooling", arXiv:1412.6071).

An N_in x N_in input is pooled to N_out x N_out with 1 < alpha = N_in / N_out < 2. Rows (and, independently,
columns) are cut by an increasing sequence of integers

    0 = a_0 < a_1 < ... < a_{N_out} = span,     a_i - a_{i-1} in {1, 2}                       (paper, Sec. 2)

and output row i pools the input rows of region P_i:

    disjoint     P_i = [a_{i-1}, a_i - 1]     (sizes 1 or 2; span = N_in: the regions tile the rows)
    overlapping  P_i = [a_{i-1}, a_i]         (sizes 2 or 3; span = N_in - 1, so the last region ends at the last
                                               row and neighbours share exactly their boundary row)

The paper writes a_{N_out} = N_in for both; with overlapping regions that would put row N_in (one past the input)
into the last region, so the sequence spans N_in - 1 there (torch's layer does the same: its last window ends at
the last row). Sequences are

    random        a random permutation of (N_out - n2) ones and n2 = span - N_out twos, cumulated
    pseudorandom  a_i = ceil(alpha' (i + u)) - ceil(alpha' u),  u ~ U(0, 1),  alpha' = span / N_out

(the paper's a_i = ceil(alpha (i + u)) shifted so that a_0 = 0; alpha' is the ratio that ends the sequence exactly at
span, within rounding of the configured alpha). N_out = round(N_in / alpha): the paper's MNIST net goes
35 -> 25, 24 -> 17, 16 -> 11, 10 -> 7, 6 -> 4, 3 -> 2 with alpha = sqrt 2.

Training draws a fresh pair of sequences (rows, columns) per image and forward pass, shared by the channels (as the
paper's code does). Evaluation uses pass ``eval_pass`` (default 0) of a fixed, seeded family of sequences shared by
all images: pass 0 is "fixed sequences at test time"; averaging the softmax over passes 0..N-1 is the paper's
test-time model averaging (done by the network, trainables/fmp_net.py).

``torch.nn.FractionalMaxPool2d`` is the pseudorandom kind with fixed k x k windows at the sequence's points
(:func:`torch_windows` reproduces its rule from its own random samples); with k = 2 a window is [a_{i-1}, a_{i-1} + 1],
which is the paper's overlapping region only where the increment is 1, so the two layers agree exactly only given
the same regions (tests/test_fmp.py checks both statements).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainables.layers import SeededDraws, block_seed

FMP_KINDS = ("random", "pseudorandom")
FMP_OVERLAPS = ("disjoint", "overlapping")


def fmp_span(n_in: int, overlapping: bool) -> int:
    """a_{N_out}: N_in for disjoint regions, N_in - 1 for overlapping ones (the last region ends at row N_in - 1)."""
    return n_in - 1 if overlapping else n_in


def fmp_output_size(n_in: int, alpha: float, overlapping: bool) -> int:
    """N_out = round(N_in / alpha), kept where increments of 1 and 2 can reach the span: span/2 <= N_out <= span."""
    span = fmp_span(n_in, overlapping)
    if span < 1:
        raise ValueError(f"fractional max-pooling needs at least {2 if overlapping else 1} rows, got {n_in}")
    return min(span, max(math.ceil(span / 2), round(n_in / alpha)))


def _check(n_out: int, span: int) -> None:
    if not 1 <= n_out <= span <= 2 * n_out:
        raise ValueError(f"no sequence of {n_out} increments of 1 and 2 sums to {span}")


def random_boundaries(batch: int, n_out: int, span: int, generator: torch.Generator | None = None) -> Tensor:
    """(batch, n_out + 1) sequences a_0 = 0 .. a_{n_out} = span: a shuffled mix of n2 = span - n_out twos and ones."""
    _check(n_out, span)
    n2 = span - n_out  # sum of increments: n_out + n2 = span
    # a random permutation per row: the ranks of i.i.d. uniforms; positions ranked below n2 get the twos
    ranks = torch.rand(batch, n_out, generator=generator).argsort(dim=1).argsort(dim=1)
    increments = 1 + (ranks < n2).long()
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), increments.cumsum(1)], dim=1)


def pseudorandom_boundaries(batch: int, n_out: int, span: int, generator: torch.Generator | None = None,
                            u: Tensor | None = None) -> Tensor:
    """(batch, n_out + 1) sequences a_i = ceil(alpha' (i + u)) - ceil(alpha' u), alpha' = span / n_out, u ~ U(0, 1)."""
    _check(n_out, span)
    if u is None:
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
    alpha = span / n_out
    i = torch.arange(n_out + 1, dtype=torch.float64)
    u = u.to(torch.float64).reshape(-1, 1)
    a = torch.ceil(alpha * (i + u)) - torch.ceil(alpha * u)  # a_i = ceil(alpha (i + u)), shifted to a_0 = 0
    a = a.long()
    a[:, -1] = span  # exact in real arithmetic (alpha n_out = span); pinned against rounding
    return a


def regions(boundaries: Tensor, overlapping: bool) -> tuple[Tensor, Tensor]:
    """Inclusive (start, end) of every region: [a_{i-1}, a_i] overlapping, [a_{i-1}, a_i - 1] disjoint."""
    start = boundaries[..., :-1]
    end = boundaries[..., 1:] if overlapping else boundaries[..., 1:] - 1
    return start, end


def torch_windows(u: Tensor, n_in: int, n_out: int, kernel: int) -> tuple[Tensor, Tensor]:
    """The (start, end) windows ``torch.nn.FractionalMaxPool2d`` pools for its random samples ``u`` (any shape).

    aten/src/ATen/native/FractionalMaxPool2d.cpp, generate_intervals: alpha = (N_in - k) / (N_out - 1),
    start_i = int((i + u) alpha) - int(u alpha) for i < N_out - 1, start_{N_out - 1} = N_in - k, computed in the
    input's dtype; the window is [start_i, start_i + k - 1].
    """
    i = torch.arange(n_out, dtype=u.dtype)
    if n_out > 1:
        alpha = torch.tensor((n_in - kernel) / (n_out - 1), dtype=u.dtype)
        uu = u.unsqueeze(-1)
        start = ((i + uu) * alpha).trunc().long() - (uu * alpha).trunc().long()
    else:
        start = torch.zeros((*u.shape, 1), dtype=torch.long)
    start[..., -1] = n_in - kernel
    return start, start + kernel - 1


def _max3(values: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The elementwise max of three tensors and which one won (uint8 0, 1, 2; the first one on ties, as torch's
    kernel). Chained ``maximum`` and byte compares: much cheaper on CPU than ``max(dim)`` or int64 ``where``."""
    first = torch.maximum(values[0], values[1])
    pick = (values[1] > values[0]).to(torch.uint8)
    return torch.maximum(first, values[2]), pick.masked_fill_(values[2] > first, 2)


def _offsets(start: Tensor, end: Tensor) -> Tensor:
    """(B, N_out, 3): candidate k of every region, start + min(k, end - start): start, start + 1 (or end), end cover
    a region of at most 3 cells (a repeated cell leaves the max as it is)."""
    if int((end - start).max()) > 2:
        raise ValueError("regions of fractional max-pooling are at most 3 cells wide")
    return start.unsqueeze(-1) + torch.minimum(torch.arange(3, device=start.device), (end - start).unsqueeze(-1))


@torch.no_grad()
def region_argmax(x: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor]) -> Tensor:
    """(B, C, N_rows, N_cols) flat index h * W + w of the maximum of x over every region P_i x Q_j.

    rows/cols are inclusive (start, end) of shape (B or 1, N_out). A max over a rectangle is the max over its
    columns of the max over its rows, so rows are reduced first (each of the 3 candidate rows of every region copied
    whole with ``index_select``), then columns (``gather`` of the smaller row-pooled tensor). Only which candidate
    won is kept (bytes); the flat index is read at the end from a small (B, N_rows, N_cols, 9) table.
    """
    b, c, h, w = x.shape
    row_cand = _offsets(*(t.to(x.device).expand(b, -1) for t in rows))  # (B, n, 3)
    col_cand = _offsets(*(t.to(x.device).expand(b, -1) for t in cols))  # (B, m, 3)
    n, m = row_cand.shape[1], col_cand.shape[1]
    base = torch.arange(b * c, device=x.device).view(b, c, 1) * h  # first row of image b, channel c
    flat = x.reshape(b * c * h, w)
    row_best, row_pick = _max3([flat.index_select(0, (base + row_cand[:, None, :, k]).reshape(-1)).view(b, c, n, w)
                                for k in range(3)])  # (B, C, n, W)
    col_ids = [col_cand[:, None, None, :, k].expand(b, c, n, m) for k in range(3)]
    _, col_pick = _max3([row_best.gather(3, q) for q in col_ids])  # (B, C, n, m)
    col_pick = col_pick.long()
    col_index = col_cand[:, None, None].expand(b, c, n, m, 3).gather(4, col_pick.unsqueeze(-1)).squeeze(-1)
    code = row_pick.gather(3, col_index).long() * 3 + col_pick  # 3 * row candidate + column candidate
    table = (row_cand[:, :, None, :, None] * w + col_cand[:, None, :, None, :]).reshape(b, 1, n, m, 9)
    return table.expand(b, c, n, m, 9).gather(4, code.unsqueeze(-1)).squeeze(-1)


def max_pool_regions(x: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor]) -> Tensor:
    """out[b, c, i, j] = max of x[b, c] over P_i x Q_j: the argmax is found without autograd, then one ``gather``
    reads the maxima, so the backward pass is a single scatter-add of the gradient to the winning inputs (as
    torch's own pooling layers do with their indices)."""
    index = region_argmax(x, rows, cols)
    b, c, n, m = index.shape
    return x.flatten(2).gather(2, index.view(b, c, n * m)).view(b, c, n, m)


class FractionalMaxPool(SeededDraws, nn.Module):
    """FMP with ratio ``alpha``: ``kind`` random | pseudorandom, ``overlapping`` regions or disjoint ones.

    Sequences come from the layer's own CPU generator (checkpointed with the weights, see ``SeededDraws``), one pair
    per image in training; in eval mode, pass ``eval_pass`` of a fixed family seeded by ``seed`` (shared by the
    images, the same at every call).
    """

    def __init__(self, alpha: float = math.sqrt(2), kind: str = "pseudorandom", overlapping: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        if not 1.0 < alpha < 2.0:
            raise ValueError(f"alpha must be in (1, 2), got {alpha!r}")
        if kind not in FMP_KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(FMP_KINDS)}")
        self.alpha, self.kind, self.overlapping, self.seed = float(alpha), kind, bool(overlapping), int(seed)
        self.rank_varying = True  # per-image sequences: each DDP rank holds other images
        self.eval_pass = 0
        self.seed_draws(seed)

    def output_size(self, n_in: int) -> int:
        return fmp_output_size(n_in, self.alpha, self.overlapping)

    def boundaries(self, batch: int, n_in: int, generator: torch.Generator) -> Tensor:
        n_out, span = self.output_size(n_in), fmp_span(n_in, self.overlapping)
        draw = random_boundaries if self.kind == "random" else pseudorandom_boundaries
        return draw(batch, n_out, span, generator)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            generator, batch = self.draw_generator(), x.shape[0]  # a fresh sequence per image
        else:  # fixed sequences at test time: pass k of a seeded family, one pair for all images
            generator, batch = torch.Generator().manual_seed(block_seed(self.seed, self.eval_pass)), 1
        rows = regions(self.boundaries(batch, x.shape[2], generator), self.overlapping)
        cols = regions(self.boundaries(batch, x.shape[3], generator), self.overlapping)
        return max_pool_regions(x, rows, cols)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, kind={self.kind}, {'overlapping' if self.overlapping else 'disjoint'}"
