"""The region proposal network and RoI sampling shared by Mask R-CNN and DenseCap: the head's outputs line up with
the anchors, proposals obey their rules, the loss on hand-built cases, that it learns to find an object, and the
second stage's sampling."""

from __future__ import annotations

import pytest
import torch

from trainables.boxes import box_iou, encode_boxes
from trainables.rpn import RegionProposalNetwork, rois_with_batch_index, sample_rois

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_head_outputs_line_up_with_the_anchors() -> None:
    rpn = RegionProposalNetwork(4, strides=[4, 8], anchor_sizes=[(8.0,), (16.0,)], ratios=(0.5, 1.0, 2.0))
    with torch.no_grad():  # logit of anchor a = a everywhere; delta channel c of anchor a = 10 a + c
        for layer in (rpn.objectness, rpn.deltas):
            layer.weight.zero_()
        rpn.objectness.bias.copy_(torch.arange(3.0))
        rpn.deltas.bias.copy_(torch.tensor([10.0 * a + c for a in range(3) for c in range(4)]))
    features = [torch.randn(2, 4, 3, 5), torch.randn(2, 4, 2, 3)]
    logits, deltas, levels = rpn.head(features)
    anchors = rpn.anchors(features)
    assert logits.shape == (2, (15 + 6) * 3) and deltas.shape == (2, 63, 4) and anchors.shape == (63, 4)
    a = torch.arange(63) % 3  # each cell holds its 3 anchors in make_anchors' order
    assert torch.equal(logits[1], a.float())
    assert torch.equal(deltas[0], 10.0 * a[:, None].float() + torch.arange(4.0))
    ratio = (anchors[:, 3] - anchors[:, 1]) / (anchors[:, 2] - anchors[:, 0])  # h / w
    assert torch.allclose(ratio, torch.tensor([0.5, 1.0, 2.0])[a], rtol=1e-5)
    assert torch.equal(levels, torch.tensor([0] * 45 + [1] * 18))
    side = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    assert torch.allclose(side.sqrt(), torch.where(levels == 0, 8.0, 16.0))  # each level's size


def test_proposals_are_clipped_thin_free_suppressed_and_capped() -> None:
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(8, strides=[4], anchor_sizes=[(8.0, 16.0)], pre_nms_top_n=200, post_nms_top_n=20,
                                nms_thresh=0.5, min_size=2.0)
    with torch.no_grad():
        rpn.deltas.weight.normal_(std=0.5)  # large deltas: boxes spill out of the image and must be clipped
        rpn.objectness.weight.normal_()
    out = rpn([torch.randn(2, 8, 8, 8)], image_size=(32, 32))
    assert out.losses == {} and len(out.proposals) == 2
    for boxes, scores in zip(out.proposals, out.scores, strict=True):
        assert 0 < len(boxes) <= 20 and not boxes.requires_grad
        assert bool((boxes >= 0).all()) and bool((boxes <= 32).all())
        assert bool(((boxes[:, 2:] - boxes[:, :2]) >= 2.0).all())
        assert bool((scores[:-1] >= scores[1:]).all()) and bool(((scores > 0) & (scores < 1)).all())
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert float(iou.max()) <= 0.5


def test_loss_on_a_perfect_regression_is_pure_objectness() -> None:
    rpn = RegionProposalNetwork(2, strides=[8], anchor_sizes=[(16.0,)], ratios=(1.0,), batch_size_per_image=8)
    features = [torch.zeros(1, 2, 4, 4)]
    anchors = rpn.anchors(features)
    gt = torch.tensor([[10.0, 11.0, 26.0, 27.0]])  # one positive: the anchor centred at (20, 20), IoU 0.695
    logits, _, _ = rpn.head(features)
    best = int(box_iou(gt, anchors).argmax())
    assert int((box_iou(gt, anchors) >= 0.5).sum()) == 1  # one positive (the best); the rest below 0.42
    deltas = torch.zeros(1, len(anchors), 4)
    deltas[0, best] = encode_boxes(gt, anchors[best:best + 1])[0]  # exact regression of the positive anchor
    losses = rpn.loss(logits, deltas, anchors, [gt])
    assert float(losses["rpn_box"].detach()) == pytest.approx(0.0, abs=1e-6)
    log_two = torch.log(torch.tensor(2.0)).item()  # BCE at logit o = 0
    assert float(losses["rpn_objectness"].detach()) == pytest.approx(log_two, rel=1e-4)
    deltas[0, best, 0] += 1.0  # 1 pixel-unit off in tx: smooth L1 = 1 - beta/2, over the 8 sampled anchors
    worse = rpn.loss(logits, deltas, anchors, [gt])
    assert float(worse["rpn_box"]) == pytest.approx((1.0 - 0.5 / 9) / 8, rel=1e-5)


