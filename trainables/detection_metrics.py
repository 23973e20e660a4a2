"""COCO-style mean average precision for boxes and instance masks (Lin et al. 2014, "Microsoft COCO",
arXiv:1405.0312; the rules of pycocotools' COCOeval). Written here because pycocotools (and torchmetrics) are not
installed in this environment; the inputs follow torchmetrics' MeanAveragePrecision: one dict per image,
preds {"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,), "masks" (N, H, W) bool for iou_type="segm"} and
target {"boxes", "labels", "masks"}. Boxes use trainables/boxes.py's convention (x2/y2 exclusive, area w * h).

Per class c and IoU threshold t:
  1. in each image keep the max_detections highest-scoring detections of class c (COCO's maxDets, per image and
     category) and match them in score order, each to the *unmatched* gt of class c with the highest
     IoU >= t (greedy, COCOeval.evaluateImg); matched = TP, otherwise FP;
  2. pool the detections of all images, sort by score (stable), precision_k = TP_k / k, recall_k = TP_k / n_gt;
  3. make precision non-increasing from the right (the envelope), read it at the 101 recalls r = 0, 0.01, ..., 1
     (first k with recall_k >= r; 0 where recall never reaches r) and average: AP(c, t).
mAP averages AP(c, t) over classes and t in 0.50:0.05:0.95; AP50 / AP75 over classes at t = 0.5 / 0.75.
COCO semantics kept: a class with no ground truth in any image is excluded from the averages (AP -1 in
``map_per_class``), even if it has detections; a class with ground truth but no detection has AP 0. No crowd
regions and no area ranges ("all" only). With no class to average, every AP is -1, as COCOeval reports.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trainables.boxes import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # 0.50:0.05:0.95, exactly as COCOeval builds them
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # the 101-point interpolation


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (N, M) of bool masks a (N, H, W) and b (M, H, W): |a n b| / |a u b|, 0 for two empty masks."""
    fa = a.flatten(1).double()  # (N, H W); flatten, not reshape(N, -1): N may be 0
    fb = b.flatten(1).double()
    inter = fa @ fb.T  # pixel counts of a n b
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _match(iou: np.ndarray, t: float) -> np.ndarray:
    """Greedy COCO matching of detections (rows, already in score order) to gts (columns): bool TP per row."""
    tp = np.zeros(iou.shape[0], dtype=bool)
    taken = np.zeros(iou.shape[1], dtype=bool)
    for d in range(iou.shape[0]):
        cand = np.where(taken, -1.0, iou[d])  # only unmatched gts
        if cand.size == 0:
            continue
        g = len(cand) - 1 - int(np.argmax(cand[::-1]))  # the last of tied best gts, as COCOeval's loop
        if cand[g] >= min(t, 1 - 1e-10):  # COCOeval's test: iou >= t
            tp[d] = taken[g] = True
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP of pooled detections (TP flags and scores) against num_gt > 0 ground truths."""
    order = np.argsort(-scores, kind="mergesort")  # stable, as COCOeval
    tp = tp[order].astype(np.float64)
    tps, fps = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tps / num_gt  # recall_k = TP_k / n_gt
    precision = tps / np.maximum(tps + fps, np.spacing(1))  # precision_k = TP_k / k
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope: max precision at recall >= recall_k
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")  # first k with recall_k >= r
    q = np.zeros(len(RECALL_THRESHOLDS))
    ok = idx < len(recall)
    q[ok] = precision[idx[ok]]  # p_interp(r); 0 at recalls never reached
    return float(np.mean(q))  # AP = (1/101) sum_r p_interp(r)


def mean_average_precision(preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]], iou_type: str = "bbox",
                           iou_thresholds: np.ndarray = IOU_THRESHOLDS, max_detections: int = 100) -> dict[str, Tensor]:
    """COCO mAP. Returns {"map", "map_50", "map_75", "classes" (C,), "map_per_class" (C,)}; "map_per_class" is
    averaged over ``iou_thresholds`` and is -1 for classes without ground truth. map_50/map_75 are -1 when the
    thresholds do not contain 0.5/0.75."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(preds) != len(target):
        raise ValueError(f"{len(preds)} prediction dicts but {len(target)} target dicts")
    key = "boxes" if iou_type == "bbox" else "masks"
    iou_fn = box_iou if iou_type == "bbox" else mask_iou
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    classes = sorted({int(c) for d in [*preds, *target] for c in d["labels"].tolist()})
    ap = np.full((len(classes), len(thresholds)), -1.0)
    for ci, c in enumerate(classes):
        num_gt, pooled = 0, [[] for _ in thresholds]
        all_scores = []
        for p, g in zip(preds, target, strict=True):
            gsel = g["labels"] == c
            num_gt += int(gsel.sum())
            psel = (p["labels"] == c).nonzero(as_tuple=True)[0]
            scores = p["scores"][psel]
            order = torch.argsort(scores, descending=True, stable=True)[:max_detections]
            psel, scores = psel[order], scores[order]
            # IoU in float64, as COCO's C code: float32 would move IoUs that sit on a threshold (0.6, 0.75) below it
            iou = iou_fn(p[key][psel].double(), g[key][gsel].double()).numpy() if psel.numel() else np.zeros((0, 0))
            iou = iou.reshape(psel.numel(), int(gsel.sum()))
            for ti, t in enumerate(thresholds):
                pooled[ti].append(_match(iou, float(t)))
            all_scores.append(scores.double().numpy())
        if num_gt == 0:
            continue  # COCO: a class without ground truth is not evaluated
        s = np.concatenate(all_scores) if all_scores else np.zeros(0)
        for ti in range(len(thresholds)):
            ap[ci, ti] = average_precision(np.concatenate(pooled[ti]), s, num_gt) if s.size else 0.0
    valid = (ap >= 0).any(axis=1)  # classes with ground truth

    def mean_at(cols: np.ndarray) -> float:
        return float(ap[valid][:, cols].mean()) if valid.any() and cols.any() else -1.0

    return {
        "map": torch.tensor(mean_at(np.ones(len(thresholds), dtype=bool)), dtype=torch.float64),
        "map_50": torch.tensor(mean_at(np.isclose(thresholds, 0.5)), dtype=torch.float64),
        "map_75": torch.tensor(mean_at(np.isclose(thresholds, 0.75)), dtype=torch.float64),
        "classes": torch.tensor(classes, dtype=torch.long),
        "map_per_class": torch.tensor(np.where(valid, ap.mean(axis=1) if len(thresholds) else -1.0, -1.0)),
    }
