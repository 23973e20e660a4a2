"""Mask R-CNN (He et al. 2017, arXiv:1703.06870) on the common loop: instance segmentation of generated scenes (or a
local COCO folder), with the paper's central ablation behind one switch, ``roi_op``: RoIAlign vs RoIPool.

Networks: :mod:`trainables.mask_rcnn_networks` (ResNet-FPN, box head, mask head), :mod:`trainables.rpn` (the RPN and
the RoI sampling), :mod:`trainables.roi_ops`. The loss on each sampled RoI (paper sec. 3, "Training"):

    L = L_rpn + L_cls + L_box + L_mask
    L_rpn  = objectness BCE + smooth-L1 of anchor deltas                    (Faster R-CNN eq. 1, trainables.rpn)
    L_cls  = -log p_u,                        u = the RoI's gt class (0 = background: IoU < 0.5 with every gt)
    L_box  = [u >= 1] sum_{i in x,y,w,h} smoothL1(t^u_i - v_i)                      (Fast R-CNN eq. 3; beta 1,
             v = encode(gt box, RoI) scaled by (10, 10, 5, 5), summed over positives / number of sampled RoIs)
    L_mask = -1/m^2 sum_ij [y_ij log sigma(s^u_ij) + (1 - y_ij) log(1 - sigma(s^u_ij))]    on positive RoIs only:
             s^u is the mask head's channel of the gt class u alone (per-pixel sigmoid, no competition between
             classes: the paper's decoupling of masks and classes), y = the gt mask RoIAligned onto the RoI at m x m
             and thresholded at 0.5. ``class_agnostic_masks``: one channel for every class (the paper's table 2b).

Metrics: COCO-style box AP and mask AP (IoU 0.50:0.95, and at 0.5 and 0.75) on val and test
(:mod:`trainables.detection_metrics`). Artifact: ``detections.png``, val images with their ground truth (top row)
and the predicted boxes and masks (bottom row).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.boxes import encode_boxes
from trainables.context import Context, unwrap
from trainables.detection_data import (
    DATASETS,
    DetectionData,
    DetectionDataError,
    Instances,
    check_coco_folder,
    load_detection_data,
)
from trainables.detection_metrics import mean_average_precision
from trainables.image_grid import BOX_COLOURS, save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit
from trainables.mask_rcnn_networks import BACKBONES, BOX_WEIGHTS, HeadOutputs, MaskRCNN
from trainables.optim import validate_optim_config
from trainables.registry import as_config_error, check_choice, check_range, register
from trainables.roi_ops import METHODS, roi_align
from trainables.rpn import RoiSample
from trainables.task import Task

MASK_SIZE = 28  # m: the mask head's 14 x 14 RoI features, deconvolved 2x
PIXEL_MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as ResNet backbones expect
PIXEL_STD = (0.229, 0.224, 0.225)
LOSSES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")
SCORES = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")
MASK_RCNN_METRICS: dict[str, str] = {**{f"{split}_{s}": "max" for split in ("val", "test") for s in SCORES},
                                     "train_loss": "min", **{f"train_{name}": "min" for name in LOSSES}}

MASK_RCNN_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in LOOP_DEFAULTS.items() if k not in ("val_size", "augment")},  # no augmentation here
    "dataset": "scenes", "epochs": 6, "batch_size": 8,
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "step", "lr_milestones": [0.75],
    "roi_op": "align",  # the ablation: "align" (RoIAlign) | "pool" (RoIPool), for the box and the mask head
    "class_agnostic_masks": False,
    "image_size": 64, "max_objects": 4, "digit_prob": 0.0,  # generated scenes (trainables.scenes)
    "train_scenes": 400, "val_scenes": 100, "test_scenes": 200,
    "val_images": 500, "max_images": 0,  # COCO: train images held out for val; cap per split (0: all)
    "backbone": "small", "width": 32,  # width: the small backbone's first stage (ResNet-50's is 64)
    "fpn_channels": 64, "box_hidden": 256, "mask_width": 64,
    "anchor_scale": 3.0,  # anchor side = anchor_scale x the level's stride (FPN at COCO scale: 8)
    "roi_canonical_size": 24.0, "roi_canonical_level": 1,  # FPN eq. 1's 224 and k0 (as a level index)
    "sampling_ratio": 2,  # RoIAlign's samples per bin side (the paper: 4 points a bin, 2 x 2)
    "rpn_batch_per_image": 128, "rpn_pre_nms": 300, "rpn_post_nms_train": 100, "rpn_post_nms_test": 50,
    "roi_batch_per_image": 64, "roi_positive_fraction": 0.25,
    "score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_image": 20, "eval_batch_size": 50,
}


def roi_labels(samples: Sequence[RoiSample], gt_labels: Sequence[Tensor]) -> Tensor:
    """u of every sampled RoI, in order: its matched gt's class + 1 if positive, else 0 (background)."""
    return torch.cat([torch.where(s.positive, labels[s.matched] + 1, 0) if len(labels) else
                      torch.zeros_like(s.matched) for s, labels in zip(samples, gt_labels, strict=True)])


