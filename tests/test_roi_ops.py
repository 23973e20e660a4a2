"""RoIAlign / RoIPool (trainables/roi_ops.py) against plain-loop references written here from the papers' definitions
(He et al. 2017 sec. 3; Girshick 2015) with torchvision's border conventions, plus gradchecks and a known answer."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

from trainables.roi_ops import roi_align, roi_features, roi_pool

H, W = 6, 7


def _features(n: int = 2, c: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# boxes in image coordinates (spatial_scale 0.5 below): inside, partly off the map, wholly off, tiny, degenerate
BOXES = torch.tensor([
    [0, 1.0, 2.0, 9.0, 8.0],
    [1, 3.3, 0.7, 12.9, 11.1],
    [0, -5.0, -3.0, 4.0, 6.0],        # partly off (top-left)
    [1, 10.0, 7.0, 20.0, 16.0],       # partly off (bottom-right)
    [0, 30.0, 30.0, 40.0, 38.0],      # wholly off the map
    [1, -20.0, -9.0, -6.0, -4.0],     # wholly off, negative side
    [0, 4.1, 5.2, 4.4, 5.3],          # tiny
    [1, 7.0, 3.0, 7.0, 3.0],          # zero size
], dtype=torch.float64)


def _bilinear(fmap: list[list[float]], y: float, x: float) -> float:
    """torchvision's bilinear_interpolate, one point."""
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fmap[y0][x0] + (1 - ly) * lx * fmap[y0][x1]
            + ly * (1 - lx) * fmap[y1][x0] + ly * lx * fmap[y1][x1])


def _align_reference(features, boxes, out_h, out_w, scale, ratio, aligned):  # noqa: ANN001, ANN202
    out = torch.zeros(boxes.shape[0], features.shape[1], out_h, out_w, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for k, (b, bx1, by1, bx2, by2) in enumerate(boxes.tolist()):
        sx, sy = bx1 * scale - off, by1 * scale - off
        rw, rh = bx2 * scale - off - sx, by2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out_h, rw / out_w
        gh = ratio if ratio > 0 else math.ceil(rh / out_h)
        gw = ratio if ratio > 0 else math.ceil(rw / out_w)
        count = max(gh * gw, 1)
        for c in range(features.shape[1]):
            fmap = features[int(b), c].tolist()
            for p in range(out_h):
                for q in range(out_w):
                    total = 0.0
                    for i in range(gh):
                        y = sy + p * bh + (i + 0.5) * bh / gh
                        for j in range(gw):
                            x = sx + q * bw + (j + 0.5) * bw / gw
                            total += _bilinear(fmap, y, x)
                    out[k, c, p, q] = total / count
    return out


def _c_round(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def _pool_reference(features, boxes, out_h, out_w, scale):  # noqa: ANN001, ANN202
    out = torch.zeros(boxes.shape[0], features.shape[1], out_h, out_w, dtype=torch.float64)
    for k, (b, bx1, by1, bx2, by2) in enumerate(boxes.tolist()):
        x1, y1, x2, y2 = (_c_round(v * scale) for v in (bx1, by1, bx2, by2))
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bh, bw = rh / out_h, rw / out_w
        for c in range(features.shape[1]):
            for p in range(out_h):
                h0 = min(max(math.floor(p * bh) + y1, 0), H)
                h1 = min(max(math.ceil((p + 1) * bh) + y1, 0), H)
                for q in range(out_w):
                    w0 = min(max(math.floor(q * bw) + x1, 0), W)
                    w1 = min(max(math.ceil((q + 1) * bw) + x1, 0), W)
                    cells = [features[int(b), c, r, s].item() for r in range(h0, h1) for s in range(w0, w1)]
                    out[k, c, p, q] = max(cells) if cells else 0.0
    return out


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("out_size", [(2, 3), (3, 3)])
def test_roi_align_matches_loop_reference(aligned: bool, ratio: int, out_size: tuple[int, int]) -> None:
    features = _features()
    got = roi_align(features, BOXES, out_size, spatial_scale=0.5, sampling_ratio=ratio, aligned=aligned)
    want = _align_reference(features, BOXES, *out_size, 0.5, ratio, aligned)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert got[4].abs().max() == 0 and got[0].abs().max() > 0  # wholly off the map reads nothing


@pytest.mark.parametrize("scale", [0.5, 1.0])
@pytest.mark.parametrize("out_size", [(2, 2), (3, 4)])
def test_roi_pool_matches_loop_reference(scale: float, out_size: tuple[int, int]) -> None:
    features = _features(seed=1)
    boxes = torch.cat([BOXES, torch.tensor([[0, 2.5, 1.5, 3.5, 4.5]], dtype=torch.float64)])  # halves: C round
    got = roi_pool(features, boxes, out_size, spatial_scale=scale)
    want = _pool_reference(features, boxes, *out_size, scale)
    torch.testing.assert_close(got, want, rtol=0, atol=0)



def _torchvision_ops() -> ModuleType:
    """torchvision.ops where its compiled kernels load (a CUDA build of torch); skips elsewhere: on this project's
    CPU build ``import torchvision`` raises RuntimeError ("operator torchvision::nms does not exist"), not
    ImportError, so ``pytest.importorskip`` alone would not skip."""
    try:
        import torchvision.ops as ops
    except Exception as err:  # noqa: BLE001 (any failure to load the kernels means: nothing to compare against)
        pytest.skip(f"torchvision's ops do not load here: {type(err).__name__}: {err}")
    return ops


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_roi_align_and_pool_match_torchvisions_kernels_where_they_load(aligned: bool, ratio: int) -> None:
    ops = _torchvision_ops()
    features = _features(seed=2)
    want = ops.roi_align(features, BOXES, (3, 3), spatial_scale=0.5, sampling_ratio=ratio, aligned=aligned)
    got = roi_align(features, BOXES, (3, 3), spatial_scale=0.5, sampling_ratio=ratio, aligned=aligned)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(roi_pool(features, BOXES, (2, 3), spatial_scale=0.5),
                               ops.roi_pool(features, BOXES, (2, 3), spatial_scale=0.5), rtol=0, atol=0)

def test_gradcheck_both() -> None:
    features = _features(n=2, c=1, seed=2).requires_grad_(True)
    boxes = BOXES[[0, 1, 2, 6]]
    assert torch.autograd.gradcheck(lambda f: roi_align(f, boxes, (2, 2), 0.5, 2, True), (features,))
    assert torch.autograd.gradcheck(lambda f: roi_align(f, boxes, (2, 3), 0.5, -1, False), (features,))
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, boxes, (2, 2), 0.5), (features,))
    # and RoIAlign is differentiable in the box coordinates too (bilinear weights)
    coords = BOXES[[0, 1], 1:].clone().requires_grad_(True)
    index = BOXES[[0, 1], :1]
    assert torch.autograd.gradcheck(
        lambda c: roi_align(features.detach(), torch.cat([index, c], 1), (2, 2), 0.5, 2, True), (coords,))


