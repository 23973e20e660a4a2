"""DenseCap (Johnson, Karpathy & Fei-Fei 2016, "DenseCap: Fully Convolutional Localization Networks for Dense
Captioning", arXiv:1511.07571): find the regions of an image and caption each, trained end to end.

The model (:class:`trainables.densecap_networks.DenseCapModel`): CNN -> localization layer (anchors scored and
regressed, sec. 3.1.2; proposals after NMS; B regions per image sampled, up to half positive: IoU >= 0.7 with a
ground-truth region, negative < 0.3; their features interpolated to a fixed X x Y grid) -> recognition network
(region code, final confidence, final box) -> LSTM language model conditioned on the region code. Deviation: the
regions are sampled from the proposals plus the ground-truth boxes (Faster R-CNN's second stage,
:func:`trainables.rpn.sample_rois`), not from the transformed anchors themselves as in the paper.

The loss, sec. 3.4: five terms; weights 0.1 for the four detection terms and 1.0 for the captions (our reading of
the paper; both are config keys):

    L = w_det (L_obj^loc + L_box^loc + L_obj^rec + L_box^rec) + w_cap L_cap
    L_obj = 1/R sum_r BCE(s_r, [r positive])                  binary logistic confidence (both layers)
    L_box = 1/R sum_{r positive} smoothL1(t_r - t*_r)         t* = encode_boxes(gt box, region), Fast R-CNN eq. 2
    L_cap = -1/W sum_{r positive} sum_t log p(w_{t+1} | region code, w_1..w_t)   over the W words and <end>

The paper's ablation, ``region_features``: "bilinear" (the bilinear sampler: RoIAlign with one sample per output
cell) or "roipool" (Fast R-CNN's RoIPool: box edges and bins rounded to the feature grid, max in each bin).

Evaluation (:mod:`trainables.captions`): the dense-captioning mAP over IoU x caption-similarity thresholds, with
greedy (``{split}_dense_map``) and beam-search captions (``_beam``), at stricter similarity thresholds
(``_strict``, see STRICT_SIMILARITY_THRESHOLDS), the detection-only mAP, and captions of the
ground-truth boxes (exact-match accuracy, similarity; on scenes also each attribute of an object caption).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.captions import Vocabulary, dense_captioning_map, meteor_lite
from trainables.context import Context, unwrap
from trainables.data_formats import DatasetError
from trainables.densecap_data import DATASETS, CaptionedImages, check_visual_genome, load_densecap_data
from trainables.densecap_networks import DenseCapModel, RegionBatch
from trainables.image_grid import BOX_COLOURS
from trainables.loop import LOOP_PATHS, LOOP_USER_ERRORS, fit
from trainables.optim import OPTIM_DEFAULTS, validate_optim_config
from trainables.registry import ConfigError, as_config_error, check_choice, check_range, register
from trainables.task import Task

# The paper's METEOR thresholds (0 .. 0.25) suit METEOR on free text, where even a human caption scores about 0.3;
# on captions of one small grammar, sharing "a" already scores 0.125. So we also report the mAP over thresholds at
# which a caption must be mostly right: one wrong word of four ("a small red square" for "a small blue square")
# scores 0.64, two wrong words 0.25.
STRICT_SIMILARITY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SPLITS = ("val", "test")
ATTRIBUTES = ("size", "colour", "shape")  # words 2, 3, 4 of an object caption "a small red square"
DENSECAP_METRICS: dict[str, str] = {
    **{f"{s}_{m}": "max" for s in SPLITS for m in (
        "dense_map", "dense_map_beam", "dense_map_strict", "det_map", "caption_accuracy", "caption_accuracy_beam",
        "caption_similarity",
        *(f"{a}_accuracy" for a in ATTRIBUTES))},
    "train_loss": "min", "train_caption_loss": "min"}

DENSECAP_DEFAULTS: dict[str, Any] = {
    **OPTIM_DEFAULTS, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "constant",
    "dataset": "scenes", "data_dir": None, "split_seed": 0, "epochs": 6, "batch_size": 16, "seed": 0,
    "limit_train_batches": 0,
    # data: scenes (image_size 64..128) or Visual Genome from data_dir
    "image_size": 64, "max_objects": 3, "region_captions": "all", "train_images": 2000, "val_images": 100,
    "test_images": 100, "max_images": 10_000, "max_words": 10, "max_regions": 50, "min_word_count": 1,
    # networks
    "cnn_width": 64, "stride": 8, "region_size": 7, "region_features": "bilinear", "sampling_ratio": 1,
    "code_size": 256, "embed_size": 64, "hidden_size": 256, "dropout": 0.0,
    # localization layer: anchors (pixels of the input image), proposals, sampled regions
    "anchor_sizes": [12.0, 24.0, 48.0], "anchor_ratios": [0.5, 1.0, 2.0], "rpn_batch": 128,
    "pre_nms_proposals": 1000, "train_proposals": 200, "test_proposals": 100, "proposal_nms": 0.7,
    "regions_per_image": 64, "positive_fraction": 0.5, "fg_iou": 0.7, "bg_iou": 0.3,
    "final_nms": 0.5, "detections_per_image": 20,
    # loss and decoding
    "detection_weight": 0.1, "caption_weight": 1.0, "beam_size": 3, "eval_batch": 50,
}


def densecap_loss(out: RegionBatch, detection_weight: float, caption_weight: float) -> dict[str, torch.Tensor]:
    """The module docstring's five-term loss; returns every term and their weighted sum ``loss``."""
    sampled = max(len(out.confidence), 1)  # R
    rec_obj = F.binary_cross_entropy_with_logits(out.confidence, out.positive.float())  # 1/R sum BCE(s_r, [r pos])
    rec_box = F.smooth_l1_loss(out.deltas, out.target_deltas, reduction="sum") / sampled  # 1/R sum smoothL1(t - t*)
    words = out.words.reshape(-1)
    caption = (F.cross_entropy(out.word_logits.reshape(len(words), -1), words, ignore_index=Vocabulary.PAD)
               if bool((words != Vocabulary.PAD).any()) else out.word_logits.sum() * 0.0)  # -1/W sum log p(w)
    detection = (out.rpn_losses["rpn_objectness"] + out.rpn_losses["rpn_box"] + rec_obj + rec_box)
    return {"loss": detection_weight * detection + caption_weight * caption, "caption_loss": caption,
            "loc_objectness": out.rpn_losses["rpn_objectness"], "loc_box": out.rpn_losses["rpn_box"],
            "rec_objectness": rec_obj, "rec_box": rec_box}


