"""Instance-segmentation data for Mask R-CNN: generated scenes (:mod:`trainables.scenes`) or a COCO folder.

A sample is a :class:`Instances`: the image uint8 (3, H, W), boxes float32 (K, 4) xyxy with x2/y2 exclusive
(:mod:`trainables.boxes`' convention), labels int64 (K,) 0-based, masks bool (K, H, W). Every split is a sequence
of samples (``len`` and ``[i]``), so the task never knows where they came from.

* ``dataset="scenes"``: ``train_scenes`` / ``val_scenes`` / ``test_scenes`` generated scenes, each split from its own
  seed (a function of ``split_seed``: the same data for every training seed) and, with digits, from its own
  MNIST-5k split. Held in memory (a few hundred 64-px scenes).
* ``dataset="coco"``: ``data_dir/annotations/instances_{train,val}.json`` with images in ``data_dir/{train,val}/``
  (COCO's layout, renamed splits: link ``train2017`` to ``train``). Training uses train less ``val_images`` images
  held out by a seeded draw (model selection); ``test`` is COCO's val. Images are decoded when a batch asks for them.
  Segmentations: polygons (rasterised with Pillow), uncompressed RLE and compressed RLE strings (decoded here:
  pycocotools is not installed in this environment, and both formats are a few lines); crowd annotations are
  skipped, as COCO's training does. Category ids map to labels in increasing id order.

A missing or unreadable folder, file or annotation is one :class:`DetectionDataError` line, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.scenes import CLASSES, decode_rle, make_scenes

DATASETS = ("scenes", "coco")
COCO_SPLITS = ("train", "val")


class DetectionDataError(ValueError):
    """The user's detection data is missing or corrupt; the message is one readable line."""


