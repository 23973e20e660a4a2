"""The spatial transformer of AIR (Eslami et al. 2016, Sec. 2.2; Jaderberg et al. 2015): ``z_where`` places an object
window on the canvas (decoder) and cuts a glimpse out of the canvas (encoder, the inverse transform).

``z_where = (s, x, y)`` in the canvas' normalised coordinates u in [-1, 1]^2 (``affine_grid``'s, align_corners=False:
-1 is the left edge of the first pixel, +1 the right edge of the last): the window is a square of side ``s`` (a
fraction of the canvas side, so a 28-pixel digit on a 50-pixel canvas has s = 0.56) centred at (x, y). A window
coordinate w in [-1, 1]^2 lands at canvas coordinate

    u = s * w + (x, y)                  (window -> canvas: the glimpse's sampling grid, theta = [[s, 0, x], [0, s, y]])
    w = (u - (x, y)) / s                (canvas -> window: the decoder's sampling grid, the inverse affine map)

``grid_sample`` reads its input where the grid points, so the encoder's glimpse samples the canvas with the first
map and the decoder renders the window onto the canvas with the second (zero outside the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_SCALE = 0.05  # a guard against dividing by a sampled scale near zero; the prior keeps s near the digit size


def _theta(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine matrices [[a, 0, b_x], [0, a, b_y]] from (B,) scales and (B, 2) shifts."""
    zeros = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, zeros, shift[:, 0]], -1),
                        torch.stack([zeros, scale, shift[:, 1]], -1)], 1)


def place(windows: torch.Tensor, z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Render (B, C, h, w) windows onto (B, C, canvas, canvas) canvases where ``z_where`` (B, 3) says."""
    s = z_where[:, 0].clamp(min=MIN_SCALE)
    # w = (u - t) / s = (1/s) u - t/s: the decoder's grid, canvas -> window
    theta = _theta(1.0 / s, -z_where[:, 1:] / s[:, None])
    grid = F.affine_grid(theta, [len(windows), windows.shape[1], canvas_size, canvas_size], align_corners=False)
    return F.grid_sample(windows, grid, align_corners=False, padding_mode="zeros")


def glimpse(images: torch.Tensor, z_where: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """The (B, C, g, g) glimpse of (B, C, H, W) ``images`` inside the window ``z_where`` (B, 3)."""
    s = z_where[:, 0].clamp(min=MIN_SCALE)
    theta = _theta(s, z_where[:, 1:])  # u = s w + t: the glimpse's grid, window -> canvas
    grid = F.affine_grid(theta, [len(images), images.shape[1], glimpse_size, glimpse_size], align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def where_to_box(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """(B, 3) z_where -> (B, 4) pixel boxes (x0, y0, x1, y1) of the window's edges: u = -1 is pixel edge 0."""
    s, x, y = z_where[:, 0].clamp(min=MIN_SCALE), z_where[:, 1], z_where[:, 2]
    to_pixels = canvas_size / 2.0
    return torch.stack([(x - s + 1) * to_pixels, (y - s + 1) * to_pixels,
                        (x + s + 1) * to_pixels, (y + s + 1) * to_pixels], -1)


def box_to_where(box: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """The inverse of :func:`where_to_box` for square (B, 4) pixel boxes: the z_where that places a window there."""
    x0, y0, x1, y1 = box.unbind(-1)
    return torch.stack([(x1 - x0) / canvas_size, (x0 + x1) / canvas_size - 1, (y0 + y1) / canvas_size - 1], -1)