class DenseCapTask(Task):
    """DenseCap on the common loop: one model, one optimizer (the loop runs backward and the step)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.data = load_densecap_data(config)
        self.vocab = self.data.vocab
        self.train_words = [self.vocab.encode_batch(c, config["max_words"]) for c in self.data.train.captions]
        self.showcase: list[dict[str, Any]] = []

    def build_models(self) -> dict[str, nn.Module]:
        return {"densecap": DenseCapModel(self.config, len(self.vocab))}

    def train_batches(self, ctx: Context, epoch: int) -> Iterator[dict[str, Any]]:
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(
            1_000_003 * self.config["seed"] + 7_919 * epoch + ctx.rank))[ctx.rank::ctx.world_size]
        size = self.config["batch_size"]
        for start in range(0, len(order), size):
            index = order[start:start + size].tolist()
            yield {"images": _floats(self.data.train.images[index], ctx.device),
                   "boxes": [self.data.train.boxes[i].to(ctx.device) for i in index],
                   "words": [self.train_words[i].to(ctx.device) for i in index]}

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["images"])

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        out = self.models["densecap"](batch["images"], batch["boxes"], batch["words"])
        terms = densecap_loss(out, self.config["detection_weight"], self.config["caption_weight"])
        return {name: value if name == "loss" else value.detach() for name, value in terms.items()}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name in SPLITS:
            scores = self.score(getattr(self.data, name), ctx.device, showcase=name == "val")
            metrics.update({f"{name}_{key}": value for key, value in scores.items()})
        return metrics

    def _words(self, model: DenseCapModel, code: torch.Tensor, beam: int) -> list[str]:
        return [self.vocab.decode(t) for t in model.caption(code, self.config["max_words"], beam).tolist()]

    @torch.no_grad()
    def score(self, split: CaptionedImages, device: torch.device, showcase: bool = False) -> dict[str, float]:
        """Dense mAP (greedy and beam captions), detection mAP, and captions of the ground-truth boxes."""
        model = unwrap(self.models["densecap"])
        was_training = model.training
        model.eval()
        greedy, beam, targets = [], [], []
        on_gt: dict[str, list[tuple[str, str]]] = {"greedy": [], "beam": []}
        chunk, k = self.config["eval_batch"], self.config["beam_size"]
        for start in range(0, len(split), chunk):
            images = _floats(split.images[start:start + chunk], device)
            gt = [b.to(device) for b in split.boxes[start:start + chunk]]
            found = model.detect(images)
            codes = torch.cat(found.codes)
            sizes = [len(b) for b in found.boxes]
            for decoded, into in ((self._words(model, codes, 1), greedy), (self._words(model, codes, k), beam)):
                at = 0
                for boxes, scores, n in zip(found.boxes, found.scores, sizes, strict=True):
                    into.append({"boxes": boxes.cpu(), "scores": scores.cpu(), "captions": decoded[at:at + n]})
                    at += n
            gt_codes = model.region_codes(model.cnn(images), gt)[0]
            truth = [c for caps in split.captions[start:start + chunk] for c in caps]
            for name, beam_size in (("greedy", 1), ("beam", k)):
                on_gt[name] += list(zip(self._words(model, gt_codes, beam_size), truth, strict=True))
            targets += [{"boxes": b, "captions": c} for b, c in zip(split.boxes[start:start + chunk],
                                                                     split.captions[start:start + chunk],
                                                                     strict=True)]
        model.train(was_training)
        if showcase:
            self.showcase = [{"image": split.images[i], "truth": targets[i], "pred": greedy[i]}
                             for i in range(min(8, len(split)))]
        dense, dense_beam = dense_captioning_map(greedy, targets), dense_captioning_map(beam, targets)
        pairs = on_gt["greedy"]
        strict = dense_captioning_map(greedy, targets, similarity_thresholds=STRICT_SIMILARITY_THRESHOLDS)
        out = {"dense_map": dense["map"], "dense_map_beam": dense_beam["map"], "det_map": dense["det_map"],
               "dense_map_strict": strict["map"],
               "caption_accuracy": _mean([p == t for p, t in pairs]),
               "caption_accuracy_beam": _mean([p == t for p, t in on_gt["beam"]]),
               "caption_similarity": _mean([meteor_lite(p, t) for p, t in pairs])}
        if self.config["dataset"] == "scenes":  # object captions "a <size> <colour> <shape>": each word checked
            objects = [(p.split(), t.split()) for p, t in pairs if len(t.split()) == 4]
            for i, attribute in enumerate(ATTRIBUTES, start=1):
                out[f"{attribute}_accuracy"] = _mean([len(p) > i and p[i] == t[i] for p, t in objects])
        return out

    def write_artifacts(self, directory: str) -> None:
        """``val_predictions.png`` (val images with their 5 best boxes and greedy captions) and
        ``val_captions.md`` (every detection's caption and score beside the ground truth)."""
        if self.showcase:
            write_prediction_png(self.showcase, os.path.join(directory, "val_predictions.png"))
            write_caption_markdown(self.showcase, os.path.join(directory, "val_captions.md"))


def write_prediction_png(showcase: list[dict[str, Any]], path: str, shown: int = 5, scale: int = 4) -> None:
    """Each image enlarged ``scale`` times with its ``shown`` best boxes, their captions listed below in the box's
    colour; four images a row. Pillow draws (matplotlib would cost a figure per image)."""
    from PIL import Image, ImageDraw

    size = showcase[0]["image"].shape[-1] * scale
    cell_h, columns = size + 12 * shown + 8, min(4, len(showcase))
    rows = -(-len(showcase) // columns)
    canvas = Image.new("RGB", (columns * (size + 8), rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, item in enumerate(showcase):
        left, top = (i % columns) * (size + 8), (i // columns) * cell_h
        picture = Image.fromarray(item["image"].permute(1, 2, 0).numpy()).resize((size, size), Image.NEAREST)
        canvas.paste(picture, (left, top))
        pred = item["pred"]
        for j in range(min(shown, len(pred["captions"]))):
            x1, y1, x2, y2 = (float(v) * scale for v in pred["boxes"][j])
            colour = BOX_COLOURS[j % len(BOX_COLOURS)]
            draw.rectangle([left + x1, top + y1, left + x2, top + y2], outline=colour, width=2)
            draw.text((left + 2, top + size + 4 + 12 * j), f"{float(pred['scores'][j]):.2f} {pred['captions'][j]}",
                      fill=colour)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)


def write_caption_markdown(showcase: list[dict[str, Any]], path: str) -> None:
    """Per image: the ground-truth captions, then each detection's score, box and greedy caption."""
    lines = ["# DenseCap: val images, greedy captions", ""]
    for i, item in enumerate(showcase):
        lines += [f"## val image {i}", "", "ground truth: " + "; ".join(item["truth"]["captions"]), "",
                  "| score | box (x1, y1, x2, y2) | caption |", "|---|---|---|"]
        pred = item["pred"]
        for box, score, caption in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["captions"],
                                       strict=True):
            lines.append(f"| {score:.3f} | {', '.join(f'{v:.0f}' for v in box)} | {caption} |")
        lines.append("")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def _floats(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device).float() / 255.0


def _mean(values: list[bool] | list[float]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def validate_densecap(config: dict[str, Any]) -> None:
    check_choice(config, "dataset", DATASETS)
    check_choice(config, "region_features", ("bilinear", "roipool"))
    check_choice(config, "region_captions", ("objects", "all"))
    check_choice(config, "stride", (4, 8, 16))
    for key in ("epochs", "batch_size", "train_images", "val_images", "test_images", "max_images", "max_words",
                "max_regions", "min_word_count", "cnn_width", "region_size", "sampling_ratio", "code_size",
                "embed_size", "hidden_size", "rpn_batch", "pre_nms_proposals", "train_proposals", "test_proposals",
                "regions_per_image", "detections_per_image", "beam_size", "eval_batch", "max_objects"):
        check_range(config, key, 1)
    check_range(config, "limit_train_batches", 0)
    if config["dataset"] == "scenes":
        check_range(config, "image_size", 64, 128)
    else:
        check_range(config, "image_size", 32)
    for key in ("fg_iou", "bg_iou", "proposal_nms", "final_nms", "positive_fraction"):
        check_range(config, key, 0.0, 1.0, low_open=True)
    if config["bg_iou"] > config["fg_iou"]:
        raise ConfigError(f"bg_iou={config['bg_iou']} must not exceed fg_iou={config['fg_iou']}")
    check_range(config, "dropout", 0.0, 1.0, high_open=True)
    for key in ("detection_weight", "caption_weight"):
        check_range(config, key, 0.0)
    if not config["anchor_sizes"] or not config["anchor_ratios"] or min(
            config["anchor_sizes"] + config["anchor_ratios"]) <= 0:
        raise ConfigError("anchor_sizes and anchor_ratios must be nonempty lists of positive numbers")
    validate_optim_config(config)
    if config["dataset"] == "visual_genome":
        with as_config_error(DatasetError):
            check_visual_genome(config["data_dir"])


@register("densecap", defaults=DENSECAP_DEFAULTS, validate=validate_densecap, metrics=DENSECAP_METRICS,
          primary="val_dense_map", user_errors=(*LOOP_USER_ERRORS, DatasetError), paths=LOOP_PATHS)
def train_densecap(config: dict[str, Any], ctx: Context) -> None:
    """DenseCap (Johnson et al. 2016): localize and caption regions end to end, dense-captioning mAP."""
    fit(ctx, config, DenseCapTask(config))