def test_roi_pool_gradient_goes_to_the_max() -> None:
    features = _features(n=1, c=1, seed=3).requires_grad_(True)
    box = torch.tensor([[0, 0.0, 0.0, W - 1.0, H - 1.0]], dtype=torch.float64)
    roi_pool(features, box, (1, 1)).sum().backward()
    grad = features.grad[0, 0]
    assert grad.sum() == 1 and grad.flatten().argmax() == features.detach().flatten().argmax()


def test_linear_ramp_known_answer() -> None:
    """Bilinear interpolation is exact on a linear map, so RoIAlign returns the ramp at each bin centre; RoIPool
    returns the ramp at the last cell of each quantised bin (the misalignment RoIAlign removes)."""
    a, b, c = 2.0, 0.5, 1.0
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = (a * ys + b * xs + c).to(torch.float64)[None, None]
    box = torch.tensor([[0, 2.3, 3.1, 9.7, 11.5]], dtype=torch.float64)  # x1, y1, x2, y2
    align = roi_align(ramp, box, (2, 2), 1.0, sampling_ratio=2, aligned=True)[0, 0]
    y_c = 3.1 - 0.5 + (torch.arange(2, dtype=torch.float64) + 0.5) * (11.5 - 3.1) / 2
    x_c = 2.3 - 0.5 + (torch.arange(2, dtype=torch.float64) + 0.5) * (9.7 - 2.3) / 2
    torch.testing.assert_close(align, a * y_c[:, None] + b * x_c[None, :] + c, rtol=0, atol=1e-12)
    # RoIPool: edges rounded to x 2..10, y 3..12 (9 x 10 cells); rows 3..7 | 8..12, columns 2..6 | 6..10 (ceil
    # overlaps); the max of an increasing ramp is at the bin's last cell
    pool = roi_pool(ramp, box, (2, 2), 1.0)[0, 0]
    last_y, last_x = torch.tensor([7.0, 12.0]), torch.tensor([6.0, 10.0])
    torch.testing.assert_close(pool, (a * last_y[:, None] + b * last_x[None, :] + c).double(), rtol=0, atol=0)
    assert (pool - align).abs().min() > 0.5


def test_switch_and_errors() -> None:
    features, boxes = _features(), BOXES[:4]
    torch.testing.assert_close(roi_features(features, boxes, (2, 2), 0.5, "align", 2, True),
                               roi_align(features, boxes, (2, 2), 0.5, 2, True))
    torch.testing.assert_close(roi_features(features, boxes, (2, 2), 0.5, "pool"), roi_pool(features, boxes, 2, 0.5))
    align, pool = roi_features(features, boxes, 2, 0.5, "align"), roi_features(features, boxes, 2, 0.5, "pool")
    assert not torch.equal(align, pool)
    with pytest.raises(ValueError, match="unknown method"):
        roi_features(features, boxes, 2, method="warp")
    with pytest.raises(ValueError, match="boxes must be"):
        roi_align(features, boxes[:, 1:], 2)
    empty = torch.zeros(0, 5, dtype=torch.float64)
    assert roi_align(features, empty, (2, 3)).shape == (0, 2, 2, 3)
    assert roi_pool(features, empty, (2, 3)).shape == (0, 2, 2, 3)
