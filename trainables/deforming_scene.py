"""A small synthetic deforming scene with known cameras, for a Nerfies-style trainable (Park et al. 2021,
"Nerfies: Deformable Neural Radiance Fields", arXiv:2011.12948). A library: no model, no Task.

The scene is a few coloured soft ellipsoids in the box [-1, 1]^3. Primitive k has a centre c_k(t), semi-axes
a_k(t) (axis-aligned), a peak density s_k and a constant colour rgb_k. In its local coordinates
u = (x - c_k(t)) / a_k(t) its density is a compactly supported smooth bump (C^1, exactly 0 outside the ellipsoid):

    sigma_k(x, t) = s_k (1 - |u|^2)^2   for |u| < 1,  else 0
    sigma(x, t)   = sum_k sigma_k(x, t),      rgb(x, t) = sum_k sigma_k rgb_k / sum_k sigma_k   (black where 0)

Along a line through the centre with unit direction d the optical depth is closed form:
    int sigma_k = s_k L (16 / 15),   L = 1 / sqrt(sum_i d_i^2 / a_i^2)   (the half chord; L = radius for a sphere)
so a ray through the centre of a lone primitive on black renders rgb_k (1 - exp(-16/15 s_k L)).

Motion between t = 0 and t = 1 (time is per frame; it is not a rigid transform of the scene):
    c_k(t) = c_k + t * shift_k                                           (a translation, e.g. the red sphere)
    a_k(t) = a_k * (1 + g_k t) on axis ``stretch_axis``, a_k / sqrt(1 + g_k t) on the other two (volume kept)
A material point with local coordinates u is at x = c_k(t) + a_k(t) * u (:meth:`DeformingScene.material_point`).

Cameras (OpenGL, as trainables/nerf_render.py): one camera on an orbit of radius ``radius`` around the origin,
looking at it; train frame i has time t_i = i / (n - 1) and azimuth phi_0 + 2 pi i / n; held-out frame i has the
same time t_i and frame index i, seen from the azimuth half a step further on and a different elevation.
Ground truth is NeRF's quadrature (nerf_render.render) of the analytic field with many midpoint samples per ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from trainables.nerf_render import rays_from_camera, render, stratified_samples

BUMP_INTEGRAL = 16.0 / 15.0  # int_{-1}^{1} (1 - x^2)^2 dx: optical depth through a centre per unit s * L


@dataclass(frozen=True)
class Primitive:
    """A soft ellipsoid; ``shift`` is its displacement between t = 0 and t = 1, ``stretch`` its g_k."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    density: float
    colour: tuple[float, float, float]
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stretch: float = 0.0
    stretch_axis: int = 1

    def centre_at(self, t: float) -> Tensor:
        """c_k(t) = c_k + t shift_k, (3,) float64."""
        return torch.tensor(self.centre, dtype=torch.float64) + t * torch.tensor(self.shift, dtype=torch.float64)

    def axes_at(self, t: float) -> Tensor:
        """a_k(t): (1 + g t) on the stretch axis, 1/sqrt(1 + g t) on the others, so the volume is constant."""
        f = 1.0 + self.stretch * t
        scale = torch.full((3,), 1.0 / math.sqrt(f), dtype=torch.float64)
        scale[self.stretch_axis] = f
        return torch.tensor(self.axes, dtype=torch.float64) * scale


def default_primitives() -> tuple[Primitive, ...]:
    """Red sphere moving up 0.4, green sphere stretching along y to 1.6x (squashed in x and z), static blue."""
    return (
        Primitive((-0.5, -0.15, 0.0), (0.38, 0.38, 0.38), 10.0, (0.9, 0.15, 0.1), shift=(0.0, 0.4, 0.0)),
        Primitive((0.5, 0.05, 0.05), (0.32, 0.32, 0.32), 12.0, (0.15, 0.8, 0.2), stretch=0.6, stretch_axis=1),
        Primitive((0.05, -0.5, -0.5), (0.25, 0.25, 0.25), 14.0, (0.15, 0.3, 0.95)),
    )


