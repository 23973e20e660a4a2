"""Detection data for Mask R-CNN: generated scenes become the targets they were drawn with, a COCO folder written
from scenes reads back equal (uncompressed RLE, compressed RLE and polygons decoded), and missing or corrupt folders
are one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import registry
from trainables.detection_data import (
    DetectionDataError,
    decode_compressed_rle,
    decode_segmentation,
    load_coco,
    load_detection_data,
    scene_instances,
)
from trainables.registry import ConfigError
from trainables.scenes import encode_rle, make_scenes, tight_box, to_coco


def test_scenes_become_their_own_targets() -> None:
    scenes = make_scenes(12, seed=5, max_objects=4)
    samples = scene_instances(12, 5, 64, 4, 0.0, "train")
    for scene, sample in zip(scenes, samples, strict=True):
        assert torch.equal(sample.image, torch.from_numpy(scene.image)) and sample.image.dtype == torch.uint8
        assert torch.equal(sample.labels, torch.from_numpy(scene.labels))
        assert sample.masks.dtype == torch.bool and sample.masks.shape == (len(scene.labels), 64, 64)
        assert torch.equal(sample.masks, torch.from_numpy(scene.masks))
        for box, mask in zip(sample.boxes, sample.masks, strict=True):  # each box is its mask's tight box
            assert mask.any() and torch.equal(box, torch.from_numpy(tight_box(mask.numpy())))


def test_scene_splits_are_seeded_and_disjoint() -> None:
    config = registry.get("mask_rcnn").resolve({"train_scenes": 6, "val_scenes": 4, "test_scenes": 4})
    data, again = load_detection_data(config), load_detection_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 4)
    assert all(torch.equal(a.image, b.image) for a, b in zip(data.test, again.test, strict=True))
    assert not torch.equal(data.val[0].image, data.test[0].image)
    other = load_detection_data({**config, "split_seed": 1})
    assert not torch.equal(other.train[0].image, data.train[0].image)


def _write_coco(root: Path, split: str, scenes: list) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir()
    coco = to_coco(scenes)
    for info, scene in zip(coco["images"], scenes, strict=True):
        Image.fromarray(scene.image.transpose(1, 2, 0)).save(root / split / info["file_name"])
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def test_a_coco_folder_written_from_scenes_reads_back_equal(tmp_path: Path) -> None:
    train, val = make_scenes(6, seed=1), make_scenes(3, seed=2)
    _write_coco(tmp_path, "train", train)
    _write_coco(tmp_path, "val", val)
    data = load_coco(tmp_path, val_images=2, split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 3)
    assert data.classes == ("square", "circle", "triangle", "digit")
    read = {int(s.image.sum()): s for s in [*data.train, *data.val]}  # train and its held-out val: the 6 scenes
    assert len(read) == 6
    for scene, sample in [*((s, read[int(s.image.astype(np.int64).sum())]) for s in train),
                          *zip(val, data.test, strict=True)]:
        assert torch.equal(sample.image, torch.from_numpy(scene.image))
        assert torch.equal(sample.boxes, torch.from_numpy(scene.boxes))
        assert torch.equal(sample.labels, torch.from_numpy(scene.labels))
        assert torch.equal(sample.masks, torch.from_numpy(scene.masks))
    capped = load_coco(tmp_path, val_images=2, split_seed=0, max_images=1)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (1, 1, 1)


def _compress(counts: list[int]) -> str:
    """pycocotools' rleToString: the encoder whose output decode_compressed_rle reads."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_compressed_rle_and_polygons_decode() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), dtype=bool)
    mask[3:20, 5:33] = rng.random((17, 28)) < 0.7  # many runs of every length, deltas of both signs
    counts = encode_rle(mask)["counts"]
    assert np.array_equal(decode_compressed_rle(_compress(counts), 30, 40), mask)
    assert np.array_equal(decode_segmentation({"counts": _compress(counts), "size": [30, 40]}, 30, 40), mask)
    square = decode_segmentation([[4, 6, 14, 6, 14, 16, 4, 16]], 30, 40)  # a 10 x 10 square's corners
    assert square[7:15, 5:13].all() and not square[:5].any() and not square[:, 16:].any()
    assert 100 <= square.sum() <= 121  # the polygon's area, give or take its boundary pixels
    with pytest.raises(ValueError, match="mask of size"):
        decode_segmentation(encode_rle(mask), 20, 40)


def test_missing_or_corrupt_coco_is_one_clear_line(tmp_path: Path) -> None:
    spec = registry.get("mask_rcnn")
    with pytest.raises(ConfigError, match="dataset='coco' needs data_dir"):
        spec.resolve({"dataset": "coco"})
    with pytest.raises(ConfigError, match=r"annotations missing: .*instances_train.json is not a file") as info:
        spec.resolve({"dataset": "coco", "data_dir": str(tmp_path)})
    assert "\n" not in str(info.value)
    _write_coco(tmp_path, "train", make_scenes(2, seed=1))
    _write_coco(tmp_path, "val", make_scenes(2, seed=2))
    spec.resolve({"dataset": "coco", "data_dir": str(tmp_path)})  # complete: no error
    (tmp_path / "train" / "scene_000001.png").write_bytes(b"not a png")
    data = load_coco(tmp_path, val_images=0, split_seed=0)
    with pytest.raises(DetectionDataError, match=r"scene_000001.png or its annotations are unreadable"):
        [data.train[i] for i in range(len(data.train))]
    (tmp_path / "annotations" / "instances_val.json").write_text("{broken")
    with pytest.raises(DetectionDataError, match="instances_val.json are unreadable: JSONDecodeError") as info:
        load_coco(tmp_path, val_images=0, split_seed=0)
    assert "\n" not in str(info.value)
