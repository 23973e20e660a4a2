"""RoIAlign (He et al. 2017, "Mask R-CNN", arXiv:1703.06870, sec. 3) and RoIPool (Girshick 2015, "Fast R-CNN").

Both turn a region of interest (a box in input-image coordinates) into a fixed (h, w) grid of features. The paper's
central ablation (Mask R-CNN table 2c / 6) is which of the two is used: ``roi_features(..., method="align"|"pool")``.

RoIPool quantises twice: the box edges are rounded to the feature grid, then the box is split into h x w bins whose
edges are floored / ceiled, and each bin is max-pooled. RoIAlign removes both roundings: for bin (p, q) it
bilinearly samples the map at s_h x s_w regularly spaced points inside the real-valued bin and averages them:

    y_{p,i} = y1' + p * b_h + (i + 1/2) * b_h / s_h,   b_h = h_roi / h,   i = 0..s_h-1    (same for x)
    out[k, c, p, q] = 1/(s_h s_w) * sum_{i,j} bilinear(F[b_k, c], y_{p,i}, x_{q,j})

Conventions are torchvision's C++ kernels (so results match ``torchvision.ops.roi_align/roi_pool``):
- y1' = y1 * spatial_scale - offset, offset = 0.5 when ``aligned`` (Detectron2's half-pixel correction: pixel
  centres sit at integer+0.5 in image coordinates) else 0; without ``aligned`` h_roi, w_roi are forced >= 1.
- s_h = sampling_ratio if > 0 else ceil(h_roi / h) (adaptive, per RoI); the average divides by max(s_h s_w, 1).
- a sample with y < -1, y > H, x < -1 or x > W contributes 0; otherwise y, x are clamped to [0, H-1], [0, W-1]
  before interpolating (so a sample just outside the map reads the border).

Implementation: bilinear sampling is separable, bilinear(F, y, x) = sum_{r,s} a_r(y) F[r, s] c_s(x), and so is the
validity test, so the sum over samples of a bin factorises into a (h x H) row-weight matrix A_k and a (w x W)
column-weight matrix C_k per RoI: out[k] = A_k F[b_k] C_k^T / (s_h s_w). Everything (RoIs, bins, samples) is
vectorised; the only Python loop is over the distinct images that the RoIs come from. Autograd differentiates
through the bilinear weights (to the features and, unlike torchvision, also to the box coordinates).
"""

from __future__ import annotations

import torch
from torch import Tensor

METHODS = ("align", "pool")


def _check(features: Tensor, boxes: Tensor, output_size: tuple[int, int] | int) -> tuple[int, int]:
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (K, 5) [batch_index, x1, y1, x2, y2], got shape {tuple(boxes.shape)}")
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if h < 1 or w < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return int(h), int(w)


def _axis_weights(start: Tensor, length: Tensor, bins: int, grid: Tensor, size: int) -> Tensor:
    """(K, bins, size) summed bilinear weights of one axis: entry [k, p, r] = sum over the valid samples i of bin p
    of the weight that sample puts on feature row r. ``start``, ``length``: (K,) real RoI start and extent in feature
    coordinates; ``grid``: (K,) samples per bin side (integer-valued)."""
    K = start.shape[0]
    n = max(int(grid.max().item()) if K else 1, 1)
    bin_size = length / bins                                                         # b_h = h_roi / h
    p = torch.arange(bins, dtype=start.dtype, device=start.device)
    i = torch.arange(n, dtype=start.dtype, device=start.device)
    g = grid.clamp(min=1)[:, None, None]
    # y_{p,i} = y1' + p b_h + (i + 1/2) b_h / s_h
    y = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    used = (i[None, None, :] < grid[:, None, None]) & (y >= -1.0) & (y <= size)      # out-of-map samples give 0
    y = y.clamp(min=0.0)                                                             # y <= 0 reads row 0
    low = y.detach().floor().long().clamp(max=size - 1)
    at_end = low >= size - 1
    y = torch.where(at_end, low.to(y.dtype), y)                                      # y >= H-1 reads row H-1
    high = torch.where(at_end, low, low + 1)
    frac = y - low.to(y.dtype)                                                       # l_y; weights (1 - l_y), l_y
    weights = torch.zeros(K, bins, size, dtype=start.dtype, device=start.device)
    weights = weights.scatter_add(2, low, (1.0 - frac) * used)
    return weights.scatter_add(2, high, frac * used)


