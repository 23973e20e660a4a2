"""NeRF rendering mathematics (Mildenhall et al. 2020, "NeRF", arXiv:2003.08934) with the coarse-to-fine
positional-encoding window of Nerfies (Park et al. 2021, "Nerfies: Deformable Neural Radiance Fields",
arXiv:2011.12948). A library: no model, no Task; a NeRF/Nerfies trainable builds on these functions.

    gamma(x)  = (x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^{L-1} pi x), cos(2^{L-1} pi x))     NeRF eq. 4
    w_k(a)    = (1 - cos(pi * clamp(a - k, 0, 1))) / 2,   a = L * step / N  (clipped)          Nerfies eq. 8-9
    C(r)      = sum_i T_i (1 - exp(-sigma_i delta_i)) c_i,  T_i = exp(-sum_{j<i} sigma_j delta_j)    NeRF eq. 3

Camera convention (OpenGL / NeRF "blender"): camera x to the right, y up, looking down -z; ``c2w`` maps camera
to world coordinates, its 4th column is the camera centre. Pixel (row j, column i) is sampled at its centre.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

FAR_DELTA = 1e10  # NeRF: the last interval is "infinite", so a ray's remaining light ends on its last sample
PDF_EPS = 1e-5  # NeRF's padding of the coarse weights: a ray through empty space gets a uniform PDF, not 0/0


def window_alpha(step: int, num_freqs: int, anneal_steps: int) -> float:
    """Nerfies' alpha(t) = L * t / N, clipped to [0, L] (N = anneal_steps; N <= 0 means no annealing: L)."""
    if anneal_steps <= 0:
        return float(num_freqs)
    return float(min(max(num_freqs * step / anneal_steps, 0.0), num_freqs))


def window_weights(alpha: float, num_freqs: int) -> Tensor:
    """w_k(alpha) for k = 0..L-1: 0 before frequency k is reached, a cosine ease-in over [k, k+1], then 1."""
    k = torch.arange(num_freqs, dtype=torch.float64)
    # w_k(alpha) = (1 - cos(pi * clamp(alpha - k, 0, 1))) / 2        -- Nerfies eq. 9
    return (1.0 - torch.cos(math.pi * torch.clamp(alpha - k, 0.0, 1.0))) / 2.0


def positional_encoding(x: Tensor, num_freqs: int, alpha: float | None = None, include_input: bool = True) -> Tensor:
    """gamma(x) on the last axis (D): output (..., D * (include_input + 2 L)), laid out as
    [x, sin(2^0 pi x), cos(2^0 pi x), sin(2^1 pi x), cos(2^1 pi x), ...], each block D wide.
    With ``alpha`` (Nerfies) the k-th sin and cos are multiplied by w_k(alpha); the identity is never windowed."""
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)  # 2^k, k = 0..L-1
    xb = x[..., None, :] * (math.pi * freqs[:, None])  # (..., L, D): 2^k pi x
    sc = torch.stack([torch.sin(xb), torch.cos(xb)], dim=-2)  # (..., L, 2, D): (sin, cos) of frequency k
    if alpha is not None:
        w = window_weights(alpha, num_freqs).to(dtype=x.dtype, device=x.device)
        sc = sc * w[:, None, None]  # w_k(alpha) * (sin(2^k pi x), cos(2^k pi x))   -- Nerfies eq. 8
    enc = sc.flatten(-3)
    return torch.cat([x, enc], dim=-1) if include_input else enc


