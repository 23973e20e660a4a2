"""trainables/boxes.py against hand-built cases and brute force."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.boxes import (
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    make_anchors,
    match_anchors,
    nms,
    sample_balanced,
)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_iou_hand_built() -> None:
    a = _t([[0, 0, 10, 10]])
    b = _t([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10], [0, 0, 10, 5], [10, 0, 20, 10]])
    iou = box_iou(a, b)[0]
    assert iou[0] == 1.0  # identical
    assert iou[1] == 0.0  # disjoint
    assert iou[2] == pytest.approx(50 / 150)  # half-overlap sideways: 50 / (100 + 100 - 50)
    assert iou[3] == pytest.approx(0.5)  # the top half: 50 / 100
    assert iou[4] == 0.0  # touching edges, x2 exclusive: no shared pixel
    assert box_area(_t([[2, 3, 5, 7]])).item() == 12  # (5 - 2) * (7 - 3), no +1


def test_iou_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(30, 2, generator=g, dtype=torch.float64) * 20 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    iou = box_iou(boxes[:12], boxes)
    for i in range(12):
        for j in range(30):
            a, b = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            assert iou[i, j].item() == pytest.approx(inter / union, abs=1e-12)
    assert torch.allclose(iou[:, :12], iou[:, :12].T)


def test_anchors_count_centres_sizes() -> None:
    sizes, ratios, stride = (8.0, 16.0), (0.5, 1.0, 2.0), 4.0
    anchors = make_anchors(3, 5, stride, sizes, ratios, dtype=torch.float64)
    assert anchors.shape == (3 * 5 * 2 * 3, 4)
    per_cell = anchors.reshape(3, 5, 6, 4)
    cx = (per_cell[..., 0] + per_cell[..., 2]) / 2
    cy = (per_cell[..., 1] + per_cell[..., 3]) / 2
    for i in range(3):
        for j in range(5):
            assert torch.allclose(cx[i, j], torch.full((6,), (j + 0.5) * stride, dtype=torch.float64))
            assert torch.allclose(cy[i, j], torch.full((6,), (i + 0.5) * stride, dtype=torch.float64))
    w = per_cell[0, 0, :, 2] - per_cell[0, 0, :, 0]
    h = per_cell[0, 0, :, 3] - per_cell[0, 0, :, 1]
    expected_area = torch.tensor([64.0] * 3 + [256.0] * 3, dtype=torch.float64)  # size^2, sizes outer
    assert torch.allclose(w * h, expected_area)
    assert torch.allclose(h / w, torch.tensor(list(ratios) * 2, dtype=torch.float64))  # ratio = h / w
    assert torch.allclose(per_cell[0, 0, 4], torch.tensor([-6.0, -6.0, 10.0, 10.0], dtype=torch.float64))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights: tuple[float, float, float, float]) -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g, dtype=torch.float64) * 30 + 1], 1)
    anchors = torch.cat([xy + 3, xy + 3 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 30 + 1], 1)
    deltas = encode_boxes(boxes, anchors, weights)
    assert torch.allclose(decode_boxes(deltas, anchors, weights), boxes, atol=1e-9)
    assert torch.allclose(encode_boxes(anchors, anchors, weights), torch.zeros(50, 4, dtype=torch.float64))


def test_encode_known_values_and_clamp() -> None:
    anchor = _t([[0, 0, 10, 20]])  # centre (5, 10), w 10, h 20
    box = _t([[2, 4, 22, 24]])  # centre (12, 14), w 20, h 20
    d = encode_boxes(box, anchor)[0]
    assert torch.allclose(d, _t([[0.7, 0.2, math.log(2.0), 0.0]])[0])  # (12-5)/10, (14-10)/20, log 2, log 1
    huge = decode_boxes(_t([[0, 0, 100, 100]]), anchor)[0]
    assert huge[2] - huge[0] == pytest.approx(10 * 1000 / 16)  # exp clamped at log(1000/16)
    assert torch.equal(clip_boxes(_t([[-3, 2, 40, 70]]), 64, 32), _t([[0, 2, 32, 64]]))


def test_matching_rules() -> None:
    anchors = _t([[0, 0, 10, 10],  # identical to gt 0 -> positive
                  [0, 0, 10, 6],  # IoU 0.6 with gt 0 -> between thresholds: ignored
                  [50, 50, 60, 60],  # far from everything -> negative
                  [30, 30, 40, 38],  # gt 1's best anchor, IoU 0.4 < 0.7 -> positive by the best-anchor rule
                  [30, 30, 40, 36]])  # IoU 0.3 with gt 1, not best -> ignored (0.3 is not < 0.3)
    gts = _t([[0, 0, 10, 10], [30, 30, 40, 50]])
    labels, matched = match_anchors(anchors, gts, pos_thresh=0.7, neg_thresh=0.3)
    assert labels.tolist() == [1, -1, 0, 1, -1]
    assert matched[0] == 0 and matched[3] == 1
    labels, _ = match_anchors(anchors, gts, 0.7, 0.3, allow_low_quality=False)
    assert labels.tolist() == [1, -1, 0, -1, -1]
    labels, _ = match_anchors(anchors, gts[:0], 0.7, 0.3)
    assert labels.tolist() == [0] * 5  # no ground truth: all background


def test_sample_balanced_counts_and_generator() -> None:
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 20)
    pos, neg = sample_balanced(labels, 32, 0.25, torch.Generator().manual_seed(3))
    assert len(pos) == 8 and len(neg) == 24
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all() and len(set(neg.tolist())) == 24
    pos2, neg2 = sample_balanced(labels, 32, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)  # reproducible from the generator
    pos3, _ = sample_balanced(labels, 32, 0.25, torch.Generator().manual_seed(4))
    assert not torch.equal(pos, pos3)
    few = torch.tensor([1] * 3 + [0] * 100)
    pos, neg = sample_balanced(few, 32, 0.5, torch.Generator().manual_seed(0))
    assert len(pos) == 3 and len(neg) == 29  # too few positives: negatives fill the batch


def test_nms_hand_built() -> None:
    boxes = _t([[0, 0, 10, 10],  # 0.9 kept
                [1, 0, 11, 10],  # 0.8 IoU 9/11 with box 0 -> suppressed
                [20, 20, 30, 30],  # 0.7 disjoint -> kept
                [5, 0, 15, 10],  # 0.95 highest: kept; box 0 has IoU 1/3 with it -> kept at 0.5
                [21, 20, 31, 30]])  # 0.1 overlaps box 2 -> suppressed
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.3).tolist() == [3, 2]  # now box 0 (IoU 1/3 with box 3) is suppressed too
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert sorted(batched_nms(boxes, scores, labels, 0.5).tolist()) == [0, 1, 2, 3, 4]


def test_nms_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(60, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(60, 2, generator=g) * 20 + 2], 1)
    scores = torch.rand(60, generator=g)
    keep = nms(boxes, scores, 0.4).tolist()
    expected: list[int] = []
    for i in sorted(range(60), key=lambda k: -scores[k].item()):
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= 0.4 for j in expected):
            expected.append(i)
    assert keep == expected


def test_empty_inputs() -> None:
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).numel() == 0
    assert batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0
    assert box_iou(empty, _t([[0, 0, 1, 1]]).float()).shape == (0, 1)