def box_head_loss(class_logits: Tensor, box_deltas: Tensor, samples: Sequence[RoiSample],
                  gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(L_cls, L_box) of the module docstring over every sampled RoI."""
    u = roi_labels(samples, gt_labels)
    loss_cls = F.cross_entropy(class_logits, u)  # -log p_u, mean over RoIs
    pos = (u > 0).nonzero().squeeze(1)
    rois = torch.cat([s.boxes for s in samples])
    matched = torch.cat([gt[s.matched] if len(gt) else s.boxes for s, gt in zip(samples, gt_boxes, strict=True)])
    v = encode_boxes(matched[pos], rois[pos], BOX_WEIGHTS)  # regression targets v
    t_u = box_deltas[pos, u[pos] - 1]  # t^u: the deltas predicted for the gt class only
    loss_box = F.smooth_l1_loss(t_u, v, beta=1.0, reduction="sum") / max(len(u), 1)  # [u >= 1] smoothL1(t^u - v)
    return loss_cls, loss_box


def mask_targets(samples: Sequence[RoiSample], gt_masks: Sequence[Tensor], size: int = MASK_SIZE) -> Tensor:
    """(P, size, size) float 0/1 targets of the positive RoIs, in order: each RoI's gt mask RoIAligned onto the RoI
    (half-pixel aligned, 2 x 2 samples a bin) and thresholded at 0.5."""
    targets = []
    for s, masks in zip(samples, gt_masks, strict=True):
        rois = torch.cat([s.matched[s.positive, None].to(s.boxes.dtype), s.boxes[s.positive]], 1)
        if len(rois):
            crops = roi_align(masks[:, None].to(s.boxes.dtype), rois, size, sampling_ratio=2, aligned=True)
            targets.append((crops[:, 0] >= 0.5).to(s.boxes.dtype))
    return torch.cat(targets) if targets else torch.zeros(0, size, size)


def mask_loss(mask_logits: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """L_mask: mean per-pixel BCE of the gt class's channel (``labels`` = u - 1, 0-based; one channel if the head
    is class-agnostic). 0 with the graph kept when there is no positive RoI."""
    if len(targets) == 0:
        return mask_logits.sum() * 0.0
    channel = labels if mask_logits.shape[1] > 1 else torch.zeros_like(labels)
    s_u = mask_logits[torch.arange(len(labels), device=labels.device), channel]  # s^u: only the gt class's map
    return F.binary_cross_entropy_with_logits(s_u, targets.to(s_u.device))


def mask_rcnn_losses(out: HeadOutputs, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                     gt_masks: Sequence[Tensor]) -> dict[str, Tensor]:
    """Every term of L (module docstring), named as reported (``train_loss_rpn_cls`` ...)."""
    loss_cls, loss_box = box_head_loss(out.class_logits, out.box_deltas, out.samples, gt_boxes, gt_labels)
    u = roi_labels(out.samples, gt_labels)
    positive = torch.cat([s.positive for s in out.samples])
    loss_mask = mask_loss(out.mask_logits, mask_targets(out.samples, gt_masks), u[positive] - 1)
    return {"loss_rpn_cls": out.rpn_losses["rpn_objectness"], "loss_rpn_box": out.rpn_losses["rpn_box"],
            "loss_cls": loss_cls, "loss_box": loss_box, "loss_mask": loss_mask}


class Batch(NamedTuple):
    images: Tensor  # (B, 3, H, W) normalised, zero-padded to the batch's largest image (a multiple of 32)
    boxes: list[Tensor]
    labels: list[Tensor]
    masks: list[Tensor]  # (K_i, H, W) bool, padded like the images


def collate(samples: Sequence[Instances], device: torch.device) -> Batch:
    """Stack and normalise images (padded bottom-right, which moves no box) and move the targets to ``device``."""
    pad_h = max(int(s.image.shape[1]) for s in samples)
    pad_w = max(int(s.image.shape[2]) for s in samples)
    pad_h, pad_w = -(-pad_h // 32) * 32, -(-pad_w // 32) * 32
    mean = torch.tensor(PIXEL_MEAN, device=device)[:, None, None]
    std = torch.tensor(PIXEL_STD, device=device)[:, None, None]
    images = torch.zeros(len(samples), 3, pad_h, pad_w, device=device)
    masks = []
    for i, s in enumerate(samples):
        h, w = s.image.shape[1:]
        images[i, :, :h, :w] = (s.image.to(device).float() / 255.0 - mean) / std
        masks.append(F.pad(s.masks.to(device), (0, pad_w - w, 0, pad_h - h)))
    return Batch(images, [s.boxes.to(device) for s in samples], [s.labels.to(device) for s in samples], masks)


class MaskRcnnTask(Task):
    """One model (``mask_rcnn``), one optimizer: the loop runs backward and the step."""

    def __init__(self, data: DetectionData, config: Mapping[str, Any]) -> None:
        self.data, self.config = data, dict(config)

    def build_models(self) -> dict[str, nn.Module]:
        c = self.config
        return {"mask_rcnn": MaskRCNN(
            len(self.data.classes), backbone=c["backbone"], width=c["width"], fpn_channels=c["fpn_channels"],
            anchor_scale=c["anchor_scale"], roi_op=c["roi_op"], canonical_size=c["roi_canonical_size"],
            canonical_level=c["roi_canonical_level"], box_hidden=c["box_hidden"], mask_width=c["mask_width"],
            class_agnostic=c["class_agnostic_masks"], rpn_batch_per_image=c["rpn_batch_per_image"],
            rpn_pre_nms=c["rpn_pre_nms"], rpn_post_nms_train=c["rpn_post_nms_train"],
            rpn_post_nms_test=c["rpn_post_nms_test"], roi_batch_per_image=c["roi_batch_per_image"],
            roi_positive_fraction=c["roi_positive_fraction"], sampling_ratio=c["sampling_ratio"])}

    def train_batches(self, ctx: Context, epoch: int) -> Iterator[Batch]:
        """This rank's shard of a per-epoch permutation (a function of seed and epoch); every rank gets the same
        number of batches (DDP needs it), the remainder is dropped."""
        g = torch.Generator().manual_seed(1_000_003 * int(self.config["seed"]) + epoch)
        order = torch.randperm(len(self.data.train), generator=g)
        per_rank = len(order) // ctx.world_size
        mine = order[ctx.rank * per_rank:(ctx.rank + 1) * per_rank].tolist()
        size = int(self.config["batch_size"])
        for start in range(0, len(mine), size):
            yield collate([self.data.train[i] for i in mine[start:start + size]], ctx.device)

    def train_step(self, batch: Batch, step: int) -> dict[str, Any]:
        out = self.models["mask_rcnn"](batch.images, batch.boxes)  # through DDP's wrapper: gradients sync
        losses = mask_rcnn_losses(out, batch.boxes, batch.labels, batch.masks)
        total = sum(losses.values())  # L = L_rpn + L_cls + L_box + L_mask
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    @torch.no_grad()
    def predict(self, samples: Sequence[Instances], device: torch.device) -> list[dict[str, Tensor]]:
        """Detections (masks as bool at probability 0.5), on the CPU, cropped to each image's own size."""
        model = unwrap(self.models["mask_rcnn"])
        was_training = model.training
        model.eval()
        c, preds = self.config, []
        for start in range(0, len(samples), int(c["eval_batch_size"])):
            chunk = samples[start:start + int(c["eval_batch_size"])]
            batch = collate(chunk, device)
            for s, d in zip(chunk, model.detect(batch.images, c["score_thresh"], c["nms_thresh"],
                                                c["detections_per_image"]), strict=True):
                h, w = s.image.shape[1:]
                preds.append({"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(), "labels": d["labels"].cpu(),
                              "masks": (d["masks"][:, :h, :w] >= 0.5).cpu()})
        model.train(was_training)
        return preds

    def score(self, samples: Sequence[Instances], device: torch.device) -> dict[str, float]:
        preds = self.predict(samples, device)
        targets = [{"boxes": s.boxes, "labels": s.labels, "masks": s.masks} for s in samples]
        out = {}
        for kind, iou_type in (("box", "bbox"), ("mask", "segm")):
            m = mean_average_precision(preds, targets, iou_type=iou_type)
            out.update({f"{kind}_ap": float(m["map"]), f"{kind}_ap50": float(m["map_50"]),
                        f"{kind}_ap75": float(m["map_75"])})
        return out

    def evaluate(self, ctx: Context) -> dict[str, float]:
        return {f"{split}_{k}": v for split in ("val", "test")
                for k, v in self.score(getattr(self.data, split), ctx.device).items()}

    def write_artifacts(self, directory: str) -> None:
        """``detections.png``: 8 val images with their gt masks and boxes (top) and the detections scoring >= 0.5
        (bottom), each instance in its own colour."""
        samples = [self.data.val[i] for i in range(min(8, len(self.data.val)))]
        device = next(unwrap(self.models["mask_rcnn"]).parameters()).device
        preds = self.predict(samples, device)
        shown = [{k: v[p["scores"] >= 0.5] for k, v in p.items()} for p in preds]
        truth = [overlay(s.image, s.masks) for s in samples]
        found = [overlay(s.image, p["masks"]) for s, p in zip(samples, shown, strict=True)]
        boxes = ([[tuple(b.tolist()) for b in s.boxes] for s in samples]
                 + [[tuple(b.tolist()) for b in p["boxes"]] for p in shown])
        save_image_grid(torch.stack(truth + found), os.path.join(directory, "detections.png"), nrow=len(samples),
                        scale=4, boxes=boxes)


