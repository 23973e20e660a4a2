"""Synthetic scenes (trainables/scenes.py): determinism, masks and boxes, colours and classes, captions, digit
splits, and the COCO export."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.scenes import (
    CLASSES,
    PALETTE,
    SIZES,
    _split_digits,
    decode_rle,
    digit_glyph,
    encode_rle,
    make_scene,
    make_scenes,
    relation,
    tight_box,
    to_coco,
    xyxy_to_xywh,
)

# Fill of the tight box by a fully visible shape: square 1, disk pi/4, triangle 1/2 (pixelised, so a tolerance).
_FILL = {"square": (0.99, 1.01), "circle": (0.70, 0.85), "triangle": (0.40, 0.62)}


@pytest.fixture(scope="module")
def scenes() -> list:
    return make_scenes(60, seed=3, size=64, max_objects=6) + make_scenes(20, seed=4, size=96, max_objects=5,
                                                                         digit_prob=0.4, split="val")


def test_same_seed_same_scene_different_seeds_differ() -> None:
    a, b, c = (make_scene(s, max_objects=5, digit_prob=0.3) for s in (11, 11, 12))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.regions == b.regions and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)
    # make_scenes seeds scene i with (seed, i): a scene does not depend on how many are made.
    assert np.array_equal(make_scenes(3, 5)[2].image, make_scenes(5, 5)[2].image)
    assert not np.array_equal(make_scenes(2, 5)[1].image, make_scenes(2, 6)[1].image)


def test_shapes_and_dtypes(scenes: list) -> None:
    counts = set()
    for s in scenes:
        k, size = len(s.labels), s.image.shape[-1]
        counts.add(k)
        assert s.image.dtype == np.uint8 and s.image.shape == (3, size, size)
        assert s.masks.dtype == bool and s.masks.shape == (k, size, size)
        assert s.boxes.shape == (k, 4) and s.labels.shape == (k,) and len(s.colours) == len(s.sizes) == k
        assert float(s.float_image().max()) <= 1.0
    assert len(counts) >= 4 and min(counts) >= 1 and max(counts) <= 6  # object counts vary within 1..max_objects


def test_masks_disjoint_nonempty_and_boxes_tight(scenes: list) -> None:
    for s in scenes:
        assert s.masks.sum(0).max() <= 1  # each pixel belongs to at most one instance
        areas = s.masks.sum((1, 2))
        assert (areas > 0).all()
        assert (areas <= s.full_areas).all() and (areas >= 0.7 * s.full_areas).all()  # occlusion is limited
        for mask, box in zip(s.masks, s.boxes, strict=True):
            x1, y1, x2, y2 = box.astype(int)
            assert mask[y1:y2, x1:x2].sum() == mask.sum()  # holds the mask (x2/y2 exclusive) ...
            assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()  # ... and is tight on every side
            assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()


def test_occlusion_later_objects_on_top() -> None:
    occluded = 0
    for s in make_scenes(40, seed=9, max_objects=6):
        for k in range(len(s.labels)):
            occluded += int(s.masks[k].sum() < s.full_areas[k])
        assert s.masks[-1].sum() == s.full_areas[-1]  # nothing is painted over the last object
    assert occluded > 0  # the check above is not vacuous: some objects are partly hidden


def test_pixels_show_colour_and_class(scenes: list) -> None:
    checked = {name: 0 for name in _FILL}
    for s in scenes:
        for k, label in enumerate(s.labels):
            pixels = s.image[:, s.masks[k]].astype(float)
            assert np.allclose(pixels.mean(1), PALETTE[s.colours[k]], atol=0.5)  # exact colour under the mask
            name = CLASSES[label]
            if name in _FILL and s.masks[k].sum() == s.full_areas[k]:  # fully visible shape: check its class
                x1, y1, x2, y2 = s.boxes[k]
                fill = s.masks[k].sum() / ((x2 - x1) * (y2 - y1))
                lo, hi = _FILL[name]
                assert lo <= fill <= hi, (name, fill)
                side = max(x2 - x1, y2 - y1) * 64 / s.image.shape[-1]
                small = SIZES["small"][1] + 1
                assert (side <= small) == (s.sizes[k] == "small"), (s.sizes[k], side)
                checked[name] += 1
    assert min(checked.values()) >= 5, checked


def test_captions_agree_with_attributes_and_box_centres(scenes: list) -> None:
    relations = set()
    for s in scenes:
        k = len(s.labels)
        singles = [r for r in s.regions if len(r.objects) == 1]
        assert [r.objects[0] for r in singles] == list(range(k))
        for r in singles:
            i = r.objects[0]
            assert r.caption == f"a {s.sizes[i]} {s.colours[i]} {CLASSES[s.labels[i]]}"
            assert np.array_equal(np.array(r.box, dtype=np.float32), s.boxes[i])
        for r in s.regions[k:]:
            a, b = r.objects
            rel = r.caption[len(s.regions[a].caption) + 1:-len(s.regions[b].caption) - 1]
            assert r.caption == f"{s.regions[a].caption} {rel} {s.regions[b].caption}"
            (ax, ay), (bx, by) = ((s.boxes[i, :2] + s.boxes[i, 2:]) / 2 for i in (a, b))
            expect = {"left of": ax < bx and abs(ax - bx) > abs(ay - by),
                      "right of": ax > bx and abs(ax - bx) > abs(ay - by),
                      "above": ay < by and abs(ay - by) > abs(ax - bx),
                      "below": ay > by and abs(ay - by) > abs(ax - bx)}
            assert expect[rel], (rel, s.boxes[a], s.boxes[b])
            union = np.concatenate([np.minimum(s.boxes[a, :2], s.boxes[b, :2]),
                                    np.maximum(s.boxes[a, 2:], s.boxes[b, 2:])])
            assert np.array_equal(np.array(r.box, dtype=np.float32), union)
            relations.add(rel)
    assert relations == {"left of", "right of", "above", "below"}


def test_relation_from_centres() -> None:
    box = np.array([10, 10, 20, 20], dtype=np.float32)
    assert relation(box, box + np.array([30, 5, 30, 5])) == "left of"
    assert relation(box + np.array([30, 5, 30, 5]), box) == "right of"
    assert relation(box, box + np.array([3, 30, 3, 30])) == "above"
    assert relation(box + np.array([3, 30, 3, 30]), box) == "below"
    assert relation(box, box) is None


def _glyph_matches(split: str, index: int, size_name: str, mask: np.ndarray, box: np.ndarray) -> bool:
    """Whether a fully visible digit mask is the glyph of digit ``index`` of ``split`` at an allowed extent."""
    x1, y1, x2, y2 = box.astype(int)
    lo, hi = SIZES[size_name]
    for extent in range(lo, hi + 1):
        glyph = digit_glyph(split, index, extent)
        gy, gx = np.nonzero(glyph)
        crop = glyph[gy.min():gy.max() + 1, gx.min():gx.max() + 1]
        if crop.shape == (y2 - y1, x2 - x1) and np.array_equal(crop, mask[y1:y2, x1:x2]):
            return True
    return False


def test_digits_come_from_the_requested_split() -> None:
    # The splits are disjoint images: no test digit is a train digit (what makes test scenes held out).
    train_x, test_x = (_split_digits(s).numpy().reshape(-1, 28 * 28) for s in ("train", "test"))
    assert not {row.tobytes() for row in test_x} & {row.tobytes() for row in train_x}
    many = make_scenes(25, seed=2, max_objects=5, digit_prob=1.0, split="test")
    assert all((s.labels == CLASSES.index("digit")).all() for s in many)
    assert all(((s.sources >= 0) & (s.sources < len(test_x))).all() for s in many)
    # One fully visible digit per scene: its pixels are the glyph of test digit ``sources[0]``, not of the train
    # digit with the same index (so the index really points into the requested split).
    wrong = 0
    for s in make_scenes(12, seed=8, max_objects=1, digit_prob=1.0, split="test"):
        index = int(s.sources[0])
        assert _glyph_matches("test", index, s.sizes[0], s.masks[0], s.boxes[0])
        wrong += not _glyph_matches("train", index, s.sizes[0], s.masks[0], s.boxes[0])
    assert wrong >= 10


def test_rle_round_trip_and_coco_export(scenes: list) -> None:
    coco = to_coco(scenes)
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert len(coco["images"]) == len(scenes)
    assert len(coco["annotations"]) == sum(len(s.labels) for s in scenes)
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids)
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for i, s in enumerate(scenes):
        anns = by_image[i + 1]
        for k, a in enumerate(anns):
            assert a["category_id"] == s.labels[k] + 1 and a["iscrowd"] == 0
            assert a["segmentation"]["size"] == list(s.masks[k].shape)
            assert sum(a["segmentation"]["counts"]) == s.masks[k].size
            decoded = decode_rle(a["segmentation"])
            assert np.array_equal(decoded, s.masks[k]) and a["area"] == decoded.sum()
            assert a["bbox"] == [float(v) for v in xyxy_to_xywh(tight_box(decoded))]
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # not installed here: our decoder above and the hand-made RLE below pin the format
        mask_utils = None
    toy = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    assert encode_rle(toy)["counts"] == [2, 1, 1, 2]  # column-major pixels 0 0 | 1 0 | 1 1: runs 2, 1, 1, 2
    assert encode_rle(np.ones((2, 2), dtype=bool))["counts"] == [0, 4]  # starts with a (possibly empty) zero run
    assert np.array_equal(decode_rle(encode_rle(toy)), toy)
    if mask_utils is not None:
        rle = mask_utils.frPyObjects(encode_rle(scenes[0].masks[0]), *scenes[0].masks[0].shape)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), scenes[0].masks[0])


def test_bad_options_raise() -> None:
    for kwargs in ({"size": 32}, {"size": 200}, {"max_objects": 0}, {"digit_prob": 1.5}, {"split": "dev"}):
        with pytest.raises(ValueError):
            make_scene(0, **kwargs)
