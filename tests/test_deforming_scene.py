"""The synthetic deforming scene (trainables/deforming_scene.py) against its stated geometry and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.deforming_scene import (
    DeformingScene,
    Primitive,
    look_at,
    make_deforming_scene,
    render_image,
)
from trainables.nerf_render import rays_from_camera

torch.set_num_threads(1)
D64 = torch.float64
SMALL = dict(n_frames=4, size=16, num_samples=96)


@pytest.fixture(scope="module")
def data():
    return make_deforming_scene(seed=3, **SMALL)


def test_deterministic_per_seed(data):
    again = make_deforming_scene(seed=3, **SMALL)
    for a, b in [(data.train, again.train), (data.heldout, again.heldout)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.c2w, b.c2w)
        assert torch.equal(a.times, b.times) and torch.equal(a.index, b.index)
    other = make_deforming_scene(seed=4, **SMALL)
    assert not torch.allclose(other.train.c2w, data.train.c2w, atol=1e-3)


def test_dataset_shapes_and_ranges(data):
    for f in (data.train, data.heldout):
        assert f.images.shape == (4, 16, 16, 3) and f.images.dtype == torch.float32
        assert f.c2w.shape == (4, 4, 4) and f.times.shape == (4,) and f.index.tolist() == [0, 1, 2, 3]
        assert f.images.min() >= 0.0 and f.images.max() <= 1.0
        assert (f.images.amax(dim=(1, 2, 3)) > 0.3).all()  # every view sees some of the scene
    assert data.train.times.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert 0 < data.near < data.far and data.focal == pytest.approx(8 / math.tan(math.radians(20)))
    with pytest.raises(ValueError):
        make_deforming_scene(n_frames=1)


def test_density_at_centres_and_zero_far_away():
    scene = DeformingScene()
    for t in (0.0, 0.4, 1.0):
        for p in scene.primitives:
            sigma, rgb = scene.density_and_colour(p.centre_at(t)[None], t)
            assert sigma.item() == pytest.approx(p.density, rel=1e-12)  # the primitives do not overlap
            assert torch.allclose(rgb[0], torch.tensor(p.colour, dtype=D64))
        far = torch.tensor([[3.0, 0.0, 0.0], [0.0, -2.5, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=D64)
        sigma, rgb = scene.density_and_colour(far, t)
        assert (sigma == 0).all() and (rgb == 0).all()
        # inside the box everything is nonnegative, and at the boundary of each primitive the density is 0
        grid = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0), dtype=D64) * 2 - 1
        sigma, rgb = scene.density_and_colour(grid, t)
        assert (sigma >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()
        p = scene.primitives[1]
        edge = scene.material_point(1, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=D64), t)
        assert torch.allclose(scene.density_and_colour(edge, t)[0], torch.zeros(2, dtype=D64), atol=1e-12)
        assert p.axes_at(t).prod().item() == pytest.approx(math.prod(p.axes))  # the stretch keeps the volume


def _kabsch_residual(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS residual of the best rigid map of point set a onto b (Kabsch); 0 iff b is a rigid image of a."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    u, _, vt = torch.linalg.svd(ac.T @ bc)
    d = torch.sign(torch.linalg.det(vt.T @ u.T))
    R = vt.T @ torch.diag(torch.tensor([1.0, 1.0, d.item()], dtype=a.dtype)) @ u.T
    return ((ac @ R.T - bc) ** 2).sum(-1).mean().sqrt().item()


def test_deformation_moves_by_stated_amount_and_is_not_rigid():
    scene = DeformingScene()
    zero = torch.zeros(3, dtype=D64)
    red, green = scene.primitives[0], scene.primitives[1]
    moved = scene.material_point(0, zero, 1.0) - scene.material_point(0, zero, 0.0)
    assert torch.allclose(moved, torch.tensor(red.shift, dtype=D64)) and moved.norm() == pytest.approx(0.4)
    # the red density peak went with it: the old centre is now on the flank of the bump
    new_c, old_c = scene.material_point(0, zero, 1.0)[None], scene.material_point(0, zero, 0.0)[None]
    assert scene.density_and_colour(new_c, 1.0)[0].item() == pytest.approx(red.density)
    assert scene.density_and_colour(old_c, 1.0)[0].item() < 0.5 * red.density
    # green's top moves from 0.32 to 0.32 * 1.6 above its centre, its side in to 0.32 / sqrt(1.6)
    top, side = torch.tensor([0.0, 1.0, 0.0], dtype=D64), torch.tensor([1.0, 0.0, 0.0], dtype=D64)
    for t, f in [(0.0, 1.0), (1.0, 1.6)]:
        c = scene.material_point(1, zero, t)
        assert (scene.material_point(1, top, t) - c).norm().item() == pytest.approx(green.axes[1] * f)
        assert (scene.material_point(1, side, t) - c).norm().item() == pytest.approx(green.axes[0] / math.sqrt(f))
    # tracked material points: pairwise distances change, so no rigid motion maps t = 0 onto t = 1
    tracked = [(0, zero), (1, zero), (1, top), (1, side), (2, zero)]
    p0 = torch.stack([scene.material_point(k, u, 0.0) for k, u in tracked])
    p1 = torch.stack([scene.material_point(k, u, 1.0) for k, u in tracked])
    assert (torch.cdist(p0, p0) - torch.cdist(p1, p1)).abs().max() > 0.15
    assert _kabsch_residual(p0, p1) > 0.05
    assert _kabsch_residual(p0, p0 @ look_at(torch.tensor([1.0, 2.0, 3.0]))[:3, :3].T + 0.3) < 1e-9  # sanity


@pytest.mark.parametrize("t, eye, axis_scale", [
    (0.0, (0.3, 0.8, 2.5), 1.0),  # a sphere: the half chord is its radius from any direction
    (1.0, (2.6, 0.05, 0.05), 1 / math.sqrt(1.6)),  # the stretched ellipsoid seen along x: half chord a_x(1)
])
def test_pixel_through_centre_matches_closed_form(t, eye, axis_scale):
    p = Primitive((0.05, 0.05, 0.05), (0.32, 0.32, 0.32), 4.0, (0.2, 0.7, 0.4), stretch=0.6, stretch_axis=1)
    scene = DeformingScene((p,))
    c2w = look_at(torch.tensor(eye, dtype=D64), target=p.centre_at(t))
    size, near, far = 33, 1.0, 4.5  # odd size: pixel (16, 16) is exactly on the optical axis
    img = render_image(scene, c2w, t, size, size, focal=40.0, near=near, far=far, num_samples=512)
    L = p.axes[0] * axis_scale
    # C = rgb (1 - exp(-int sigma)),  int_{-L}^{L} s (1 - (x/L)^2)^2 dx = 16/15 s L
    expected = torch.tensor(p.colour) * (1 - math.exp(-16 / 15 * p.density * L))
    assert torch.allclose(img[16, 16], expected, atol=1e-4)  # midpoint quadrature: error ~1e-6
    direction = p.centre_at(t) - torch.tensor(eye, dtype=D64)
    assert torch.allclose(scene.centre_ray_colour(0, direction, t).float(), expected, atol=1e-6)
    assert img[0, 0].abs().max() == 0  # the corner ray misses the ellipsoid: black background


def test_cameras_look_at_the_origin(data):
    for c2w in torch.cat([data.train.c2w, data.heldout.c2w]).to(D64):
        o, d = rays_from_camera(33, 33, data.focal, c2w)
        o, d = o[16, 16], d[16, 16]
        assert torch.linalg.cross(o, d).norm() < 1e-5  # distance from the origin to the centre ray
        assert torch.dot(-o, d) > 0  # the origin is in front of the camera
        assert o.norm().item() == pytest.approx(3.2, abs=1e-5)
        assert (o.norm() - math.sqrt(3)) == pytest.approx(data.near)  # [-1, 1]^3 between near and far
        R = c2w[:3, :3]
        assert torch.allclose(R.T @ R, torch.eye(3, dtype=D64), atol=1e-6) and torch.linalg.det(R) > 0


def test_train_and_heldout_share_times_but_not_poses(data):
    assert torch.equal(data.train.times, data.heldout.times)
    assert torch.equal(data.train.index, data.heldout.index)
    centres_train, centres_held = data.train.c2w[:, :3, 3], data.heldout.c2w[:, :3, 3]
    assert ((centres_train - centres_held).norm(dim=-1) > 0.3).all()
    assert ((data.train.images - data.heldout.images).abs().amax(dim=(1, 2, 3)) > 0.1).all()
    # the scene moves: train frame 3 (t = 1) differs from the same camera rendering t = 0
    c2w, d = data.train.c2w[3].to(D64), data
    still = render_image(d.scene, c2w, 0.0, d.height, d.width, d.focal, d.near, d.far, num_samples=96)
    assert (still - data.train.images[3]).abs().max() > 0.1
    again = render_image(d.scene, c2w, 1.0, d.height, d.width, d.focal, d.near, d.far, num_samples=96)
    assert torch.allclose(again, data.train.images[3])
