"""Region proposal network (Ren et al. 2015, "Faster R-CNN", arXiv:1506.01497, sec. 3.1) and the second stage's
RoI sampling: the block that Mask R-CNN (its first stage, over FPN levels) and DenseCap (its localization layer's
proposals, on one level) share. A library: no Task, no registration.

At every cell of every feature level a 3x3 conv and two 1x1 convs score A anchors (objectness logit o_a) and
regress them (deltas t_a, :func:`trainables.boxes.encode_boxes`). Training labels come from IoU with the ground
truth (:func:`trainables.boxes.match_anchors`: positive >= ``fg_iou`` or an object's best anchor, negative
< ``bg_iou``), and a minibatch of ``batch_size_per_image`` anchors per image, at most ``positive_fraction`` of
them positive, is scored (:func:`trainables.boxes.sample_balanced`):

    L_rpn = 1/N_s sum_{a in S} BCE(o_a, p*_a)  +  1/N_s sum_{a in S, p*_a = 1} smoothL1_beta(t_a - t*_a)
                                                                     Faster R-CNN eq. 1, with lambda N_reg = N_s
    smoothL1_beta(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta, beta = 1/9       (Detectron's RPN)

Proposals: per image and level the ``pre_nms_top_n`` highest logits, decoded, clipped to the image, boxes thinner
than ``min_size`` dropped, NMS at ``nms_thresh`` within each level, then the ``post_nms_top_n`` best over levels.
Proposals carry no gradient (the approximate joint training of Faster R-CNN; Mask R-CNN does the same).

The second stage (:func:`sample_rois`) labels proposals, plus the ground-truth boxes themselves, by IoU with the
ground truth (foreground >= ``fg_iou``, background < ``bg_iou``, Fast R-CNN sec. 2.3) and samples
``batch_size_per_image`` of them, at most ``positive_fraction`` foreground.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.boxes import (
    batched_nms,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    make_anchors,
    match_anchors,
    sample_balanced,
)

RPN_SMOOTH_L1_BETA = 1.0 / 9


class RpnOutput(NamedTuple):
    proposals: list[Tensor]  # per image (P_i, 4) xyxy image pixels, detached
    scores: list[Tensor]  # (P_i,) objectness probabilities sigma(o_a)
    losses: dict[str, Tensor]  # {"rpn_objectness", "rpn_box"} when ground truth was given, else {}


class RoiSample(NamedTuple):
    boxes: Tensor  # (R, 4) sampled RoIs: positives first, then negatives
    matched: Tensor  # (R,) int64 index of each RoI's highest-IoU gt box (meaningful where positive)
    positive: Tensor  # (R,) bool


class RegionProposalNetwork(nn.Module):
    """Objectness and box deltas for ``len(ratios) * len(anchor_sizes[l])`` anchors per cell of each level l
    (stride ``strides[l]``), one head shared by every level (as FPN shares it); all levels need the same number of
    anchors per cell and ``in_channels`` channels."""

    def __init__(self, in_channels: int, strides: Sequence[int], anchor_sizes: Sequence[Sequence[float]],
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), *, fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5, pre_nms_top_n: int = 1000,
                 post_nms_top_n: int = 300, nms_thresh: float = 0.7, min_size: float = 1.0) -> None:
        super().__init__()
        if len(strides) != len(anchor_sizes):
            raise ValueError(f"one anchor-size tuple per level: {len(strides)} strides, {len(anchor_sizes)} sizes")
        if len({len(sizes) for sizes in anchor_sizes}) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {anchor_sizes!r}")
        self.strides = tuple(int(s) for s in strides)
        self.anchor_sizes = tuple(tuple(float(s) for s in sizes) for sizes in anchor_sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.num_anchors = len(self.anchor_sizes[0]) * len(self.ratios)
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_thresh, self.min_size = nms_thresh, min_size
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, self.num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * self.num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):  # Faster R-CNN: N(0, 0.01^2), zero bias
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self._anchor_cache: dict[tuple, Tensor] = {}

    def anchors(self, features: Sequence[Tensor]) -> Tensor:
        """(sum_l H_l W_l A, 4) anchors of every level, in the order of :meth:`head`'s outputs (cached per shape)."""
        key = (tuple(tuple(f.shape[-2:]) for f in features), features[0].device, features[0].dtype)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = torch.cat([
                make_anchors(f.shape[-2], f.shape[-1], stride, sizes, self.ratios, dtype=f.dtype).to(f.device)
                for f, stride, sizes in zip(features, self.strides, self.anchor_sizes, strict=True)])
        return self._anchor_cache[key]

    def head(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: objectness logits (N, sum_l H_l W_l A), deltas (N, sum_l H_l W_l A, 4), and each anchor's
        level (sum_l H_l W_l A,). Cells row-major, then anchors in make_anchors' order (sizes, then ratios)."""
        logits, deltas, levels = [], [], []
        for level, f in enumerate(features):
            h = F.relu(self.conv(f))
            n, _, height, width = h.shape
            logits.append(self.objectness(h).permute(0, 2, 3, 1).reshape(n, -1))  # (N, H, W, A) -> (N, H W A)
            deltas.append(self.deltas(h).view(n, self.num_anchors, 4, height, width)
                          .permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            levels.append(torch.full((height * width * self.num_anchors,), level, device=f.device))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(levels)

    def forward(self, features: list[Tensor], image_size: tuple[int, int],
                gt_boxes: list[Tensor] | None = None) -> RpnOutput:
        logits, deltas, levels = self.head(features)
        anchors = self.anchors(features)
        proposals, scores = self.propose(logits.detach(), deltas.detach(), anchors, levels, image_size)
        losses = {} if gt_boxes is None else self.loss(logits, deltas, anchors, gt_boxes)
        return RpnOutput(proposals, scores, losses)

    def propose(self, logits: Tensor, deltas: Tensor, anchors: Tensor, levels: Tensor,
                image_size: tuple[int, int]) -> tuple[list[Tensor], list[Tensor]]:
        """Top-scoring decoded anchors per level, clipped, small ones dropped, NMS per level, best overall kept."""
        proposals, scores = [], []
        for image_logits, image_deltas in zip(logits, deltas, strict=True):
            keep = torch.cat([_top_k_of(image_logits, levels == level, self.pre_nms_top_n)
                              for level in range(len(self.strides))])
            boxes = clip_boxes(decode_boxes(image_deltas[keep], anchors[keep]), *image_size)
            wide = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
            boxes, score, level = boxes[wide], torch.sigmoid(image_logits[keep][wide]), levels[keep][wide]
            kept = batched_nms(boxes, score, level, self.nms_thresh)[:self.post_nms_top_n]  # by decreasing score
            proposals.append(boxes[kept])
            scores.append(score[kept])
        return proposals, scores

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Faster R-CNN eq. 1 over ``batch_size_per_image`` sampled anchors per image (module docstring)."""
        sampled_logits, targets, box_errors, sampled = [], [], [], 0
        for image_logits, image_deltas, gt in zip(logits, deltas, gt_boxes, strict=True):
            labels, matched = match_anchors(anchors, gt, self.fg_iou, self.bg_iou)
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            chosen = torch.cat([pos, neg])
            sampled_logits.append(image_logits[chosen])
            targets.append((labels[chosen] == 1).to(logits.dtype))  # p*_a
            if pos.numel():
                target_deltas = encode_boxes(gt[matched[pos]], anchors[pos])  # t*_a
                box_errors.append(F.smooth_l1_loss(image_deltas[pos], target_deltas, beta=RPN_SMOOTH_L1_BETA,
                                                   reduction="sum"))
            sampled += chosen.numel()
        n_s = max(sampled, 1)
        objectness = F.binary_cross_entropy_with_logits(torch.cat(sampled_logits), torch.cat(targets),
                                                        reduction="sum") / n_s
        box = torch.stack(box_errors).sum() / n_s if box_errors else deltas.sum() * 0.0  # keeps the graph whole
        return {"rpn_objectness": objectness, "rpn_box": box}


def _top_k_of(values: Tensor, where: Tensor, k: int) -> Tensor:
    """Indices (into ``values``) of the ``k`` largest values among those where ``where`` holds."""
    candidates = where.nonzero(as_tuple=True)[0]
    return candidates[values[candidates].topk(min(k, candidates.numel())).indices]


def sample_rois(proposals: list[Tensor], gt_boxes: list[Tensor], batch_size_per_image: int,
                positive_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou: float = 0.5, add_gt: bool = True,
                generator: torch.Generator | None = None) -> list[RoiSample]:
    """The second stage's training RoIs per image (Fast R-CNN sec. 2.3): proposals (and, with ``add_gt``, the
    ground-truth boxes, so early in training every object has a perfect RoI) labelled foreground at IoU >= ``fg_iou``
    with their best gt box, background at IoU < ``bg_iou``, ignored between; ``batch_size_per_image`` sampled, at
    most ``positive_fraction`` of them foreground."""
    samples = []
    for props, gt in zip(proposals, gt_boxes, strict=True):
        boxes = torch.cat([props, gt.to(props.dtype)]) if add_gt else props
        if gt.numel() == 0:
            labels = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
            matched = torch.zeros_like(labels)
        else:
            best_iou, matched = box_iou(gt.to(boxes.dtype), boxes).max(dim=0)  # each RoI's best gt
            labels = torch.full_like(matched, -1)
            labels[best_iou < bg_iou] = 0
            labels[best_iou >= fg_iou] = 1
        pos, neg = sample_balanced(labels, batch_size_per_image, positive_fraction, generator)
        chosen = torch.cat([pos, neg])
        positive = torch.arange(chosen.numel(), device=boxes.device) < pos.numel()
        samples.append(RoiSample(boxes[chosen], matched[chosen], positive))
    return samples


def rois_with_batch_index(boxes: list[Tensor]) -> Tensor:
    """Per-image (R_i, 4) boxes -> (sum R_i, 5) [image index, x1, y1, x2, y2], the format of trainables.roi_ops."""
    if not boxes:
        return torch.zeros(0, 5)
    return torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b], 1)
                      for i, b in enumerate(boxes)])


__all__ = ["RPN_SMOOTH_L1_BETA", "RegionProposalNetwork", "RoiSample", "RpnOutput", "rois_with_batch_index",
           "sample_rois"]
