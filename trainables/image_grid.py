"""One image from many: the grid a generative trainable writes as its samples artifact.

Shared by every method that shows pictures (a GAN's samples, a VAE's reconstructions, AIR's canvases with their
inferred boxes), so they look alike in MLflow and in the compare report. Written with Pillow (a matplotlib
dependency already installed) because a figure per grid would cost more than the grid itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# A box to draw on one cell, in that cell's pixel coordinates: (x0, y0, x1, y1).
Box = tuple[float, float, float, float]
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def grid_array(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """``images`` (N, C, H, W) with values in [0, 1], C = 1 or 3 -> an (rows*(H+p)+p, nrow*(W+p)+p, 3) uint8 array,
    cells left to right then top to bottom on a white background."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"grid_array needs images shaped (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    ncol = max(1, min(nrow, n))
    nrows = max(1, -(-n // ncol))
    out = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3), 255, dtype=np.uint8)
    pixels = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        out[top:top + h, left:left + w] = pixels[i]
    return out


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 2,
                    boxes: Sequence[Sequence[Box]] | None = None, padding: int = 2) -> Path:
    """Write ``images`` (N, C, H, W in [0, 1]) as one PNG grid at ``path``, each pixel ``scale`` times larger;
    ``boxes[i]`` (optional) are rectangles drawn on cell i, one colour per box index. Returns the path."""
    from PIL import Image, ImageDraw

    array = grid_array(images, nrow=nrow, padding=padding)
    picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    if boxes is not None:
        draw = ImageDraw.Draw(picture)
        h, w = images.shape[-2:]
        ncol = max(1, min(nrow, len(images)))
        for i, cell_boxes in enumerate(boxes):
            r, c = divmod(i, ncol)
            top, left = padding + r * (h + padding), padding + c * (w + padding)
            for j, (x0, y0, x1, y1) in enumerate(cell_boxes):
                draw.rectangle([(left + x0) * scale, (top + y0) * scale, (left + x1) * scale, (top + y1) * scale],
                               outline=BOX_COLOURS[j % len(BOX_COLOURS)], width=max(1, scale // 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
