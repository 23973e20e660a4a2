"""Mask R-CNN (He et al. 2017): mask targets on a hand-built case, the loss pieces on hand-built tensors, masks pasted
back into the image, the heads' shapes, config errors, that it learns to detect and segment in a bounded budget (with
its picture), and two gloo ranks through the loop's DDP path staying in sync."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.ddp_ranks import train_on_gloo_ranks
from trainables import registry
from trainables.boxes import encode_boxes
from trainables.context import LocalContext
from trainables.detection_data import load_detection_data
from trainables.loop import fit
from trainables.mask_rcnn import (
    MaskRcnnTask,
    box_head_loss,
    collate,
    mask_loss,
    mask_rcnn_losses,
    mask_targets,
    roi_labels,
)
from trainables.mask_rcnn_networks import BOX_WEIGHTS, ResNetFPN, fpn_levels, paste_masks
from trainables.registry import ConfigError
from trainables.rpn import RoiSample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"train_scenes": 16, "val_scenes": 6, "test_scenes": 6, "batch_size": 4, "epochs": 1}


# ------------------------------------------------------------------------------------------------- mask targets
def test_the_mask_target_is_the_gt_mask_roialigned_onto_the_roi() -> None:
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 8:16] = True  # gt 0: the left half of the box [8, 4, 24, 20]
    masks[1, 0:10, 0:10] = True  # gt 1 elsewhere (and beyond its RoI): must not leak into gt 0's RoIs
    sample = RoiSample(boxes=torch.tensor([[8.0, 4.0, 24.0, 20.0], [0.0, 4.0, 16.0, 20.0], [0.0, 0.0, 8.0, 8.0],
                                           [20.0, 20.0, 30.0, 30.0]]),
                       matched=torch.tensor([0, 0, 1, 0]), positive=torch.tensor([True, True, True, False]))
    targets = mask_targets([sample], [masks], size=28)
    assert targets.shape == (3, 28, 28)  # positives only, in order
    left = torch.zeros(28, 28)
    left[:, :14] = 1.0
    assert torch.equal(targets[0], left)  # RoI on the box: left half object, right half not
    assert torch.equal(targets[1], 1.0 - left)  # RoI shifted left by half: the object is its right half
    assert torch.equal(targets[2], torch.ones(28, 28))  # gt 1's RoI reads gt 1's mask, not gt 0's


# ------------------------------------------------------------------------------------------------- loss pieces
def test_box_head_loss_is_cross_entropy_plus_smooth_l1_of_the_gt_class_only() -> None:
    gt_boxes, gt_labels = [torch.tensor([[10.0, 10.0, 30.0, 40.0]])], [torch.tensor([2])]  # class 2: u = 3
    rois = torch.tensor([[12.0, 8.0, 30.0, 36.0], [40.0, 40.0, 60.0, 60.0]])
    sample = RoiSample(rois, torch.tensor([0, 0]), torch.tensor([True, False]))
    assert torch.equal(roi_labels([sample], gt_labels), torch.tensor([3, 0]))
    logits = torch.tensor([[0.1, 0.2, -0.3, 1.5, 0.0], [2.0, 0.0, 0.5, -1.0, 0.3]])
    v = encode_boxes(gt_boxes[0], rois[:1], BOX_WEIGHTS)[0]
    deltas = torch.full((2, 4, 4), 50.0)  # other classes' deltas (and the negative's) are far off: ignored
    deltas[0, 2] = v + torch.tensor([0.5, 0.0, -2.0, 0.0])  # smoothL1: 0.5 * 0.5^2 + (2 - 0.5) = 1.625
    loss_cls, loss_box = box_head_loss(logits, deltas, [sample], gt_boxes, gt_labels)
    expected_cls = -(F.log_softmax(logits, 1)[0, 3] + F.log_softmax(logits, 1)[1, 0]) / 2  # -log p_u, mean
    assert loss_cls.item() == pytest.approx(expected_cls.item(), rel=1e-6)
    assert loss_box.item() == pytest.approx(1.625 / 2, rel=1e-5)  # summed over positives / sampled RoIs


def test_mask_loss_is_the_bce_of_the_gt_class_channel_alone() -> None:
    logits = torch.full((2, 3, 2, 2), 9.0)  # channels of other classes are confidently wrong: must not count
    logits[0, 1] = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    logits[1, 2] = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    labels = torch.tensor([1, 2])

    def bce(s: float, y: float) -> float:  # -[y log sigma(s) + (1 - y) log(1 - sigma(s))]
        p = 1 / (1 + math.exp(-s))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    pairs = [(0.0, 1), (2.0, 0), (-1.0, 0), (3.0, 1), (1.0, 0), (-2.0, 0), (0.5, 1), (0.0, 1)]
    assert mask_loss(logits, targets, labels).item() == pytest.approx(sum(bce(s, y) for s, y in pairs) / 8)
    agnostic = logits[:, 1:2].clone()
    agnostic[1, 0] = logits[1, 2]
    assert mask_loss(agnostic, targets, labels).item() == pytest.approx(sum(bce(s, y) for s, y in pairs) / 8)
    empty = mask_loss(logits[:0].requires_grad_(), torch.zeros(0, 2, 2), labels[:0])
    assert empty.item() == 0.0 and empty.requires_grad


def test_pasted_masks_fill_their_boxes_and_fpn_levels_follow_box_size() -> None:
    boxes = torch.tensor([[3.0, 5.0, 17.0, 12.0], [20.0, 0.0, 32.0, 30.0]])
    pasted = paste_masks(torch.ones(2, 28, 28), boxes, 32, 40)
    for box, mask in zip(boxes.long(), pasted >= 0.5, strict=True):
        expected = torch.zeros(32, 40, dtype=torch.bool)
        expected[box[1]:box[3], box[0]:box[2]] = True
        assert torch.equal(mask, expected)
    half = torch.zeros(1, 28, 28)
    half[:, :, :14] = 1.0  # the left half of the mask: the left half of the box's pixels
    assert torch.equal((paste_masks(half, boxes[:1], 32, 40)[0] >= 0.5).nonzero()[:, 1].unique(),
                       torch.arange(3, 10))
    sides = torch.tensor([8.0, 23.0, 24.0, 47.0, 48.0, 200.0])
    level = fpn_levels(torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], 1), 3, 24.0, 1)
    assert level.tolist() == [0, 0, 1, 1, 2, 2]  # floor(1 + log2(side / 24)), clamped to the 3 levels


def test_the_resnet50_fpn_option_gives_four_levels_at_strides_4_to_32() -> None:
    backbone = ResNetFPN("resnet50", fpn_channels=16)
    assert backbone.strides == (4, 8, 16, 32)
    # torchvision's resnet50 has 25,557,032 parameters: less its fc (2,049,000) and stem (9,536), its four stages
    assert sum(p.numel() for p in backbone.stages.parameters()) == 23_498_496
    with torch.no_grad():
        levels = backbone.eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(p.shape) for p in levels] == [(1, 16, 16, 24), (1, 16, 8, 12), (1, 16, 4, 6), (1, 16, 2, 3)]


def test_a_training_pass_has_every_loss_and_detection_has_the_documented_shapes() -> None:
    config = registry.get("mask_rcnn").resolve({**TINY, "roi_op": "pool", "class_agnostic_masks": True})
    task = MaskRcnnTask(load_detection_data(config), config)
    torch.manual_seed(0)
    model = task.build_models()["mask_rcnn"]
    batch = collate(task.data.train[:3], torch.device("cpu"))
    losses = mask_rcnn_losses(model(batch.images, batch.boxes), batch.boxes, batch.labels, batch.masks)
    assert sorted(losses) == ["loss_box", "loss_cls", "loss_mask", "loss_rpn_box", "loss_rpn_cls"]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), abs=0.05)  # near-zero logits at the start
    sum(losses.values()).backward()
    assert model.mask_head.logits.weight.shape[0] == 1 and model.mask_head.logits.weight.grad.abs().sum() > 0
    model.eval()
    detections = model.detect(batch.images, score_thresh=0.0, max_detections=5)
    for d in detections:
        assert d["boxes"].shape[0] == d["scores"].shape[0] == d["masks"].shape[0] <= 5
        assert d["masks"].shape[1:] == (64, 64) and ((d["masks"] >= 0) & (d["masks"] <= 1)).all()


# ------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("overrides", "message"), [
    ({"roi_op": "warp"}, "roi_op='warp' is not one of 'align', 'pool'"),
    ({"backbone": "resnet18"}, "backbone='resnet18' is not one of"),
    ({"image_size": 32}, "image_size=32 is out of range"),
    ({"roi_positive_fraction": 0.0}, "roi_positive_fraction=0.0 is out of range"),
    ({"dataset": "cifar10"}, "dataset='cifar10' is not one of 'scenes', 'coco'"),
])
def test_bad_config_values_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        registry.get("mask_rcnn").resolve(overrides)
    assert "\n" not in str(info.value)


def test_mask_rcnn_is_registered_with_its_metrics() -> None:
    spec = registry.get("mask_rcnn")
    assert registry.TRAINABLE_MODULES["mask_rcnn"] == "trainables.mask_rcnn" and spec.primary == "val_mask_ap"
    for split in ("val", "test"):
        for metric in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"):
            assert spec.mode(f"{split}_{metric}") == "max"
    assert spec.mode("train_loss_mask") == "min" and spec.mode("train_loss_rpn_cls") == "min"


# ------------------------------------------------------------------------------------------------------ learns
@pytest.mark.slow  # about 50 s on a quiet 2-core CPU, 2.5 to 4 minutes while other trainings load it
def test_mask_rcnn_learns_to_detect_and_segment_in_a_bounded_budget(tmp_path: Path) -> None:
    """60 steps of batch 8: box and mask AP rise from the untrained model's (about 0.0001) to well above it, the
    losses of the RPN's objectness, the classifier and the masks fall, and the picture is written. Measured (seed 1,
    these 40 val / 20 test scenes): val mask AP 0.232, box AP 0.252, val mask AP50 0.451, test mask AP 0.219."""
    spec = registry.get("mask_rcnn")
    config = spec.resolve({"train_scenes": 240, "val_scenes": 40, "test_scenes": 20, "epochs": 2, "seed": 1})
    data = load_detection_data(config)
    untrained = MaskRcnnTask(data, config)
    torch.manual_seed(config["seed"])
    untrained.models = untrained.build_models()  # the weights fit() starts from (same seed)
    before = untrained.score(data.val, torch.device("cpu"))
    task = MaskRcnnTask(data, config)
    ctx = LocalContext(checkpoint_root=str(tmp_path / "ckpt"))
    fit(ctx, config, task)
    first, last = ctx.results
    assert last["step"] == 60
    assert before["mask_ap"] < 0.02 and before["box_ap"] < 0.02, before
    assert last["val_mask_ap"] > before["mask_ap"] + 0.1 and last["val_box_ap"] > before["box_ap"] + 0.1, last
    assert last["test_mask_ap"] > 0.08 and last["val_mask_ap50"] > 0.25, last
    for name in ("loss_rpn_cls", "loss_cls", "loss_mask"):  # (loss_box may rise: more proposals become positive)
        assert last[f"train_{name}"] < first[f"train_{name}"], name
    task.write_artifacts(str(tmp_path / "art"))
    assert (tmp_path / "art" / "detections.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------- DDP
def test_two_gloo_ranks_train_in_sync_through_the_loops_ddp_path(tmp_path: Path) -> None:
    """Each rank trains on its own shard through DDP (the model is reached through ``.module`` wherever the task
    needs the bare network: detection, artifacts); after every epoch both hold bit-identical weights. (Their val
    scores may differ slightly: BatchNorm's running statistics are rank-local between DDP's buffer broadcasts.)"""
    ranks = train_on_gloo_ranks("mask_rcnn", {**TINY, "epochs": 2, "limit_train_batches": 2}, tmp_path)
    assert [r["replicas_in_sync"] for r in ranks[0]] == [1.0, 1.0]
    assert ranks[0][-1]["step"] == 4 and 0.0 <= ranks[0][-1]["val_mask_ap"] <= 1.0
    assert ranks[0][-1]["train_loss"] == ranks[1][-1]["train_loss"]  # the epoch's mean over both ranks' shards
