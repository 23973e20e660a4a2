"""Box mathematics for Faster / Mask R-CNN (Ren et al. 2015, arXiv:1506.01497; He et al. 2017, arXiv:1703.06870)
and DenseCap (Johnson et al. 2016, arXiv:1511.07571). A library: no model, no Task.

Convention (one, everywhere): boxes are (..., 4) float (x1, y1, x2, y2) with x2, y2 *exclusive* in pixels, as in
trainables/scenes.py: ``mask[y1:y2, x1:x2]`` holds the object, width = x2 - x1, height = y2 - y1, area = w * h
(no "+1"). This is the same as continuous coordinates where pixel i covers [i, i+1), and matches COCO's xywh.

    IoU(a, b)   = |a n b| / (|a| + |b| - |a n b|)
    anchors     = for each cell (i, j), size s, ratio r = h/w: centre ((j + 1/2) stride, (i + 1/2) stride),
                  w = s / sqrt(r), h = s * sqrt(r)                                   Faster R-CNN sec. 3.1.1
    deltas      = tx = wx (x - xa) / wa, ty = wy (y - ya) / ha,
                  tw = ww log(w / wa), th = wh log(h / ha)                           Faster R-CNN eq. 2
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# decode: exp(dw) is clamped so a wild regression cannot overflow (torchvision's log(1000/16))
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...): (x2 - x1) * (y2 - y1); degenerate boxes (x2 < x1) have area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (N, M) of boxes a (N, 4) and b (M, 4); 0 where the union is empty."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # intersection's top-left: elementwise max of corners
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # bottom-right: elementwise min
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # |a n b|, 0 for disjoint boxes
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter  # |a| + |b| - |a n b|
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def make_anchors(feat_h: int, feat_w: int, stride: float, sizes: tuple[float, ...],
                 ratios: tuple[float, ...] = (0.5, 1.0, 2.0), dtype: torch.dtype = torch.float32) -> Tensor:
    """Anchors (feat_h * feat_w * len(sizes) * len(ratios), 4) xyxy in image pixels.
    Order: cells row-major (i, j), then sizes, then ratios (ratio = h / w); each anchor's area is size^2."""
    s = torch.as_tensor(sizes, dtype=dtype)[:, None]
    r = torch.as_tensor(ratios, dtype=dtype)[None, :]
    w = (s / r.sqrt()).reshape(-1)  # w = s / sqrt(r), h = s sqrt(r): area s^2, aspect h/w = r
    h = (s * r.sqrt()).reshape(-1)
    base = torch.stack([-w / 2, -h / 2, w / 2, h / 2], dim=1)  # (A, 4) centred on the origin
    cy = (torch.arange(feat_h, dtype=dtype) + 0.5) * stride  # cell centres: (i + 1/2) stride
    cx = (torch.arange(feat_w, dtype=dtype) + 0.5) * stride
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (H W, 1, 4)
    return (centres + base[None]).reshape(-1, 4)


def _cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
                 ) -> Tensor:
    """Regression targets (..., 4) = (tx, ty, tw, th) of ``boxes`` relative to ``anchors`` (same shape).
    Weights (wx, wy, ww, wh) scale the targets (Fast R-CNN heads use (10, 10, 5, 5))."""
    wx, wy, ww, wh = weights
    x, y, w, h = _cxcywh(boxes)
    xa, ya, wa, ha = _cxcywh(anchors)
    return torch.stack([wx * (x - xa) / wa,  # tx = (x - xa) / wa          -- Faster R-CNN eq. 2
                        wy * (y - ya) / ha,  # ty = (y - ya) / ha
                        ww * torch.log(w / wa),  # tw = log(w / wa)
                        wh * torch.log(h / ha)], dim=-1)  # th = log(h / ha)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = BBOX_XFORM_CLIP) -> Tensor:
    """Inverse of :func:`encode_boxes`: boxes (..., 4) xyxy; dw, dh are clamped to ``clip`` before exp."""
    wx, wy, ww, wh = weights
    xa, ya, wa, ha = _cxcywh(anchors)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clip)
    dh = (deltas[..., 3] / wh).clamp(max=clip)
    x, y = xa + dx * wa, ya + dy * ha  # x = xa + tx wa
    w, h = wa * torch.exp(dw), ha * torch.exp(dh)  # w = wa exp(tw)
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip xyxy boxes to the image [0, width] x [0, height] (x2/y2 exclusive, so width itself is allowed)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def match_anchors(anchors: Tensor, gt_boxes: Tensor, pos_thresh: float = 0.7, neg_thresh: float = 0.3,
                  allow_low_quality: bool = True) -> tuple[Tensor, Tensor]:
    """Faster R-CNN sec. 3.1.2 labelling. Returns (labels (A,) int64, matched (A,) int64):
    labels 1 positive (IoU >= pos_thresh with some gt), 0 negative (max IoU < neg_thresh), -1 ignored (between);
    matched = index of the anchor's highest-IoU gt (0 when there is no gt; only meaningful where labels == 1).
    With ``allow_low_quality``, for each gt the anchor(s) of highest IoU (ties all kept, IoU > 0) are positive
    and matched to that gt, even under pos_thresh -- "the anchor/anchors with the highest IoU with a gt box"."""
    num = anchors.shape[0]
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(num, dtype=torch.long, device=anchors.device)
        return zeros, zeros.clone()
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    best_iou, matched = iou.max(dim=0)  # each anchor's best gt
    labels = torch.full((num,), -1, dtype=torch.long, device=anchors.device)
    labels[best_iou < neg_thresh] = 0
    labels[best_iou >= pos_thresh] = 1
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (G, 1)
        is_best = (iou == best_per_gt) & (best_per_gt > 0)  # (G, A): gt g's best anchor(s)
        g_idx, a_idx = is_best.nonzero(as_tuple=True)
        labels[a_idx] = 1
        matched[a_idx] = g_idx  # an anchor best for two gts keeps the later one; rare, as in Detectron
    return labels, matched


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float = 0.5,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Indices (pos, neg) of a minibatch of anchors: up to batch_size * positive_fraction positives (labels == 1),
    the rest filled with negatives (labels == 0), both chosen uniformly without replacement (Faster R-CNN 3.1.3)."""
    pos = (labels == 1).nonzero(as_tuple=True)[0]
    neg = (labels == 0).nonzero(as_tuple=True)[0]
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)  # pad with negatives when positives are few
    # randperm draws on the generator's device (CPU by default); the indices then follow labels to theirs
    pos = pos[torch.randperm(pos.numel(), generator=generator)[:num_pos].to(labels.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator)[:num_neg].to(labels.device)]
    return pos, neg


def nms(boxes: Tensor, scores: Tensor, iou_thresh: float) -> Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, by decreasing score. A box is dropped when its IoU
    with an already kept, higher-scoring box is > iou_thresh (torchvision's rule). IoU is computed once, vectorised."""
    order = torch.argsort(scores, descending=True, stable=True)
    # the greedy pass is sequential: run it over a host boolean matrix (one transfer, no per-box device sync)
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_thresh).cpu().numpy()
    suppressed = np.zeros(order.numel(), dtype=bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]  # everything this kept box overlaps too much (itself included: IoU 1)
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float) -> Tensor:
    """NMS within each label separately: boxes of different labels are shifted apart so they never overlap."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)  # disjoint per-label copies
    return nms(boxes + offset, scores, iou_thresh)