@dataclass(frozen=True)
class DeformingScene:
    primitives: tuple[Primitive, ...] = field(default_factory=default_primitives)

    def material_point(self, k: int, u: Tensor, t: float) -> Tensor:
        """World position of the material point with local coordinates u (..., 3) of primitive k at time t."""
        p = self.primitives[k]
        return p.centre_at(t).to(u.dtype) + p.axes_at(t).to(u.dtype) * u  # x = c_k(t) + a_k(t) * u

    def density_and_colour(self, points: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """sigma (...,) >= 0 and rgb (..., 3) in [0, 1] of the scene at time t, analytic (see the module doc)."""
        sig_total = torch.zeros(points.shape[:-1], dtype=points.dtype)
        rgb_sum = torch.zeros(points.shape, dtype=points.dtype)
        for p in self.primitives:
            u = (points - p.centre_at(t).to(points.dtype)) / p.axes_at(t).to(points.dtype)
            # sigma_k = s_k (1 - |u|^2)^2 inside the ellipsoid, exactly 0 outside
            sig = p.density * torch.clamp(1.0 - (u * u).sum(dim=-1), min=0.0) ** 2
            sig_total = sig_total + sig
            rgb_sum = rgb_sum + sig[..., None] * torch.tensor(p.colour, dtype=points.dtype)
        # rgb = sum_k sigma_k rgb_k / sum_k sigma_k: the density-weighted mix where primitives overlap
        rgb = torch.where(sig_total[..., None] > 0, rgb_sum / sig_total.clamp(min=1e-12)[..., None], 0.0)
        return sig_total, rgb

    def centre_ray_colour(self, k: int, direction: Tensor, t: float) -> Tensor:
        """Closed-form colour of a ray through primitive k's centre (alone, on black): rgb_k (1 - exp(-16/15 s L))."""
        p = self.primitives[k]
        d = direction.to(torch.float64) / direction.to(torch.float64).norm()
        half_chord = 1.0 / torch.sqrt(((d / p.axes_at(t)) ** 2).sum())  # L = 1 / sqrt(sum d_i^2 / a_i^2)
        return torch.tensor(p.colour, dtype=torch.float64) * (1.0 - torch.exp(-BUMP_INTEGRAL * p.density * half_chord))


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """(4, 4) camera-to-world, OpenGL: the camera looks down its -z axis at ``target`` (origin), y roughly ``up``."""
    eye = eye.to(torch.float64)
    target = torch.zeros(3, dtype=torch.float64) if target is None else target.to(torch.float64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) if up is None else up.to(torch.float64)
    z = eye - target
    z = z / z.norm()  # the camera looks along -z, so +z points from the target back to the eye
    x = torch.linalg.cross(up, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit_camera(azimuth: float, elevation: float, radius: float) -> Tensor:
    """A camera on the sphere of ``radius`` at (azimuth, elevation) in radians, looking at the origin."""
    eye = radius * torch.tensor([
        math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)
    ], dtype=torch.float64)
    return look_at(eye)


def focal_from_fov(width: int, fov_degrees: float) -> float:
    """Pinhole focal length in pixels from the horizontal field of view: f = (W / 2) / tan(fov / 2)."""
    return 0.5 * width / math.tan(math.radians(fov_degrees) / 2)


def render_image(
    scene: DeformingScene, c2w: Tensor, t: float, height: int, width: int, focal: float, near: float, far: float,
    num_samples: int = 384, white_background: bool = False,
) -> Tensor:
    """Ground truth (height, width, 3) float32 in [0, 1]: NeRF quadrature with midpoint samples (no noise)."""
    o, d = rays_from_camera(height, width, focal, c2w.to(torch.float64))
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    ts = stratified_samples(near, far, o.shape[0], num_samples, perturb=False).to(torch.float64)
    pts = o[:, None, :] + ts[..., None] * d[:, None, :]  # x = o + t d
    sigma, rgb = scene.density_and_colour(pts, t)
    out = render(sigma, rgb, ts, d, white_background=white_background)
    return out.rgb.clamp(0.0, 1.0).reshape(height, width, 3).float()


@dataclass(frozen=True)
class Frames:
    images: Tensor  # (N, H, W, 3) float32 in [0, 1]
    c2w: Tensor  # (N, 4, 4) float32, OpenGL camera-to-world
    times: Tensor  # (N,) float32 in [0, 1]
    index: Tensor  # (N,) int64: the frame (time) index, shared by a train frame and its held-out views


@dataclass(frozen=True)
class DeformingSceneData:
    train: Frames
    heldout: Frames
    near: float
    far: float
    focal: float
    height: int
    width: int
    scene: DeformingScene


def make_deforming_scene(
    n_frames: int = 12, size: int = 32, seed: int = 0, fov_degrees: float = 40.0, radius: float = 3.2,
    elevation_degrees: float = 20.0, heldout_elevation_degrees: float = 5.0, num_samples: int = 384,
    white_background: bool = False, scene: DeformingScene | None = None,
) -> DeformingSceneData:
    """Train frames on a turntable (one camera, one time per frame) and held-out views of the same times from
    other poses. The seed picks the start azimuth and a small elevation jitter per frame; same seed, same data."""
    if n_frames < 2 or not 8 <= size <= 64 or num_samples < 2:
        raise ValueError(f"need n_frames >= 2, 8 <= size <= 64, num_samples >= 2; got {n_frames}, {size}, "
                         f"{num_samples}")
    scene = DeformingScene() if scene is None else scene
    rng = np.random.default_rng(seed)
    phi0 = float(rng.uniform(0.0, 2 * math.pi))
    jitter = rng.uniform(-3.0, 3.0, size=(2, n_frames))  # degrees of elevation jitter, train and held-out
    step = 2 * math.pi / n_frames
    times = [i / (n_frames - 1) for i in range(n_frames)]
    near, far = radius - math.sqrt(3.0), radius + math.sqrt(3.0)  # the box [-1, 1]^3 lies within this range
    focal = focal_from_fov(size, fov_degrees)

    def frames(offset: float, elevation: float, jit: np.ndarray) -> Frames:
        c2ws = [orbit_camera(phi0 + step * (i + offset), math.radians(elevation + jit[i]), radius)
                for i in range(n_frames)]
        images = [render_image(scene, c, t, size, size, focal, near, far, num_samples, white_background)
                  for c, t in zip(c2ws, times, strict=True)]
        return Frames(torch.stack(images), torch.stack(c2ws).float(), torch.tensor(times, dtype=torch.float32),
                      torch.arange(n_frames))

    train = frames(0.0, elevation_degrees, jitter[0])
    heldout = frames(0.5, heldout_elevation_degrees, jitter[1])  # half a turntable step on, another elevation
    return DeformingSceneData(train, heldout, near, far, focal, size, size, scene)
