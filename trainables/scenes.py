"""Synthetic scenes with known ground truth, for instance segmentation (Mask R-CNN) and dense captioning (DenseCap).

A scene is a ``size`` x ``size`` RGB image (uint8, channels first (3, H, W) like the project's datasets) on a dark,
lightly noisy background, holding 1 to ``max_objects`` objects. An object is a filled square, circle or triangle,
or (with ``digit_prob`` > 0) an MNIST-5k digit, painted in one colour of :data:`PALETTE` at a "small" or "large"
size. Objects are painted in order, so later objects occlude earlier ones; the instance masks are the *visible*
pixels. Overlap is limited by rejection: a new object is placed only where every earlier object keeps at least
1 - ``_MAX_COVER`` (70%) of its full area visible, so every mask stays nonempty and mostly visible.

Object pixels are painted in their exact palette colour (noise is added to the background only, and digits are
thresholded at 128 rather than alpha-blended), so the pixels under a mask are exactly the object's colour.

Conventions:

* ``boxes`` are (x1, y1, x2, y2) float32 pixels, the tight box of the visible mask with x2, y2 *exclusive*
  (``mask[y1:y2, x1:x2]`` holds the whole mask; width = x2 - x1 pixels). :func:`xyxy_to_xywh` gives COCO's
  (x, y, w, h), which with this convention is the same box COCO's own ``maskUtils.toBbox`` computes.
* ``labels`` index :data:`CLASSES` (0-based); COCO category ids are ``label + 1``.
* Digits of a scene come from one split of ``load_dataset("mnist5k")`` (train / val / test, disjoint images);
  ``sources`` holds each digit's index in that split (-1 for shapes), so a test can check where digits came from.
* A scene is a function of (seed, index, split and the options) alone: :func:`make_scenes` seeds scene i with
  ``(seed, i)``, so a scene does not depend on how many scenes are generated with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables.canvases import resize_digits
from trainables.data import load_dataset

CLASSES: tuple[str, ...] = ("square", "circle", "triangle", "digit")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
    "magenta": (210, 60, 210), "cyan": (50, 210, 220), "white": (235, 235, 235),
}
SIZES: dict[str, tuple[int, int]] = {"small": (10, 14), "large": (20, 28)}  # extent range in pixels at size 64
SPLITS: tuple[str, ...] = ("train", "val", "test")
_BACKGROUND, _NOISE_STD = (30, 30, 30), 4.0  # dark grey, +-4 grey levels of noise: "lightly noisy"
_MAX_COVER = 0.3  # at most 30% of an object may end up hidden by later ones
_TRIES = 50


@dataclass(frozen=True)
class Region:
    """A DenseCap region: a box (x1, y1, x2, y2, x2/y2 exclusive), its caption, and the objects it is about."""

    box: tuple[float, float, float, float]
    caption: str
    objects: tuple[int, ...]


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value under ==
class Scene:
    """``image`` uint8 (3, H, W); ``masks`` bool (K, H, W) visible pixels; ``boxes`` float32 (K, 4) xyxy, x2/y2
    exclusive; ``labels`` int64 (K,) into CLASSES; ``colours``/``sizes`` K names; ``sources`` int64 (K,) digit
    index in ``split`` (-1 for shapes); ``full_areas`` int64 (K,) pixels of each object before occlusion;
    ``regions``: one caption per object, then one per pair of objects with a clear relation."""

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    colours: tuple[str, ...]
    sizes: tuple[str, ...]
    sources: np.ndarray
    full_areas: np.ndarray
    regions: tuple[Region, ...]
    split: str

    def float_image(self) -> torch.Tensor:
        """The image as float32 (3, H, W) in [0, 1]."""
        return torch.from_numpy(self.image).float() / 255.0


@functools.lru_cache(maxsize=3)
def _split_digits(split: str) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) digits of one mnist5k split (fixed split_seed 0: the same split in every process)."""
    bundle = load_dataset("mnist5k", split_seed=0, augment="none")
    return getattr(bundle, split).x


def digit_glyph(split: str, index: int, extent: int) -> np.ndarray:
    """bool (extent, extent): digit ``index`` of ``split`` resized to ``extent`` and thresholded at 128."""
    return resize_digits(_split_digits(split)[index:index + 1], extent)[0, 0].numpy() >= 128


def _shape_mask(kind: str, extent: int) -> np.ndarray:
    """bool (extent, extent) of a filled square, circle (disk) or upward triangle."""
    yy, xx = np.mgrid[0:extent, 0:extent] + 0.5  # pixel centres
    if kind == "square":
        return np.ones((extent, extent), dtype=bool)
    if kind == "circle":
        r = extent / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    # Triangle: apex at the top centre, base along the bottom row; half width grows linearly with y.
    return np.abs(xx - extent / 2) <= yy / 2


def describe(size: str, colour: str, label: int) -> str:
    """The object caption, e.g. "a small red square"."""
    return f"a {size} {colour} {CLASSES[label]}"


