"""Networks of Nerfies (Park et al. 2021, "Nerfies: Deformable Neural Radiance Fields", arXiv:2011.12948): the
template NeRF (coarse and fine MLPs) and the deformation field with its per-frame latent codes.

Deformation field (paper Sec. 3.2): an MLP T: (gamma_alpha(x), omega_i) -> warp, where omega_i is frame i's learned
deformation code and gamma_alpha the positional encoding with the coarse-to-fine window (nerf_render, eq. 8-9).

    SE(3) warp (eq. 4-5): the MLP outputs a screw axis S = (r; v) in R^6, theta = ||r||, w = r / theta, and
        e^{S theta} = [[e^{[w] theta}, G v / theta], [0, 1]] (v / theta because Nerfies divides v by theta),
        e^{[w] theta} = I + sin(theta) [w] + (1 - cos(theta)) [w]^2                  (Rodrigues, eq. 5)
        G = I theta + (1 - cos(theta)) [w] + (theta - sin(theta)) [w]^2
    written here in r = w theta with coefficients that are smooth at theta = 0 (Taylor series below 1e-3):
        R = I + A [r] + B [r]^2,   p = (I + B [r] + C [r]^2) v,
        A = sin(t)/t,  B = (1 - cos(t))/t^2,  C = (t - sin(t))/t^3,        x' = R x + p
    Translation warp (the paper's ablation): x' = x + v.

The last layer of the warp starts near zero (U(-1e-4, 1e-4), as in the Nerfies code), so every frame starts as the
identity warp and the template is first fitted as a plain NeRF. Codes start N(0, s^2) with s = 1/sqrt(code_dim) by
default (the spread of flax's nn.Embed, which the Nerfies code uses): codes that start nearly equal (s = 0.01)
give the warp almost nothing to tell frames apart by until they have grown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from trainables.nerf_render import positional_encoding

WARPS = ("none", "translation", "se3")
SMALL_THETA = 1e-3  # below this angle the Taylor series of A, B, C are exact to float precision


def skew(v: Tensor) -> Tensor:
    """[v]: (..., 3) -> (..., 3, 3) with [v] x = v cross x."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], -2)


