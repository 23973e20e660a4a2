"""Mask R-CNN's networks (He et al. 2017, arXiv:1703.06870, sec. 3 and fig. 4 right): a ResNet with a feature
pyramid (Lin et al. 2017, FPN), the box head (two FC layers, class scores and class-specific box deltas) and the mask
head (four 3x3 convs, a 2x deconv, one m x m mask per class). The RPN is :mod:`trainables.rpn`'s, the RoI feature
op :mod:`trainables.roi_ops`' (``roi_op``: the paper's RoIAlign vs RoIPool ablation).

Written here because torchvision (whose ``maskrcnn_resnet50_fpn`` has all of this) is not installed, and a small
backbone for 64-px scenes is not in it anyway. Two backbones:

* ``small``: a 3x3 stem at stride 2 and three stages of basic residual blocks (strides 4, 8, 16) for 64-px scenes;
* ``resnet50``: ResNet-50 (7x7 stem, max-pool, bottleneck stages [3, 4, 6, 3], strides 4 to 32), the paper's
  ResNet-50-FPN, randomly initialised (no downloads; load ImageNet weights from a local file yourself).

FPN: lateral 1x1 convs to ``fpn_channels``, top-down nearest upsampling and sum, 3x3 output convs: P_l at every
stage's stride. A RoI of size w x h is pooled from level (FPN eq. 1, with the canonical 224 px scaled to the data):

    k = clamp(floor(k0 + log2(sqrt(w h) / canonical)), k_min, k_max)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.boxes import batched_nms, clip_boxes, decode_boxes
from trainables.roi_ops import roi_features
from trainables.rpn import RegionProposalNetwork, RoiSample, rois_with_batch_index, sample_rois

BACKBONES = ("small", "resnet50")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _projection(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.shortcut = _projection(cin, 4 * width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetFPN(nn.Module):
    """Backbone + FPN: ``forward(images)`` -> [P_l] at ``strides`` with ``fpn_channels`` channels each."""

    def __init__(self, kind: str, fpn_channels: int, width: int = 32) -> None:
        super().__init__()
        if kind == "small":  # 64-px scenes: strides 4, 8, 16 (16x16, 8x8, 4x4 maps)
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            block, depths, widths, first_stride = BasicBlock, (1, 1, 1), (width, 2 * width, 4 * width), 2
        elif kind == "resnet50":  # the paper's ResNet-50: strides 4 to 32
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            block, depths, widths, first_stride = Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 1
        else:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {kind!r}")
        stages, cin = [], self.stem[0].out_channels
        for i, (depth, w) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, w, (first_stride if i == 0 else 2) if j == 0 else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.strides = tuple(4 * 2 ** i for i in range(len(stages)))
        self.lateral = nn.ModuleList(nn.Conv2d(w * block.expansion, fpn_channels, 1) for w in widths)
        self.output = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in widths)

    def forward(self, images: Tensor) -> list[Tensor]:
        x, stages = self.stem(images), []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        # top-down: P_l = lateral(C_l) + upsample(P_{l+1})
        merged = [self.lateral[-1](stages[-1])]
        for c, lateral in zip(reversed(stages[:-1]), reversed(self.lateral[:-1]), strict=True):
            merged.insert(0, lateral(c) + F.interpolate(merged[0], size=c.shape[-2:], mode="nearest"))
        return [conv(p) for conv, p in zip(self.output, merged, strict=True)]


def fpn_levels(boxes: Tensor, num_levels: int, canonical: float, canonical_level: int) -> Tensor:
    """Pyramid index (0 = finest) of each (K, 4) box: FPN eq. 1, k0 = ``canonical_level`` (an index)."""
    size = ((boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6) * (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)).sqrt()
    k = torch.floor(canonical_level + torch.log2(size / canonical + 1e-8))  # k0 + log2(sqrt(wh) / 224)
    return k.clamp(0, num_levels - 1).long()


def multilevel_roi_features(features: Sequence[Tensor], strides: Sequence[int], rois: Tensor, output_size: int,
                            method: str, canonical: float, canonical_level: int, sampling_ratio: int = 2,
                            aligned: bool = True) -> Tensor:
    """(K, C, s, s) features of ``rois`` (K, 5) [batch index, xyxy], each from its own FPN level."""
    levels = fpn_levels(rois[:, 1:], len(features), canonical, canonical_level)
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for level, (f, stride) in enumerate(zip(features, strides, strict=True)):
        k = (levels == level).nonzero().squeeze(1)
        if k.numel():
            out = out.index_copy(0, k, roi_features(f, rois[k], output_size, 1.0 / stride, method,
                                                    sampling_ratio=sampling_ratio, aligned=aligned))
    return out


class BoxHead(nn.Module):
    """Two FC layers (``hidden`` units) on s x s RoI features, then class logits (C + 1, 0 = background) and
    class-specific box deltas (C x 4)."""

    def __init__(self, channels: int, pooled: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels * pooled * pooled, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cls = nn.Linear(hidden, num_classes + 1)
        self.box = nn.Linear(hidden, 4 * num_classes)
        nn.init.normal_(self.cls.weight, std=0.01)  # Detectron's initialisation of the predictors
        nn.init.normal_(self.box.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.box.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.cls(h), self.box(h).view(len(x), -1, 4)


class MaskHead(nn.Module):
    """Four 3x3 convs, a 2x2 stride-2 deconv, a 1x1 conv to one mask logit map per class (``num_masks`` = C, or 1
    when class-agnostic): s x s RoI features -> (K, num_masks, 2s, 2s) logits (paper fig. 4, right)."""

    def __init__(self, channels: int, width: int, num_masks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_masks, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.logits.weight, std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu(self.deconv(self.convs(x))))


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """(D, m, m) mask probabilities of boxes (D, 4) -> (D, H, W) probabilities in the image: each pixel centre
    (x + 1/2, y + 1/2) reads the m x m map bilinearly at its position in the box (0 outside the box)."""
    if probs.numel() == 0:
        return probs.new_zeros(0, height, width)
    xs = torch.arange(width, device=probs.device, dtype=probs.dtype) + 0.5
    ys = torch.arange(height, device=probs.device, dtype=probs.dtype) + 0.5
    x1, y1, x2, y2 = (boxes[:, j, None] for j in range(4))
    gx = 2 * (xs[None] - x1) / (x2 - x1).clamp(min=1e-6) - 1  # -1 and 1 are the box's edges (align_corners=False)
    gy = 2 * (ys[None] - y1) / (y2 - y1).clamp(min=1e-6) - 1
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    return F.grid_sample(probs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Fast R-CNN's scaling of the second stage's regression targets


class HeadOutputs(NamedTuple):
    """What one training forward pass hands to the losses (:mod:`trainables.mask_rcnn`)."""

    rpn_losses: dict[str, Tensor]  # {"rpn_objectness", "rpn_box"}
    samples: list[RoiSample]  # per image: sampled RoIs, positives first
    class_logits: Tensor  # (R, C + 1) over every sampled RoI of every image, in order
    box_deltas: Tensor  # (R, C, 4)
    mask_logits: Tensor  # (P, num_masks, m, m) for the positive RoIs, in order


class MaskRCNN(nn.Module):
    """Backbone + FPN, RPN, box head and mask head; ``roi_op`` ("align" | "pool") feeds both heads."""

    def __init__(self, num_classes: int, *, backbone: str = "small", width: int = 32, fpn_channels: int = 64,
                 anchor_scale: float = 3.0, roi_op: str = "align", canonical_size: float = 24.0,
                 canonical_level: int = 1, box_hidden: int = 256, mask_width: int = 64,
                 class_agnostic: bool = False, rpn_batch_per_image: int = 128, rpn_pre_nms: int = 300,
                 rpn_post_nms_train: int = 100, rpn_post_nms_test: int = 50, roi_batch_per_image: int = 64,
                 roi_positive_fraction: float = 0.25, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.backbone = ResNetFPN(backbone, fpn_channels, width)
        strides = self.backbone.strides
        self.rpn = RegionProposalNetwork(fpn_channels, strides, [(anchor_scale * s,) for s in strides],
                                         batch_size_per_image=rpn_batch_per_image, pre_nms_top_n=rpn_pre_nms,
                                         post_nms_top_n=rpn_post_nms_train)
        self.box_head = BoxHead(fpn_channels, 7, box_hidden, num_classes)
        self.mask_head = MaskHead(fpn_channels, mask_width, 1 if class_agnostic else num_classes)
        self.num_classes, self.class_agnostic, self.roi_op = num_classes, class_agnostic, roi_op
        self.canonical = (canonical_size, canonical_level)
        self.post_nms = (rpn_post_nms_train, rpn_post_nms_test)
        self.roi_sampling = (roi_batch_per_image, roi_positive_fraction)
        self.sampling_ratio = sampling_ratio

    def pooled(self, features: list[Tensor], rois: Tensor, size: int) -> Tensor:
        """RoIAlign or RoIPool (the ablation) of ``rois`` from their FPN levels."""
        return multilevel_roi_features(features, self.backbone.strides, rois, size, self.roi_op, *self.canonical,
                                       sampling_ratio=self.sampling_ratio)

    def forward(self, images: Tensor, gt_boxes: list[Tensor]) -> HeadOutputs:
        """Training pass: RPN losses, sampled RoIs and the heads' raw outputs on them."""
        features = self.backbone(images)
        self.rpn.post_nms_top_n = self.post_nms[0]
        rpn = self.rpn(features, tuple(images.shape[-2:]), gt_boxes)
        samples = sample_rois(rpn.proposals, gt_boxes, *self.roi_sampling, fg_iou=0.5, bg_iou=0.5)
        class_logits, box_deltas = self.box_head(self.pooled(features, rois_with_batch_index(
            [s.boxes for s in samples]), 7))
        positives = rois_with_batch_index([s.boxes[s.positive] for s in samples])
        mask_logits = self.mask_head(self.pooled(features, positives, 14))
        return HeadOutputs(rpn.losses, samples, class_logits, box_deltas, mask_logits)

    @torch.no_grad()
    def detect(self, images: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.5,
               max_detections: int = 100) -> list[dict[str, Tensor]]:
        """Per image {"boxes" (D, 4), "scores", "labels" (0-based), "masks" (D, H, W) probabilities}: class-specific
        boxes from the proposals, per-class NMS, the best ``max_detections``; then the mask head on the detected
        boxes, the predicted class's mask pasted into the image (paper sec. 3.1, inference)."""
        height, width = images.shape[-2:]
        features = self.backbone(images)
        self.rpn.post_nms_top_n = self.post_nms[1]
        proposals = self.rpn(features, (height, width)).proposals
        logits, deltas = self.box_head(self.pooled(features, rois_with_batch_index(proposals), 7))
        scores_all = F.softmax(logits, dim=1)[:, 1:]  # p_c of each foreground class
        boxes_all = clip_boxes(decode_boxes(deltas, torch.cat(proposals)[:, None, :].expand_as(deltas),
                                            BOX_WEIGHTS), height, width)
        detections, start = [], 0
        for props in proposals:
            scores, boxes = scores_all[start:start + len(props)], boxes_all[start:start + len(props)]
            start += len(props)
            labels = torch.arange(self.num_classes, device=images.device).expand_as(scores)
            keep = (scores > score_thresh) & ((boxes[..., 2] - boxes[..., 0]) >= 1) & (
                (boxes[..., 3] - boxes[..., 1]) >= 1)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            kept = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
            detections.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        rois = rois_with_batch_index([d["boxes"] for d in detections])
        mask_probs = torch.sigmoid(self.mask_head(self.pooled(features, rois, 14))) if len(rois) else None
        start = 0
        for d in detections:
            n = len(d["boxes"])
            if mask_probs is None or n == 0:
                d["masks"] = images.new_zeros(0, height, width)
                continue
            probs = mask_probs[start:start + n]
            start += n
            channel = torch.zeros_like(d["labels"]) if self.class_agnostic else d["labels"]
            d["masks"] = paste_masks(probs[torch.arange(n, device=probs.device), channel], d["boxes"], height, width)
        return detections


__all__ = ["BACKBONES", "BOX_WEIGHTS", "BoxHead", "HeadOutputs", "MaskHead", "MaskRCNN", "ResNetFPN", "fpn_levels",
           "multilevel_roi_features", "paste_masks"]