@dataclass(frozen=True, eq=False)
class Instances:
    """One image and its objects (see the module docstring for shapes and conventions)."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class DetectionData:
    train: Sequence[Instances]
    val: Sequence[Instances]
    test: Sequence[Instances]
    classes: tuple[str, ...]


def scene_instances(n: int, seed: int, size: int, max_objects: int, digit_prob: float,
                    split: str) -> list[Instances]:
    """``n`` generated scenes as :class:`Instances` (boxes, labels and masks straight from the scene)."""
    return [Instances(torch.from_numpy(s.image.copy()), torch.from_numpy(s.boxes.copy()),
                      torch.from_numpy(s.labels.copy()), torch.from_numpy(s.masks.copy()))
            for s in make_scenes(n, seed, size, max_objects, digit_prob, split)]


def decode_compressed_rle(counts: str, height: int, width: int) -> np.ndarray:
    """COCO's compressed RLE string (pycocotools' ``rleFrString``): each count in 5-bit groups, 6 bits a char
    (offset 48), bit 0x20 = more groups follow, bit 0x10 of the last group = negative; counts after the second are
    deltas from the count two before."""
    values: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(values) > 2:
            x += values[-2]
        values.append(x)
    return decode_rle({"counts": values, "size": [height, width]})


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool (H, W) mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...] in pixel-edge coordinates
        from PIL import Image, ImageDraw

        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2], strict=True)],
                             fill=1)
        return np.array(canvas, dtype=bool)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        mask = decode_rle(segmentation)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        h, w = segmentation["size"]
        mask = decode_compressed_rle(segmentation["counts"], h, w)
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    if mask.shape != (height, width):
        raise ValueError(f"mask of size {mask.shape} on a {height}x{width} image")
    return mask


class CocoSplit(Sequence):
    """The images of one COCO annotation file (optionally a subset), decoded on access."""

    def __init__(self, data_dir: Path, split: str, image_ids: list[int] | None = None,
                 annotations: dict[str, Any] | None = None) -> None:
        self.folder = data_dir / split
        self.coco = annotations if annotations is not None else read_annotations(data_dir, split)
        self.images = {img["id"]: img for img in self.coco["images"]}
        self.ids = image_ids if image_ids is not None else sorted(self.images)
        cat_ids = sorted(c["id"] for c in self.coco["categories"])
        self.label_of = {cid: i for i, cid in enumerate(cat_ids)}
        self.by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in self.coco["annotations"]:
            self.by_image.setdefault(ann["image_id"], []).append(ann)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Instances:  # type: ignore[override]
        info = self.images[self.ids[index]]
        path = self.folder / info["file_name"]
        try:
            from PIL import Image

            with Image.open(path) as picture:
                image = np.array(picture.convert("RGB"))
            h, w = image.shape[:2]
            boxes, labels, masks = [], [], []
            for ann in self.by_image.get(info["id"], []):
                if ann.get("iscrowd", 0):
                    continue
                mask = decode_segmentation(ann["segmentation"], h, w)
                if not mask.any():
                    continue
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                boxes.append([x, y, x + bw, y + bh])
                labels.append(self.label_of[ann["category_id"]])
                masks.append(mask)
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise DetectionDataError(f"COCO image {path} or its annotations are unreadable: "
                                     f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
        return Instances(torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                         torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         torch.tensor(labels, dtype=torch.int64),
                         torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool))


def annotation_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / "annotations" / f"instances_{split}.json"


def check_coco_folder(data_dir: str | Path | None) -> None:
    """Raise :class:`DetectionDataError` unless ``data_dir`` has both annotation files and both image folders."""
    if not data_dir:
        raise DetectionDataError("dataset='coco' needs data_dir: a folder with annotations/instances_train.json, "
                                 "annotations/instances_val.json, train/ and val/")
    for split in COCO_SPLITS:
        if not annotation_path(data_dir, split).is_file():
            raise DetectionDataError(f"COCO annotations missing: {annotation_path(data_dir, split)} is not a file")
        if not (Path(data_dir) / split).is_dir():
            raise DetectionDataError(f"COCO images missing: {Path(data_dir) / split} is not a folder")


def read_annotations(data_dir: str | Path, split: str) -> dict[str, Any]:
    path = annotation_path(data_dir, split)
    try:
        with open(path) as f:
            coco = json.load(f)
        for key in ("images", "annotations", "categories"):
            if not isinstance(coco[key], list):
                raise TypeError(f"'{key}' is not a list")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DetectionDataError(f"COCO annotations {path} are unreadable: {type(err).__name__}: "
                                 f"{' '.join(str(err).split())[:200]}") from None
    return coco


def load_coco(data_dir: str | Path, val_images: int, split_seed: int, max_images: int = 0) -> DetectionData:
    """COCO train less ``val_images`` held-out images (val), and COCO val (test); ``max_images`` > 0 caps each."""
    check_coco_folder(data_dir)
    root = Path(data_dir)
    train_coco = read_annotations(root, "train")
    ids = sorted(img["id"] for img in train_coco["images"])
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(split_seed)).tolist()
    held = [ids[i] for i in order[:val_images]]
    kept = [ids[i] for i in sorted(order[val_images:])]
    test = CocoSplit(root, "val")
    if max_images > 0:
        kept, held = kept[:max_images], held[:max_images]
        test = CocoSplit(root, "val", test.ids[:max_images], test.coco)
    names = tuple(c["name"] for c in sorted(train_coco["categories"], key=lambda c: c["id"]))
    return DetectionData(CocoSplit(root, "train", kept, train_coco), CocoSplit(root, "train", held, train_coco),
                         test, names)


def load_detection_data(config: dict[str, Any]) -> DetectionData:
    """The splits ``config`` names (see the module docstring)."""
    if config["dataset"] == "coco":
        return load_coco(config["data_dir"], config["val_images"], config["split_seed"], config["max_images"])
    base = 1_000 * int(config["split_seed"])
    args = (config["image_size"], config["max_objects"], config["digit_prob"])
    return DetectionData(scene_instances(config["train_scenes"], base + 1, *args, "train"),
                         scene_instances(config["val_scenes"], base + 2, *args, "val"),
                         scene_instances(config["test_scenes"], base + 3, *args, "test"), CLASSES)


__all__ = ["DATASETS", "DetectionData", "DetectionDataError", "Instances", "check_coco_folder",
           "decode_compressed_rle", "decode_segmentation", "load_detection_data", "scene_instances"]