def se3_exp(r: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(R (..., 3, 3), p (..., 3)) of the screw motion (r; v), r = w theta; see the module docstring."""
    theta2 = (r * r).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < SMALL_THETA ** 2
    t2 = torch.where(small, torch.ones_like(theta2), theta2)  # a safe theta^2: no 0/0 in the unused branch
    t = t2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 ** 2 / 120, torch.sin(t) / t)  # sin(t)/t
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 ** 2 / 720, (1 - torch.cos(t)) / t2)  # (1-cos t)/t^2
    c = torch.where(small, 1 / 6 - theta2 / 120 + theta2 ** 2 / 5040, (t - torch.sin(t)) / (t2 * t))  # (t-sin t)/t^3
    k = skew(r)
    k2 = k @ k
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    rotation = eye + a * k + b * k2  # e^{[w] theta} = I + sin(theta)[w] + (1 - cos(theta))[w]^2    -- eq. 5
    translation = ((eye + b * k + c * k2) @ v[..., None])[..., 0]  # G v / theta                   -- eq. 4
    return rotation, translation


def apply_se3(x: Tensor, r: Tensor, v: Tensor) -> Tensor:
    """x' = e^{S theta} x for points x (..., 3) and screw axes (r, v) (..., 3) each; the same map as
    :func:`se3_exp` written with cross products ([r] x = r cross x), about twice as fast as 3x3 matrices here."""
    theta2 = (r * r).sum(-1, keepdim=True)
    small = theta2 < SMALL_THETA ** 2
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = t2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 ** 2 / 120, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 ** 2 / 720, (1 - torch.cos(t)) / t2)
    c = torch.where(small, 1 / 6 - theta2 / 120 + theta2 ** 2 / 5040, (t - torch.sin(t)) / (t2 * t))
    rx, rv = torch.linalg.cross(r, x), torch.linalg.cross(r, v)
    rotated = x + a * rx + b * torch.linalg.cross(r, rx)  # R x = x + A [r] x + B [r]^2 x
    return rotated + v + b * rv + c * torch.linalg.cross(r, rv)  # + p = (I + B [r] + C [r]^2) v


def _mlp(inputs: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers)


class DeformationField(nn.Module):
    """T(x, omega_i): warps observation-frame points into the template (canonical) frame."""

    def __init__(self, num_frames: int, warp: str, code_dim: int = 8, num_freqs: int = 6, width: int = 64,
                 depth: int = 4, code_init_std: float = 0.35) -> None:
        super().__init__()
        if warp not in ("translation", "se3"):
            raise ValueError(f"warp must be 'translation' or 'se3', got {warp!r}")
        self.warp, self.num_freqs = warp, num_freqs
        self.codes = nn.Embedding(num_frames, code_dim)  # omega_i, one per frame (time)
        nn.init.normal_(self.codes.weight, std=code_init_std)
        self.trunk = _mlp(3 * (1 + 2 * num_freqs) + code_dim, width, depth)
        self.head = nn.Linear(width, 6 if warp == "se3" else 3)
        nn.init.uniform_(self.head.weight, -1e-4, 1e-4)  # start at the identity warp (the Nerfies code's init)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, frame: Tensor, alpha: float | None) -> Tensor:
        """x (R, S, 3), frame (R,) long -> warped points (R, S, 3); ``alpha`` windows the encoding (None: full)."""
        code = self.codes(frame)[:, None, :].expand(*x.shape[:-1], -1)
        out = self.head(self.trunk(torch.cat([positional_encoding(x, self.num_freqs, alpha), code], -1)))
        if self.warp == "translation":
            return x + out  # x' = x + v
        return apply_se3(x, out[..., :3], out[..., 3:])  # x' = R x + p                           -- eq. 4-5


class NerfMLP(nn.Module):
    """The template NeRF: gamma(x) -> density, (features, gamma(d)) -> colour (NeRF Fig. 7, smaller); with
    ``dir_freqs=None`` colour ignores the view direction (a Lambertian scene).

    Density is softplus(raw - 1) (as in mip-NeRF): never a dead ReLU, so a ray that renders black early still gets
    a gradient. Colour is a widened sigmoid, (1 + 2 eps) sigmoid - eps, so the black background (0) and saturated
    colours are reachable without infinite logits; its bias starts dark (the scene is mostly black background)."""

    def __init__(self, pos_freqs: int = 8, dir_freqs: int | None = 0, width: int = 128, depth: int = 6,
                 skip: int = 3, rgb_bias: float = -2.0, sigmoid_eps: float = 1e-3) -> None:
        super().__init__()
        self.pos_freqs, self.dir_freqs, self.skip, self.eps = pos_freqs, dir_freqs, skip, sigmoid_eps
        pos_dim = 3 * (1 + 2 * pos_freqs)
        dir_dim = 0 if dir_freqs is None else 3 * (1 + 2 * dir_freqs)  # None: Lambertian, no view direction
        self.layers = nn.ModuleList(
            nn.Linear(pos_dim if i == 0 else width + (pos_dim if i == skip else 0), width) for i in range(depth))
        self.sigma = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.rgb = nn.Sequential(nn.Linear(width + dir_dim, width // 2), nn.ReLU(), nn.Linear(width // 2, 3))
        nn.init.constant_(self.rgb[-1].bias, rgb_bias)

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """x (R, S, 3) template points, d (R, 3) unit ray directions -> sigma (R, S), rgb (R, S, 3)."""
        enc = positional_encoding(x, self.pos_freqs)
        h = enc
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(torch.cat([h, enc], -1) if i == self.skip else h))  # NeRF's skip connection
        sigma = nn.functional.softplus(self.sigma(h)[..., 0] - 1.0)
        feature = self.feature(h)
        if self.dir_freqs is not None:
            d_enc = positional_encoding(d, self.dir_freqs)[:, None, :].expand(*x.shape[:-1], -1)
            feature = torch.cat([feature, d_enc], -1)
        logits = self.rgb(feature)
        rgb = (1 + 2 * self.eps) * torch.sigmoid(logits) - self.eps  # the widened sigmoid
        return sigma, rgb


class Nerfies(nn.Module):
    """Coarse and fine template NeRFs sharing one deformation field (or none: a plain NeRF)."""

    def __init__(self, num_frames: int, warp: str, pos_freqs: int, dir_freqs: int | None, width: int, depth: int,
                 warp_freqs: int, warp_width: int, warp_depth: int, code_dim: int, code_init_std: float) -> None:
        super().__init__()
        if warp not in WARPS:
            raise ValueError(f"warp must be one of {WARPS}, got {warp!r}")
        self.coarse = NerfMLP(pos_freqs, dir_freqs, width, depth, skip=depth // 2)
        self.fine = NerfMLP(pos_freqs, dir_freqs, width, depth, skip=depth // 2)
        self.deform = None if warp == "none" else DeformationField(
            num_frames, warp, code_dim, warp_freqs, warp_width, warp_depth, code_init_std)

    def warp(self, x: Tensor, frame: Tensor, alpha: float | None) -> Tensor:
        """Observation points -> template points (the identity for a plain NeRF)."""
        return x if self.deform is None else self.deform(x, frame, alpha)

    def forward(self, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(self, *args)``: a training step's whole computation (coarse and fine passes, the elastic
        Jacobian, the background loss) as one forward. DDP averages the gradients only of what ran inside its
        wrapper's forward, and a step that reaches the network three ways cannot be one plain forward signature."""
        return compute(self, *args)