def test_loss_without_objects_only_pushes_objectness_down_and_backpropagates() -> None:
    rpn = RegionProposalNetwork(3, strides=[4], anchor_sizes=[(8.0,)], batch_size_per_image=16)
    out = rpn([torch.randn(2, 3, 4, 4)], (16, 16), gt_boxes=[torch.zeros(0, 4), torch.zeros(0, 4)])
    assert float(out.losses["rpn_box"].detach()) == 0.0
    (out.losses["rpn_objectness"] + out.losses["rpn_box"]).backward()
    assert float(rpn.objectness.bias.grad.sum()) > 0  # gradient descent lowers every logit


def _square_scene(x1: int, y1: int, side: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of an image with one bright square: the image pooled to stride 4, with x and y coordinate maps."""
    image = torch.zeros(1, 1, size, size)
    image[..., y1:y1 + side, x1:x1 + side] = 1.0
    pooled = torch.nn.functional.avg_pool2d(image, 4)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size // 4), torch.linspace(-1, 1, size // 4), indexing="ij")
    return torch.cat([pooled, xs[None, None], ys[None, None]], 1), torch.tensor([[x1, y1, x1 + side, y1 + side]],
                                                                              dtype=torch.float32)


def test_it_learns_to_propose_the_object() -> None:
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(3, strides=[4], anchor_sizes=[(8.0, 16.0)], batch_size_per_image=32,
                                post_nms_top_n=10)
    scenes = [_square_scene(x, y, s) for x, y, s in [(3, 5, 10), (16, 14, 12), (8, 18, 9), (20, 2, 8)]]
    features, gt = torch.cat([f for f, _ in scenes]), [b for _, b in scenes]

    def top_iou() -> float:  # recall at 3 proposals: the worst image's best IoU among its 3 top proposals
        with torch.no_grad():
            out = rpn([features], (32, 32))
        return min(float(box_iou(p[:3], g).max()) for p, g in zip(out.proposals, gt, strict=True))

    before = top_iou()
    optimizer = torch.optim.Adam(rpn.parameters(), lr=0.01)
    for _ in range(300):
        losses = rpn([features], (32, 32), gt).losses
        optimizer.zero_grad()
        (losses["rpn_objectness"] + losses["rpn_box"]).backward()
        optimizer.step()
    assert before < 0.5 and top_iou() > 0.7  # every image's square is among its 3 best proposals


def test_sample_rois_labels_by_iou_and_keeps_the_fraction() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with gt 0
                              [21.0, 21.0, 30.0, 30.0],  # 0.81 with gt 1
                              [0.0, 0.0, 5.0, 10.0],  # 0.5 with gt 0: foreground at fg_iou 0.5
                              [0.0, 0.0, 3.0, 10.0],  # 0.3: background
                              [40.0, 40.0, 50.0, 50.0]])  # 0: background
    (sample,) = sample_rois([proposals], [gt], batch_size_per_image=8, positive_fraction=0.75,
                            generator=torch.Generator().manual_seed(0))
    assert len(sample.boxes) == 7 and int(sample.positive.sum()) == 5  # 3 proposals + 2 gt boxes; 2 background
    iou = box_iou(sample.boxes, gt)
    assert torch.equal(iou.argmax(1)[sample.positive], sample.matched[sample.positive])
    assert bool((iou.max(1).values[sample.positive] >= 0.5).all())
    assert bool((iou.max(1).values[~sample.positive] < 0.5).all())
    (small,) = sample_rois([proposals], [gt], batch_size_per_image=4, positive_fraction=0.25, add_gt=False)
    assert int(small.positive.sum()) == 1 and len(small.boxes) == 3  # one positive; only 2 negatives exist
    (empty,) = sample_rois([proposals], [torch.zeros(0, 4)], batch_size_per_image=4)
    assert len(empty.boxes) == 4 and not bool(empty.positive.any())


def test_rois_with_batch_index() -> None:
    rois = rois_with_batch_index([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(1, 4)])
    assert torch.equal(rois[:, 0], torch.tensor([0.0, 0.0, 2.0])) and torch.equal(rois[2, 1:], 2 * torch.ones(4))