def roi_align(features: Tensor, boxes: Tensor, output_size: tuple[int, int] | int, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign: (K, C, h, w) features of ``boxes`` (K, 5) = [batch_index, x1, y1, x2, y2] (image coordinates) from
    ``features`` (N, C, H, W). See the module docstring for the formula and the border conventions."""
    h, w = _check(features, boxes, output_size)
    N, C, H, W = features.shape
    boxes = boxes.to(features.dtype)
    offset = 0.5 if aligned else 0.0                                                 # half-pixel correction
    x1, y1, x2, y2 = (boxes[:, j] * spatial_scale - offset for j in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)                    # legacy: at least 1 cell
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(roi_h, float(sampling_ratio))
    else:
        grid_h = torch.ceil(roi_h.detach() / h).clamp(min=0)                         # adaptive ceil(h_roi / h)
        grid_w = torch.ceil(roi_w.detach() / w).clamp(min=0)
    count = (grid_h * grid_w).clamp(min=1.0)                                         # 1 / (s_h s_w)
    rows = _axis_weights(y1, roi_h, h, grid_h, H)                                    # A_k: (K, h, H)
    cols = _axis_weights(x1, roi_w, w, grid_w, W)                                    # C_k: (K, w, W)
    out = features.new_zeros(boxes.shape[0], C, h, w)
    batch = boxes[:, 0].detach().long()
    for n in batch.unique().tolist():                                                # images, not RoIs or bins
        k = (batch == n).nonzero().squeeze(1)
        # out[k] = A_k F[b_k] C_k^T / (s_h s_w)
        pooled = torch.einsum("kph,chw,kqw->kcpq", rows[k], features[n], cols[k])
        out = out.index_copy(0, k, pooled / count[k, None, None, None])
    return out


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _pool_windows(start: Tensor, length: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """Feature indices (K, bins, L) of each bin's cells along one axis and whether each index is inside the bin."""
    bin_size = length.to(torch.float64) / bins
    p = torch.arange(bins, dtype=torch.float64, device=start.device)
    lo = (torch.floor(p * bin_size[:, None]).long() + start[:, None]).clamp(0, size)       # floor(p b) + start
    hi = (torch.ceil((p + 1) * bin_size[:, None]).long() + start[:, None]).clamp(0, size)  # ceil((p+1) b) + start
    L = max(int((hi - lo).max().item()) if lo.numel() else 1, 1)
    idx = lo[..., None] + torch.arange(L, device=start.device)
    return idx.clamp(max=size - 1), idx < hi[..., None]


def roi_pool(features: Tensor, boxes: Tensor, output_size: tuple[int, int] | int,
             spatial_scale: float = 1.0) -> Tensor:
    """Fast R-CNN RoIPool: box edges rounded to the feature grid (inclusive end, size >= 1), bin p covers cells
    floor(p b) .. ceil((p+1) b) - 1 (b = roi_size / h), clipped to the map; max over each bin, 0 for an empty bin.
    Two-stage max (over each bin's rows, then its columns) on gathered windows: memory K*h*L_h*C*W for the first
    stage (L_h the longest bin). The gradient goes to the max; on exact ties to the leftmost maximal column, topmost
    row in it (torchvision: the first in row-major order; the value is the same)."""
    h, w = _check(features, boxes, output_size)
    N, C, H, W = features.shape
    K = boxes.shape[0]
    q = _round_half_away(boxes[:, 1:].detach().to(torch.float64) * spatial_scale).long()   # rounded edges
    x1, y1, x2, y2 = q.unbind(1)
    roi_w, roi_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    row_idx, row_ok = _pool_windows(y1, roi_h, h, H)                                     # (K, h, Lh)
    col_idx, col_ok = _pool_windows(x1, roi_w, w, W)                                     # (K, w, Lw)
    batch = boxes[:, 0].detach().long()
    neg = torch.tensor(float("-inf"), dtype=features.dtype, device=features.device)
    # rows of each bin: (K, h, Lh, C, W) -> max over the bin's rows -> (K, h, C, W)
    picked = features[batch[:, None, None], :, row_idx]
    by_row = torch.where(row_ok[..., None, None], picked, neg).max(dim=2).values
    # columns of each bin: gather (K, h, C, w * Lw) -> max over the bin's columns -> (K, h, C, w)
    Lw = col_idx.shape[2]
    index = col_idx.reshape(K, 1, 1, w * Lw).expand(K, h, C, w * Lw)
    cells = by_row.gather(3, index).reshape(K, h, C, w, Lw)
    pooled = torch.where(col_ok[:, None, None], cells, neg).max(dim=4).values
    empty = ~(row_ok.any(2)[:, :, None, None] & col_ok.any(2)[:, None, None, :])         # (K, h, 1, w)
    pooled = torch.where(empty, torch.zeros_like(pooled), pooled)
    return pooled.permute(0, 2, 1, 3)


def roi_features(features: Tensor, boxes: Tensor, output_size: tuple[int, int] | int, spatial_scale: float = 1.0,
                 method: str = "align", sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """The paper's ablation switch: RoIAlign (``method="align"``) or RoIPool (``method="pool"``) on the same
    arguments (``sampling_ratio`` and ``aligned`` only concern RoIAlign)."""
    if method == "align":
        return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    if method == "pool":
        return roi_pool(features, boxes, output_size, spatial_scale)
    raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
