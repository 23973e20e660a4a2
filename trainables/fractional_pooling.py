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


# Fast path: the maximum of a region and where it is in one float64 "key" per input cell. float32, float16 and bfloat16
# values convert to float64 exactly with (at least) the low 29 mantissa bits zero; those bits get (h W + w) XOR
# (2^29 - 1), so a max over keys is a max over values (distinct values differ in higher bits) whose position is read
# back from the low bits. Equal values >= 0 keep the first cell in row-major order (torch's kernel); equal negative
# values the last (the low bits add to the magnitude) and +0 beats -0, which changes only which of equal inputs gets
# the gradient. Other dtypes (float64: no spare bits) take a generic path with torch's rule throughout.
_KEY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOW_BITS = 29
_LOW = (1 << _LOW_BITS) - 1
# Beyond every float32: infinities go to +-2^1000 (an infinity with mantissa bits would be a NaN), NaNs to 2^1001 so
# that they win as in torch's pooling (a NaN key would lose its position bits: the vectorised max returns a new NaN).
_KEY_INF, _KEY_NAN = 2.0 ** 1000, 2.0 ** 1001
# On the CPU, images go in chunks of about 2 MiB of keys, so that the ten or so passes over them run in cache: 1.5 to
# 2.5x faster than whole batches of 1-2 M cells (bench/fmp_layer.py shapes, 2^16 to 2^20 cells tried; 2^17-2^18 best).
_CHUNK_CELLS = 1 << 18


def _take(keys: Tensor, index: Tensor, dim: int) -> Tensor:
    """keys[b, c, index[b, i]] along rows (dim 2) or columns (dim 3); index (B, N) is shared by the channels."""
    b, c, h, w = keys.shape
    if dim == 3:
        return keys.gather(3, index[:, None, None, :].expand(b, c, h, -1))
    # rows: whole rows of the (B C H, W) matrix copied with one index_select (much cheaper than a gather)
    rows = torch.arange(b * c, device=keys.device).view(b, c, 1) * h + index[:, None, :]
    return keys.reshape(b * c * h, w).index_select(0, rows.reshape(-1)).view(b, c, -1, w)


def _pairs(start: Tensor, end: Tensor, device: torch.device) -> tuple[Tensor, Tensor, bool]:
    """(first, second, slide): the max over every region [s, e] is max(k_first, k_second) of the keys k, or of
    M_t = max(k_t, k_{t+1}) if ``slide``. Regions of 1 or 2 cells: max(k_s, k_e); of 2 or 3: max(M_s, M_{e-1})
    (M_{e-1} = M_s for 2 cells). Two selections per axis, and nothing of size (..., k, k) is materialised."""
    width = end - start
    low, high = int(width.min()), int(width.max())
    if high <= 1 and low >= 0:
        return start.to(device), end.to(device), False
    if high == 2 and low >= 1:
        return start.to(device), (end - 1).to(device), True
    raise ValueError("fractional max-pooling regions must be 1-2 or 2-3 cells wide along each axis")


def _region_max(keys: Tensor, first: Tensor, second: Tensor, slide: bool, dim: int) -> Tensor:
    """The max of the keys over every region along ``dim`` (2: rows, 3: columns), as :func:`_pairs` says."""
    if slide:
        size = keys.shape[dim] - 1
        keys = torch.maximum(keys.narrow(dim, 0, size), keys.narrow(dim, 1, size))  # M_t = max(k_t, k_{t+1})
    out = _take(keys, first, dim)
    return torch.maximum(out, _take(keys, second, dim), out=out)


def _keyed_argmax(x: Tensor, rows: tuple[Tensor, Tensor, bool], cols: tuple[Tensor, Tensor, bool]) -> Tensor:
    """The fast path of :func:`region_argmax` (rows, cols from :func:`_pairs`): rows first, then columns."""
    h, w = x.shape[2:]
    keys = x.to(torch.float64).nan_to_num_(nan=_KEY_NAN, posinf=_KEY_INF, neginf=-_KEY_INF)
    keys.view(torch.int64).bitwise_or_(torch.arange(h * w, device=x.device).view(h, w) ^ _LOW)
    keys = _region_max(keys, *rows, dim=2)  # (B, C, N_rows, W)
    keys = _region_max(keys, *cols, dim=3)  # (B, C, N_rows, N_cols)
    return keys.view(torch.int64).bitwise_and_(_LOW).bitwise_xor_(_LOW)  # back to h W + w


def _generic_argmax(x: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor]) -> Tensor:
    """Any dtype (float64, integers): the 3 x 3 candidate cells of every region (start, start + 1 or end, end per
    axis; a repeated cell changes nothing) gathered and reduced with ``argmax`` (the first maximum, row-major)."""
    b, c, h, w = x.shape
    rows, cols = ((s.to(x.device), e.to(x.device)) for s, e in (rows, cols))
    offset = torch.arange(3, device=x.device)
    row_cand, col_cand = (s.unsqueeze(-1) + torch.minimum(offset, (e - s).unsqueeze(-1)) for s, e in (rows, cols))
    n, m = row_cand.shape[1], col_cand.shape[1]
    cells = (row_cand[:, :, None, :, None] * w + col_cand[:, None, :, None, :]).reshape(b, 1, n * m, 9)
    cells = cells.expand(b, c, -1, -1)
    pick = x.flatten(2).gather(2, cells.reshape(b, c, -1)).view(b, c, n * m, 9).argmax(3, keepdim=True)
    return cells.gather(3, pick).view(b, c, n, m)


@torch.no_grad()
def region_argmax(x: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor]) -> Tensor:
    """(B, C, N_rows, N_cols) flat index h * W + w of the maximum of x over every region P_i x Q_j.

    rows/cols are inclusive (start, end) of shape (B or 1, N_out), shared by the channels; best on the CPU (their
    checks read them there; they move to x's device after).
    """
    b, c, h, w = x.shape
    rows, cols = (tuple(t.expand(b, -1) for t in axis) for axis in (rows, cols))
    row_pairs, col_pairs = _pairs(*rows, x.device), _pairs(*cols, x.device)  # also checks the region widths
    if x.dtype not in _KEY_DTYPES or x.device.type == "mps" or h * w > _LOW:  # MPS has no float64
        return _generic_argmax(x, rows, cols)
    x = x.contiguous()
    step = max(1, _CHUNK_CELLS // max(1, c * h * w)) if x.device.type == "cpu" else b
    if step >= b:
        return _keyed_argmax(x, row_pairs, col_pairs)

    def part(pairs: tuple[Tensor, Tensor, bool], i: int) -> tuple[Tensor, Tensor, bool]:
        return pairs[0][i:i + step], pairs[1][i:i + step], pairs[2]

    return torch.cat([_keyed_argmax(x[i:i + step], part(row_pairs, i), part(col_pairs, i)) for i in range(0, b, step)])


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