def relation(box_a: np.ndarray, box_b: np.ndarray) -> str | None:
    """Where a is relative to b from box centres: "left of" / "right of" (|dx| > |dy|), else "above" / "below"
    (image y points down); None when ambiguous (|dx| == |dy|)."""
    dx = (box_a[0] + box_a[2]) / 2 - (box_b[0] + box_b[2]) / 2
    dy = (box_a[1] + box_a[3]) / 2 - (box_b[1] + box_b[3]) / 2
    if abs(dx) == abs(dy):
        return None
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def tight_box(mask: np.ndarray) -> np.ndarray:
    """float32 (4,) x1, y1, x2, y2 of a nonempty bool (H, W) mask, x2/y2 exclusive."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def union_box(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """The smallest box holding boxes a and b."""
    return (float(min(a[0], b[0])), float(min(a[1], b[1])), float(max(a[2], b[2])), float(max(a[3], b[3])))


def make_scene(seed: int | tuple[int, ...], size: int = 64, max_objects: int = 4, digit_prob: float = 0.0,
               split: str = "train") -> Scene:
    """One scene, a function of its arguments alone (see the module docstring)."""
    if not 64 <= size <= 128:
        raise ValueError(f"size must be in [64, 128], got {size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0.0 <= digit_prob <= 1.0:
        raise ValueError(f"digit_prob must be in [0, 1], got {digit_prob}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    noise = rng.normal(0.0, _NOISE_STD, size=(3, size, size))
    image = np.clip(np.array(_BACKGROUND, dtype=np.float64)[:, None, None] + noise, 0, 255).round().astype(np.uint8)
    colour_names, size_names = list(PALETTE), list(SIZES)
    owner = np.full((size, size), -1, dtype=np.int64)  # which object shows at each pixel
    labels: list[int] = []
    colours: list[str] = []
    sizes: list[str] = []
    sources: list[int] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = 3 if rng.random() < digit_prob else int(rng.integers(0, 3))
        colour, size_name = colour_names[rng.integers(len(colour_names))], size_names[rng.integers(len(SIZES))]
        lo, hi = SIZES[size_name]
        extent = int(round(rng.integers(lo, hi + 1) * size / 64))
        source, shape = -1, _shape_mask(CLASSES[label], extent) if label != 3 else np.zeros((1, 1), dtype=bool)
        while not shape.any():  # a faint digit can vanish at the 128 threshold when shrunk: draw another one
            source = int(rng.integers(len(_split_digits(split))))
            shape = digit_glyph(split, source, extent)
        for _ in range(_TRIES):
            x0, y0 = (int(v) for v in rng.integers(0, size - extent + 1, size=2))
            full = np.zeros((size, size), dtype=bool)
            full[y0:y0 + extent, x0:x0 + extent] = shape
            hidden = np.bincount(owner[full & (owner >= 0)], minlength=len(labels))
            visible = np.bincount(owner[owner >= 0], minlength=len(labels))
            if np.all(visible - hidden >= (1 - _MAX_COVER) * np.array(full_areas)):  # every earlier object stays
                break  # at least 70% visible in all (occlusions add up over later objects)
        else:
            continue  # no place with limited overlap: leave this object out (the first always fits)
        owner[full] = len(labels)
        image[:, full] = np.array(PALETTE[colour], dtype=np.uint8)[:, None]
        labels.append(label)
        colours.append(colour)
        sizes.append(size_name)
        sources.append(source)
        full_areas.append(int(full.sum()))
    masks = owner[None] == np.arange(len(labels))[:, None, None]
    boxes = np.stack([tight_box(m) for m in masks])
    regions = [Region(tuple(float(v) for v in boxes[k]), describe(sizes[k], colours[k], labels[k]), (k,))
               for k in range(len(labels))]
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            rel = relation(boxes[a], boxes[b])
            if rel is not None:
                text = f"{regions[a].caption} {rel} {regions[b].caption}"
                regions.append(Region(union_box(boxes[a], boxes[b]), text, (a, b)))
    return Scene(image, masks, boxes, np.array(labels, dtype=np.int64), tuple(colours), tuple(sizes),
                 np.array(sources, dtype=np.int64), np.array(full_areas, dtype=np.int64), tuple(regions), split)


def make_scenes(n: int, seed: int, size: int = 64, max_objects: int = 4, digit_prob: float = 0.0,
                split: str = "train") -> list[Scene]:
    """``n`` scenes; scene i is ``make_scene((seed, i), ...)``."""
    return [make_scene((seed, i), size, max_objects, digit_prob, split) for i in range(n)]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) x1, y1, x2, y2 (x2/y2 exclusive) -> COCO x, y, w, h."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], -1)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a bool (H, W) mask: run lengths over the column-major (Fortran) pixel order,
    starting with a run of zeros (possibly of length 0)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle`."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, rle["counts"]).reshape((h, w), order="F")


def to_coco(scenes: list[Scene]) -> dict[str, Any]:
    """COCO instance-segmentation ground truth: images (id = position + 1), annotations (bbox xywh, area = mask
    pixels, iscrowd 0, uncompressed RLE segmentation), categories (id = label + 1)."""
    images, annotations = [], []
    for i, scene in enumerate(scenes):
        h, w = scene.image.shape[1:]
        images.append({"id": i + 1, "width": int(w), "height": int(h), "file_name": f"scene_{i:06d}.png"})
        for k in range(len(scene.labels)):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(scene.labels[k]) + 1,
                "bbox": [float(v) for v in xyxy_to_xywh(scene.boxes[k])], "area": int(scene.masks[k].sum()),
                "iscrowd": 0, "segmentation": encode_rle(scene.masks[k]),
            })
    categories = [{"id": c + 1, "name": name, "supercategory": "digit" if name == "digit" else "shape"}
                  for c, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}