def rays_from_camera(height: int, width: int, focal: float, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Pinhole rays, OpenGL convention (x right, y up, camera looks down -z). ``c2w``: (3, 4) or (4, 4).
    Returns origins and unit directions, both (height, width, 3), in world coordinates."""
    dtype = c2w.dtype
    j, i = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    # camera-frame direction through the pixel centre: ((u - W/2)/f, -(v - H/2)/f, -1); rows grow downwards
    d_cam = torch.stack(
        [(i + 0.5 - width / 2) / focal, -(j + 0.5 - height / 2) / focal, -torch.ones_like(i)], dim=-1
    )
    d = d_cam @ c2w[:3, :3].T  # rotate into the world: d_world = R d_cam
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:3, 3].expand_as(d)  # every ray starts at the camera centre
    return o, d


def stratified_samples(
    near: float, far: float, num_rays: int, num_samples: int, perturb: bool = True,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> Tensor:
    """NeRF eq. 2: [near, far] in S equal bins, t_i ~ U[bin_i] (perturb) or the bin's midpoint. (R, S), sorted, on
    ``device`` (the draws come from ``generator``'s device when one is given, so a seeded CPU stream stays one)."""
    edges = torch.linspace(near, far, num_samples + 1, device=device)
    lower, upper = edges[:-1].expand(num_rays, -1), edges[1:].expand(num_rays, -1)
    if perturb:
        u = _uniform((num_rays, num_samples), edges.dtype, edges.device, generator)
    else:
        u = torch.full((num_rays, num_samples), 0.5, device=edges.device)
    # t_i = t_n + (i - 1 + u_i) (t_f - t_n) / S,   u_i ~ U[0, 1]
    return lower + (upper - lower) * u


def _uniform(shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
             generator: torch.Generator | None) -> Tensor:
    """U[0, 1) draws on ``device``; from ``generator`` (on its own device, then moved) when one is given."""
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return torch.rand(shape, dtype=dtype, generator=generator, device=generator.device).to(device)


def sample_pdf(
    bins: Tensor, weights: Tensor, n: int, deterministic: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Inverse-transform sampling of the piecewise-constant PDF with mass w_b on [bins_b, bins_{b+1}] (NeRF 5.2).
    bins (R, B+1) sorted, weights (R, B) >= 0 -> (R, n) sorted. ``deterministic`` uses the quantile midpoints
    u = (k + 1/2) / n instead of sorted uniform draws."""
    w = weights + PDF_EPS
    pdf = w / w.sum(dim=-1, keepdim=True)  # w_hat_b = w_b / sum_b' w_b'
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # (R, B+1), F(bins_b)
    cdf[..., -1] = 1.0  # exact, not a float sum that may fall short of 1
    num_rays = bins.shape[0]
    if deterministic:
        u = ((torch.arange(n, dtype=bins.dtype, device=bins.device) + 0.5) / n).expand(num_rays, n).contiguous()
    else:
        u = torch.sort(_uniform((num_rays, n), bins.dtype, bins.device, generator), dim=-1).values
    B = weights.shape[-1]
    idx = torch.searchsorted(cdf, u, right=True)  # first edge with F > u: u lies in bin idx - 1
    below = torch.clamp(idx - 1, 0, B)
    above = torch.clamp(idx, 0, B)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    denom = torch.where(cdf_hi - cdf_lo > 0, cdf_hi - cdf_lo, torch.ones_like(cdf_lo))
    # t = F^{-1}(u): linear inside the bin, since the CDF of a piecewise-constant PDF is piecewise linear
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def hierarchical_samples(
    t_coarse: Tensor, weights: Tensor, n_fine: int, deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """NeRF's fine pass: N_f samples from the coarse weights (bins between coarse midpoints, the interior weights
    as in the NeRF code), merged and sorted with the N_c coarse samples -> (R, N_c + N_f). No gradient flows
    into the sample positions."""
    mids = 0.5 * (t_coarse[..., 1:] + t_coarse[..., :-1])  # (R, N_c - 1) bin edges
    t_fine = sample_pdf(mids, weights[..., 1:-1].detach(), n_fine, deterministic, generator).detach()
    return torch.sort(torch.cat([t_coarse, t_fine], dim=-1), dim=-1).values


class Rendered(NamedTuple):
    rgb: Tensor  # (R, 3)
    depth: Tensor  # (R,)  expected termination distance sum_i w_i t_i
    acc: Tensor  # (R,)  accumulated opacity sum_i w_i = 1 - T_final
    weights: Tensor  # (R, S) w_i = T_i alpha_i


def render(sigma: Tensor, rgb: Tensor, t: Tensor, dirs: Tensor, white_background: bool = False) -> Rendered:
    """Volume rendering quadrature (NeRF eq. 3). sigma (R, S) >= 0, rgb (R, S, 3), t (R, S) sorted, dirs (R, 3)
    not necessarily unit: t is a parameter along d, so the metric length of an interval is delta_i * ||d||."""
    far = torch.full_like(t[..., :1], FAR_DELTA)
    delta = torch.cat([t[..., 1:] - t[..., :-1], far], dim=-1)  # delta_i = t_{i+1} - t_i, last = 1e10
    delta = delta * dirs.norm(dim=-1, keepdim=True)
    tau = sigma * delta  # optical depth of interval i
    alpha = 1.0 - torch.exp(-tau)  # alpha_i = 1 - exp(-sigma_i delta_i)
    # T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j)  (the sum form needs no 1e-10 guard)
    excl = torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau[..., :-1], dim=-1)], dim=-1)
    T = torch.exp(-excl)
    w = T * alpha  # w_i = T_i alpha_i
    acc = w.sum(dim=-1)
    colour = (w[..., None] * rgb).sum(dim=-2)  # C = sum_i w_i c_i
    if white_background:
        colour = colour + (1.0 - acc)[..., None]  # the light that passes every sample is white
    depth = (w * t).sum(dim=-1)  # D = sum_i w_i t_i
    return Rendered(colour, depth, acc, w)
