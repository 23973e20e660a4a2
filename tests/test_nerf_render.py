"""NeRF / Nerfies rendering mathematics against closed forms (trainables/nerf_render.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.nerf_render import (
    hierarchical_samples,
    positional_encoding,
    rays_from_camera,
    render,
    sample_pdf,
    stratified_samples,
    window_alpha,
    window_weights,
)

torch.set_num_threads(1)
D64 = torch.float64


def _segment(t: torch.Tensor, sigma: torch.Tensor, colour: torch.Tensor, norm: float = 1.0, white: bool = False):
    """One ray; the last sample (at the segment's end) has zero density, so nothing lies beyond the segment."""
    rgb = colour.expand(1, t.numel(), 3) if colour.dim() == 1 else colour[None]
    dirs = torch.tensor([[0.0, 0.0, -norm]], dtype=D64)
    return render(sigma[None], rgb, t[None], dirs, white_background=white)


@pytest.mark.parametrize("norm", [1.0, 2.5])
def test_constant_density_gives_beer_lambert(norm):
    s, L, S = 0.7, 3.0, 2000
    t = torch.linspace(0.0, L, S + 1, dtype=D64)
    sigma = torch.full((S + 1,), s, dtype=D64)
    sigma[-1] = 0.0
    c = torch.tensor([0.2, 0.5, 0.9], dtype=D64)
    out = _segment(t, sigma, c, norm=norm)
    trans = math.exp(-s * L * norm)  # T = exp(-sigma * L * ||d||): the metric length is L ||d||
    assert out.acc.item() == pytest.approx(1 - trans, abs=1e-12)
    assert torch.allclose(out.rgb[0], c * (1 - trans), atol=1e-12, rtol=0)
    white = _segment(t, sigma, c, norm=norm, white=True)
    assert torch.allclose(white.rgb[0], c * (1 - trans) + trans, atol=1e-12, rtol=0)
    # E[t | hit within the segment], continuous: int_0^L t s' e^{-s' t} dt with s' = s ||d||; quadrature O(L/S)
    sp = s * norm
    depth = (1 - math.exp(-sp * L) * (1 + sp * L)) / sp
    assert out.depth.item() == pytest.approx(depth, abs=2 * L / S)


def test_density_step_gives_two_layer_result():
    s1, s2, a, L, S = 0.4, 2.0, 1.0, 2.5, 50  # bins of 0.05 end exactly at a
    t = torch.linspace(0.0, L, S + 1, dtype=D64)
    sigma = torch.where(t < a - 1e-9, torch.tensor(s1, dtype=D64), torch.tensor(s2, dtype=D64))
    sigma[-1] = 0.0
    c1, c2 = torch.tensor([1.0, 0.0, 0.0], dtype=D64), torch.tensor([0.0, 1.0, 0.0], dtype=D64)
    colours = torch.where((t < a - 1e-9)[:, None], c1, c2)
    out = _segment(t, sigma, colours)
    t1, t2 = math.exp(-s1 * a), math.exp(-s2 * (L - a))
    expected = c1 * (1 - t1) + c2 * t1 * (1 - t2)
    assert torch.allclose(out.rgb[0], expected, atol=1e-12, rtol=0)
    assert out.acc.item() == pytest.approx(1 - t1 * t2, abs=1e-12)


def test_weights_sum_to_one_minus_final_transmittance():
    g = torch.Generator().manual_seed(0)
    R, S = 8, 32
    t = torch.sort(torch.rand(R, S, generator=g, dtype=D64) * 4, dim=-1).values
    sigma = torch.rand(R, S, generator=g, dtype=D64) * 2
    sigma[:4, -1] = 0.0  # rays 0-3 leave light through; rays 4-7 end on the infinite last interval
    dirs = torch.randn(R, 3, generator=g, dtype=D64)
    out = render(sigma, torch.rand(R, S, 3, generator=g, dtype=D64), t, dirs)
    delta = torch.diff(t, dim=-1) * dirs.norm(dim=-1, keepdim=True)
    one_minus_alpha = torch.exp(-sigma[:, :-1] * delta)
    t_final = one_minus_alpha.prod(dim=-1) * torch.where(sigma[:, -1] > 0, 0.0, 1.0).to(D64)
    assert torch.allclose(out.weights.sum(-1), 1 - t_final, atol=1e-12, rtol=0)
    assert torch.allclose(out.acc, 1 - t_final, atol=1e-12, rtol=0)
    assert torch.allclose(out.acc[4:], torch.ones(4, dtype=D64))
    assert (out.weights >= 0).all()


def test_window_weights():
    L = 6
    assert torch.equal(window_weights(0.0, L), torch.zeros(L, dtype=D64))
    assert torch.equal(window_weights(float(L), L), torch.ones(L, dtype=D64))
    assert torch.equal(window_weights(L + 3.0, L), torch.ones(L, dtype=D64))
    for k in range(L):
        w = window_weights(k + 0.5, L)
        assert w[k].item() == pytest.approx(0.5, abs=1e-12)
        assert torch.equal(w[:k], torch.ones(k, dtype=D64))
        assert torch.equal(w[k + 1 :], torch.zeros(L - k - 1, dtype=D64))


def test_window_alpha_schedule():
    assert window_alpha(0, 8, 1000) == 0.0
    assert window_alpha(250, 8, 1000) == pytest.approx(2.0)
    assert window_alpha(5000, 8, 1000) == 8.0
    assert window_alpha(3, 8, 0) == 8.0


def test_positional_encoding_values_and_window():
    x = torch.tensor([[0.25, -1.0 / 3.0]], dtype=D64)
    L = 3
    enc = positional_encoding(x, L)
    assert enc.shape == (1, 2 * (1 + 2 * L))
    expected = [0.25, -1 / 3]
    for k in range(L):
        f = 2**k * math.pi
        expected += [math.sin(f * 0.25), math.sin(-f / 3), math.cos(f * 0.25), math.cos(-f / 3)]
    assert torch.allclose(enc[0], torch.tensor(expected, dtype=D64), atol=1e-12, rtol=0)
    assert torch.allclose(positional_encoding(x, L, include_input=False), enc[:, 2:])
    # window: alpha = 0 keeps only the identity, alpha = 1.5 halves frequency 1 and removes frequency 2
    off = positional_encoding(x, L, alpha=0.0)
    assert torch.equal(off[:, :2], x) and torch.equal(off[:, 2:], torch.zeros(1, 4 * L, dtype=D64))
    half = positional_encoding(x, L, alpha=1.5)
    assert torch.allclose(half[:, 2:6], enc[:, 2:6], atol=1e-15, rtol=0)
    assert torch.allclose(half[:, 6:10], 0.5 * enc[:, 6:10], atol=1e-15, rtol=0)
    assert torch.equal(half[:, 10:], torch.zeros(1, 4, dtype=D64))
    assert torch.allclose(positional_encoding(x, L, alpha=float(L)), enc)


def test_sample_pdf_delta_weight_lands_in_its_bin():
    R, B, n, k = 3, 64, 128, 17
    bins = torch.linspace(2.0, 6.0, B + 1, dtype=D64).expand(R, -1).contiguous()
    weights = torch.zeros(R, B, dtype=D64)
    weights[:, k] = 5.0
    for det in (True, False):
        s = sample_pdf(bins, weights, n, deterministic=det, generator=torch.Generator().manual_seed(1))
        assert s.shape == (R, n)
        assert ((s >= bins[0, k]) & (s <= bins[0, k + 1])).all(), det
        assert (torch.diff(s, dim=-1) >= 0).all()


def test_sample_pdf_uniform_weights_give_uniform_quantiles():
    R, B, n = 2, 10, 40
    bins = torch.linspace(0.0, 2.0, B + 1, dtype=D64).expand(R, -1).contiguous()
    s = sample_pdf(bins, torch.ones(R, B, dtype=D64), n, deterministic=True)
    quantiles = 2.0 * (torch.arange(n, dtype=D64) + 0.5) / n
    assert torch.allclose(s, quantiles.expand(R, -1), atol=1e-12, rtol=0)
    # random draws: empirical CDF close to uniform (Kolmogorov-Smirnov distance)
    r = sample_pdf(bins[:1], torch.ones(1, B, dtype=D64), 20000, generator=torch.Generator().manual_seed(2))
    ecdf = torch.arange(1, 20001, dtype=D64) / 20000
    assert (ecdf - r[0] / 2.0).abs().max() < 0.02


def test_stratified_samples_stay_in_their_bins_and_are_sorted():
    near, far, R, S = 2.0, 6.0, 50, 16
    t = stratified_samples(near, far, R, S, perturb=True, generator=torch.Generator().manual_seed(3))
    edges = torch.linspace(near, far, S + 1)
    assert ((t >= edges[:-1]) & (t <= edges[1:])).all()
    assert (torch.diff(t, dim=-1) > 0).all()
    assert t.std(dim=0).min() > 0.01  # perturbed: rays differ
    mid = stratified_samples(near, far, R, S, perturb=False)
    assert torch.allclose(mid, (0.5 * (edges[:-1] + edges[1:])).expand(R, -1))


def test_hierarchical_samples_merge_sorted_and_follow_the_weights():
    R, Nc, Nf = 4, 32, 64
    t_c = stratified_samples(0.0, 1.0, R, Nc, perturb=False)
    weights = torch.zeros(R, Nc)
    weights[:, 20] = 1.0
    t = hierarchical_samples(t_c, weights, Nf, deterministic=True)
    assert t.shape == (R, Nc + Nf)
    assert (torch.diff(t, dim=-1) >= 0).all()
    assert torch.isin(t_c, t).all()  # every coarse sample kept
    # the fine samples concentrate between the coarse midpoints around sample 20
    lo, hi = 0.5 * (t_c[0, 19] + t_c[0, 20]), 0.5 * (t_c[0, 20] + t_c[0, 21])
    assert ((t >= lo) & (t <= hi)).sum(-1).min() >= Nf


def test_rays_centre_pixel_looks_down_the_camera_axis():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=D64))
    q = q * torch.sign(torch.det(q))  # a proper rotation
    c2w = torch.cat([q, torch.tensor([[1.0], [-2.0], [0.5]], dtype=D64)], dim=1)
    H, W, f = 5, 7, 4.0
    o, d = rays_from_camera(H, W, f, c2w)
    assert o.shape == d.shape == (H, W, 3)
    assert torch.allclose(o, c2w[:3, 3].expand(H, W, 3))
    assert torch.allclose(d.norm(dim=-1), torch.ones(H, W, dtype=D64))
    assert torch.allclose(d[H // 2, W // 2], -c2w[:3, 2], atol=1e-12, rtol=0)  # OpenGL: looks down -z
    # right of centre leans along camera +x, the row above along camera +y; the angle matches the pinhole
    assert (d[H // 2, W // 2 + 1] @ c2w[:3, 0]).item() > 0
    assert (d[H // 2 - 1, W // 2] @ c2w[:3, 1]).item() > 0
    cos = (d[H // 2, W // 2 + 1] @ -c2w[:3, 2]).item()
    assert cos == pytest.approx(math.cos(math.atan(1.0 / f)), abs=1e-12)