def overlay(image: Tensor, masks: Tensor, alpha: float = 0.5) -> Tensor:
    """float (3, H, W) in [0, 1]: ``image`` with mask k tinted in BOX_COLOURS[k] (the colour of its box)."""
    out = image.float() / 255.0
    for k, mask in enumerate(masks):
        colour = torch.tensor(BOX_COLOURS[k % len(BOX_COLOURS)], dtype=torch.float32)[:, None, None] / 255.0
        out = torch.where(mask[None], (1 - alpha) * out + alpha * colour, out)
    return out


def validate_mask_rcnn(config: dict[str, Any]) -> None:
    check_choice(config, "dataset", DATASETS)
    check_choice(config, "roi_op", METHODS)
    check_choice(config, "backbone", BACKBONES)
    for key in ("epochs", "batch_size", "eval_batch_size", "max_objects", "train_scenes", "val_scenes",
                "test_scenes", "width", "fpn_channels", "box_hidden", "mask_width", "sampling_ratio",
                "rpn_batch_per_image", "rpn_pre_nms", "rpn_post_nms_train", "rpn_post_nms_test",
                "roi_batch_per_image", "detections_per_image"):
        check_range(config, key, 1)
    for key in ("limit_train_batches", "val_images", "max_images", "roi_canonical_level"):
        check_range(config, key, 0)
    check_range(config, "image_size", 64, 128)
    check_range(config, "digit_prob", 0.0, 1.0)
    check_range(config, "roi_positive_fraction", 0.0, 1.0, low_open=True)
    for key in ("score_thresh", "nms_thresh"):
        check_range(config, key, 0.0, 1.0)
    for key in ("anchor_scale", "roi_canonical_size"):
        check_range(config, key, 0.0, low_open=True)
    validate_optim_config(config)
    if config["dataset"] == "coco":
        with as_config_error(DetectionDataError):
            check_coco_folder(config["data_dir"])


@register("mask_rcnn", defaults=MASK_RCNN_DEFAULTS, validate=validate_mask_rcnn, metrics=MASK_RCNN_METRICS,
          primary="val_mask_ap", user_errors=(*LOOP_USER_ERRORS, DetectionDataError), paths=LOOP_PATHS)
def train_mask_rcnn(config: dict[str, Any], ctx: Context) -> None:
    """Mask R-CNN (He et al. 2017): instance segmentation of generated scenes or COCO, RoIAlign vs RoIPool."""
    fit(ctx, config, MaskRcnnTask(load_detection_data(config), config))
