"""DenseCap's data: images with captioned regions, from generated scenes or from Visual Genome on a local path.

- ``scenes``: :func:`trainables.scenes.make_scenes`; every region has a caption from a small grammar ("a small red
  square", "a small red square left of a large blue circle"), so a caption can be checked word by word. Train, val
  and test scenes are drawn with different seeds (disjoint), each a function of (``split_seed``, index).
  ``region_captions``: "objects" (one region per object) or "all" (also the pairwise relation regions).
- ``visual_genome``: ``data_dir`` holds ``region_descriptions.json`` (Visual Genome v1.2: a list of
  {"id": image id, "regions": [{"x", "y", "width", "height", "phrase", ...}]}) and the images as ``<id>.jpg`` in
  ``images/``, ``VG_100K/`` or ``VG_100K_2/``. The first ``max_images`` images (by id) are split every tenth image to
  test, the next to val, the rest to train (DenseCap used its own split file). Images are resized so the longest side
  is ``image_size`` and padded at the bottom / right; phrases longer than ``max_words`` words are dropped (as the
  paper drops long ones), at most ``max_regions`` regions per image are kept. Nothing is downloaded: a missing or
  unreadable file is one :class:`DatasetError` line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.captions import Vocabulary, tokenize
from trainables.data_formats import DatasetError
from trainables.scenes import make_scenes

DATASETS = ("scenes", "visual_genome")
VG_ANNOTATIONS = "region_descriptions.json"
VG_IMAGE_FOLDERS = ("images", "VG_100K", "VG_100K_2")
_SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class CaptionedImages:
    """``images`` uint8 (N, 3, S, S); per image ``boxes`` float32 (G_i, 4) xyxy (x2/y2 exclusive) and ``captions``."""

    images: Tensor
    boxes: list[Tensor]
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class DenseCapData:
    train: CaptionedImages
    val: CaptionedImages
    test: CaptionedImages
    vocab: Vocabulary


def load_densecap_data(config: Mapping[str, Any]) -> DenseCapData:
    """The splits and the vocabulary (built from the training captions) that ``config`` names."""
    if config["dataset"] == "scenes":
        splits = {name: scene_split(config, name) for name in ("train", "val", "test")}
    elif config["dataset"] == "visual_genome":
        splits = read_visual_genome(config["data_dir"], config["image_size"], config["max_images"],
                                    config["max_words"], config["max_regions"])
    else:
        raise DatasetError(f"unknown DenseCap dataset {config['dataset']!r}; choose one of {', '.join(DATASETS)}")
    vocab = Vocabulary.build((c for caps in splits["train"].captions for c in caps), config["min_word_count"])
    return DenseCapData(splits["train"], splits["val"], splits["test"], vocab)


def scene_split(config: Mapping[str, Any], split: str) -> CaptionedImages:
    """``{split}_images`` generated scenes (seed = a function of ``split_seed`` and the split)."""
    seed = 1_000 * int(config["split_seed"]) + _SPLIT_SEEDS[split]
    scenes = make_scenes(int(config[f"{split}_images"]), seed, size=int(config["image_size"]),
                         max_objects=int(config["max_objects"]), split=split)
    relations = config["region_captions"] == "all"
    boxes, captions = [], []
    for scene in scenes:
        regions = [r for r in scene.regions if relations or len(r.objects) == 1]
        boxes.append(torch.tensor([r.box for r in regions], dtype=torch.float32).reshape(-1, 4))
        captions.append([r.caption for r in regions])
    images = torch.from_numpy(np.stack([s.image for s in scenes]))
    return CaptionedImages(images, boxes, captions)


def check_visual_genome(data_dir: str | None) -> None:
    """Fail fast (before any trial) when the Visual Genome files are not where ``data_dir`` says."""
    if not data_dir:
        raise DatasetError("dataset visual_genome needs data_dir: a folder with region_descriptions.json and images/")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"Visual Genome folder {data_dir!r} does not exist")
    if not os.path.isfile(os.path.join(data_dir, VG_ANNOTATIONS)):
        raise DatasetError(f"Visual Genome: missing {VG_ANNOTATIONS} in {data_dir!r} (from visualgenome.org, v1.2)")
    if not any(os.path.isdir(os.path.join(data_dir, f)) for f in VG_IMAGE_FOLDERS):
        raise DatasetError(f"Visual Genome: no image folder ({', '.join(VG_IMAGE_FOLDERS)}) in {data_dir!r}")


def read_visual_genome(data_dir: str | None, image_size: int, max_images: int, max_words: int,
                       max_regions: int) -> dict[str, CaptionedImages]:
    """Train / val / test of the module docstring's Visual Genome reader."""
    check_visual_genome(data_dir)
    assert data_dir is not None
    path = os.path.join(data_dir, VG_ANNOTATIONS)
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
        records = sorted(((int(e["id"]), e["regions"]) for e in entries), key=lambda r: r[0])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"Visual Genome: {path} is not a readable region_descriptions.json "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    per_split: dict[str, list[tuple[Tensor, Tensor, list[str]]]] = {"train": [], "val": [], "test": []}
    for index, (image_id, regions) in enumerate(records[:max_images]):
        image, scale = _read_image(data_dir, image_id, image_size)
        boxes, captions = _regions(regions, scale, image_size, max_words, max_regions, path)
        split = "test" if index % 10 == 0 else "val" if index % 10 == 1 else "train"
        per_split[split].append((image, boxes, captions))
    if not per_split["train"]:
        raise DatasetError(f"Visual Genome: no images listed in {path}")
    return {name: CaptionedImages(torch.stack([i for i, _, _ in items]) if items else
                                  torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8),
                                  [b for _, b, _ in items], [c for _, _, c in items])
            for name, items in per_split.items()}


def _read_image(data_dir: str, image_id: int, size: int) -> tuple[Tensor, float]:
    """uint8 (3, size, size): the image resized to longest side ``size``, zero-padded; and the scale factor."""
    from PIL import Image, UnidentifiedImageError

    file = next((os.path.join(data_dir, f, f"{image_id}.jpg") for f in VG_IMAGE_FOLDERS
                 if os.path.isfile(os.path.join(data_dir, f, f"{image_id}.jpg"))), None)
    if file is None:
        raise DatasetError(f"Visual Genome: image {image_id}.jpg is missing from {data_dir!r} "
                           f"({', '.join(VG_IMAGE_FOLDERS)})")
    try:
        with Image.open(file) as picture:
            picture = picture.convert("RGB")
            scale = size / max(picture.size)
            resized = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                     Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"Visual Genome: cannot read image {file} ({type(err).__name__})") from None
    out = torch.zeros(3, size, size, dtype=torch.uint8)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
    out[:, :pixels.shape[1], :pixels.shape[2]] = pixels
    return out, scale


def _regions(regions: Sequence[Mapping[str, Any]], scale: float, size: int, max_words: int, max_regions: int,
             path: str) -> tuple[Tensor, list[str]]:
    boxes, captions = [], []
    try:
        for region in regions:
            words = tokenize(str(region["phrase"]))
            if not words or len(words) > max_words:
                continue
            x, y, w, h = (float(region[k]) * scale for k in ("x", "y", "width", "height"))
            box = [max(0.0, x), max(0.0, y), min(float(size), x + w), min(float(size), y + h)]
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                boxes.append(box)
                captions.append(" ".join(words))
            if len(boxes) == max_regions:
                break
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"Visual Genome: a region in {path} lacks x, y, width, height or phrase "
                           f"({type(err).__name__}: {err})") from None
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), captions
