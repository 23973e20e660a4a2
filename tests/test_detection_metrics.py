"""COCO-style mAP (trainables/detection_metrics.py) on hand-built cases with answers computed by hand.
pycocotools is not installed here, so there is no comparison against it."""

from __future__ import annotations

import pytest
import torch

from trainables.detection_metrics import average_precision, mask_iou, mean_average_precision


def _p(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.long)}


def _g(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


def test_perfect_predictions_give_one() -> None:
    g = torch.Generator().manual_seed(0)
    target, preds = [], []
    for _ in range(4):
        xy = torch.rand(5, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * 10 + 2], 1)
        labels = torch.randint(0, 3, (5,), generator=g)
        target.append({"boxes": boxes, "labels": labels})
        preds.append({"boxes": boxes.clone(), "scores": torch.rand(5, generator=g), "labels": labels.clone()})
    out = mean_average_precision(preds, target)
    assert out["map"].item() == pytest.approx(1.0)
    assert out["map_50"].item() == pytest.approx(1.0) and out["map_75"].item() == pytest.approx(1.0)


def test_false_positive_above_true_positive() -> None:
    # one gt; detections FP (0.9) then TP (0.8): precision (0, 1/2), recall (0, 1); envelope 1/2 everywhere
    gt = [_g([[0, 0, 10, 10]], [0])]
    pred = [_p([[40, 40, 50, 50], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(pred, gt)["map"].item() == pytest.approx(0.5)
    # two gts; TP (0.9), FP (0.8), TP (0.7): recall (1/2, 1/2, 1), precision (1, 1/2, 2/3), envelope (1, 2/3, 2/3);
    # the 51 recall points 0.00..0.50 read 1, the 50 points 0.51..1.00 read 2/3
    gt = [_g([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])]
    pred = [_p([[0, 0, 10, 10], [40, 40, 50, 50], [20, 0, 30, 10]], [0.9, 0.8, 0.7], [0, 0, 0])]
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    out = mean_average_precision(pred, gt)
    assert out["map"].item() == pytest.approx(expected)
    assert out["map_50"].item() == pytest.approx(expected)
    # the same FP ranked last costs nothing: precision 1 up to recall 1
    pred[0]["scores"] = torch.tensor([0.9, 0.1, 0.7])
    assert mean_average_precision(pred, gt)["map"].item() == pytest.approx(1.0)


def test_iou_0625_counts_at_050_not_at_075() -> None:
    gt = [_g([[0, 0, 10, 10]], [2])]
    pred = [_p([[0, 0, 10, 6.25]], [0.5], [2])]  # IoU 62.5 / 100 = 0.625
    out = mean_average_precision(pred, gt)
    assert out["map_50"].item() == pytest.approx(1.0)
    assert out["map_75"].item() == pytest.approx(0.0)
    assert out["map"].item() == pytest.approx(3 / 10)  # a hit at t = 0.50, 0.55, 0.60 of the ten thresholds


def test_greedy_matching_one_detection_per_gt() -> None:
    # two detections on one gt: the higher-scoring one takes it, the duplicate is a false positive
    gt = [_g([[0, 0, 10, 10]], [0])]
    pred = [_p([[0, 0, 10, 10], [0, 0, 10, 9.2]], [0.9, 0.95], [0, 0])]
    # ranking: dup (0.95, TP: it is first, IoU 0.92), exact (0.9, FP: gt taken) -> AP 1 at t <= 0.90
    out = mean_average_precision(pred, gt)
    assert out["map_50"].item() == pytest.approx(1.0)
    # at t = 0.95 the 0.95-scored box (IoU 0.92) misses; the exact box then matches at precision 1/2
    assert out["map"].item() == pytest.approx((9 * 1.0 + 0.5) / 10)


def test_classes_without_ground_truth_are_excluded() -> None:
    gt = [_g([[0, 0, 10, 10]], [0]), _g([[5, 5, 15, 15]], [1])]
    pred = [_p([[0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.99], [0, 7]),  # class 7 has no gt anywhere
            _p([], [], [])]  # class 1 has a gt and no detection: AP 0, counted
    out = mean_average_precision(pred, gt)
    assert out["classes"].tolist() == [0, 1, 7]
    assert out["map_per_class"].tolist() == pytest.approx([1.0, 0.0, -1.0])
    assert out["map"].item() == pytest.approx(0.5)  # mean of classes 0 and 1 only
    empty = mean_average_precision([_p([[0, 0, 1, 1]], [0.5], [3])], [_g([], [])])
    assert empty["map"].item() == -1.0  # nothing to evaluate, as COCOeval reports


def test_max_detections_per_image() -> None:
    gt = [_g([[0, 0, 10, 10]], [0])]
    pred = [_p([[40, 40, 50, 50], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(pred, gt, max_detections=1)["map"].item() == 0.0  # the TP is cut off


def test_mask_ap_uses_mask_iou() -> None:
    gt_mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    gt_mask[0, 1:11, 1:11] = True  # 100 pixels
    pred_mask = gt_mask.clone()
    pred_mask[0, 8:11, 1:11] = False  # 70 pixels left ...
    pred_mask[0, 8, 1:9] = True  # ... plus 8 -> 78 pixels, a subset: IoU 0.78; its box is still ~the gt box
    assert mask_iou(pred_mask, gt_mask).item() == pytest.approx(0.78)
    target = [{"masks": gt_mask, "labels": torch.tensor([0])}]
    preds = [{"masks": pred_mask, "scores": torch.tensor([0.6]), "labels": torch.tensor([0])}]
    out = mean_average_precision(preds, target, iou_type="segm")
    assert out["map"].item() == pytest.approx(6 / 10)  # hits at 0.50, ..., 0.75
    assert out["map_50"].item() == 1.0 and out["map_75"].item() == 1.0
    perfect = [{"masks": gt_mask, "scores": torch.tensor([0.6]), "labels": torch.tensor([0])}]
    assert mean_average_precision(perfect, target, iou_type="segm")["map"].item() == pytest.approx(1.0)
    disjoint = torch.zeros_like(gt_mask)
    disjoint[0, 11, :] = True
    assert mask_iou(disjoint, gt_mask).item() == 0.0


def test_average_precision_pooling_and_validation() -> None:
    import numpy as np

    # pooled across images: order by score regardless of image; no detections reach recall 1 -> points read 0
    ap = average_precision(np.array([True, False]), np.array([0.3, 0.9]), num_gt=2)
    # sorted: FP, TP -> recall (0, 1/2), precision (0, 1/2), envelope 1/2 up to recall 1/2, 0 beyond
    assert ap == pytest.approx(51 * 0.5 / 101)
    with pytest.raises(ValueError, match="iou_type"):
        mean_average_precision([], [], iou_type="keypoints")
    with pytest.raises(ValueError, match="target dicts"):
        mean_average_precision([_p([], [], [])], [])


def _reference_map(preds: list[dict], target: list[dict], thresholds: list[float]) -> float:
    """A slow, independent COCO mAP: p_interp(r) = max{precision_k : recall_k >= r} (0 if none), plain loops."""

    def iou(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    aps = []
    classes = {int(c) for g in target for c in g["labels"].tolist()}
    for c in sorted(classes):
        num_gt = sum(int((g["labels"] == c).sum()) for g in target)
        for t in thresholds:
            flags: list[tuple[float, bool]] = []
            for p, g in zip(preds, target, strict=True):
                gts = [b for b, lab in zip(g["boxes"].tolist(), g["labels"].tolist(), strict=True) if lab == c]
                dets = sorted([(s, b) for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(),
                                                           p["labels"].tolist(), strict=True) if lab == c],
                              key=lambda x: -x[0])
                used = [False] * len(gts)
                for s, b in dets:
                    best, best_j = t, -1
                    for j, gb in enumerate(gts):
                        if not used[j] and iou(b, gb) >= best:
                            best, best_j = iou(b, gb), j
                    if best_j >= 0:
                        used[best_j] = True
                    flags.append((s, best_j >= 0))
            flags.sort(key=lambda x: -x[0])
            tp = 0
            pr_rc = []
            for k, (_, hit) in enumerate(flags, start=1):
                tp += hit
                pr_rc.append((tp / k, tp / num_gt))
            points = [max([pr for pr, rc in pr_rc if rc >= r / 100 - 1e-12], default=0.0) for r in range(101)]
            aps.append(sum(points) / 101)
    return sum(aps) / len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_reference_and_masks_match_boxes(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    preds, target, mpreds, mtarget = [], [], [], []

    def raster(boxes: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(len(boxes), 40, 40, dtype=torch.bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            m[k, y1:y2, x1:x2] = True  # x2/y2 exclusive: the same pixels the box's area counts
        return m

    for _ in range(5):
        n_gt = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.randint(0, 25, (n_gt, 2), generator=g).float()
        gt_boxes = torch.cat([xy, xy + torch.randint(3, 15, (n_gt, 2), generator=g).float()], 1)
        gt_labels = torch.randint(0, 3, (n_gt,), generator=g)
        jitter = torch.randint(-2, 3, (n_gt, 4), generator=g).float()
        fxy = torch.randint(0, 25, (3, 2), generator=g).float()
        false = torch.cat([fxy, fxy + torch.randint(3, 15, (3, 2), generator=g).float()], 1)
        boxes = torch.cat([gt_boxes + jitter, false])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        boxes = boxes.clamp(0, 40)
        labels = torch.cat([gt_labels, torch.randint(0, 3, (3,), generator=g)])
        scores = torch.rand(len(boxes), generator=g)
        preds.append({"boxes": boxes, "scores": scores, "labels": labels})
        target.append({"boxes": gt_boxes, "labels": gt_labels})
        mpreds.append({"masks": raster(boxes), "scores": scores, "labels": labels})
        mtarget.append({"masks": raster(gt_boxes), "labels": gt_labels})
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    out = mean_average_precision(preds, target)
    assert 0.0 < out["map"].item() < 1.0
    assert out["map"].item() == pytest.approx(_reference_map(preds, target, thresholds), abs=1e-9)
    assert mean_average_precision(mpreds, mtarget, iou_type="segm")["map"].item() == pytest.approx(out["map"].item())
