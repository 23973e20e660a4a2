"""The shared sample-grid writer: cells land where the layout says, boxes are drawn, bad shapes are refused."""

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.image_grid import grid_array, save_image_grid


def test_cells_are_laid_out_row_major_with_padding():
    images = torch.zeros(5, 1, 4, 4)
    images[3] = 1.0  # row 1, column 0 with nrow=3
    a = grid_array(images, nrow=3, padding=2)
    assert a.shape == (2 * 6 + 2, 3 * 6 + 2, 3)
    assert (a[8:12, 2:6] == 255).all()  # the white cell
    assert (a[2:6, 2:6] == 0).all() and (a[8:12, 8:12] == 0).all()  # black cells around it
    assert (a[0:2] == 255).all()  # padding


def test_saved_png_has_the_scaled_size_and_box_colour(tmp_path):
    images = torch.zeros(2, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "g.png", nrow=2, scale=3, boxes=[[(1, 1, 6, 6)], []])
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == ((8 + 4) * 3, (2 * 10 + 2) * 3, 3)
    assert (picture[(2 + 1) * 3, (2 + 3) * 3] != 0).any()  # on the top edge of the box in cell 0
    assert (picture[(2 + 3) * 3, (12 + 3) * 3] == 0).all()  # cell 1 has no box


def test_refuses_images_without_channels():
    with pytest.raises(ValueError, match="N, 1 or 3"):
        grid_array(torch.zeros(4, 8, 8))
