"""Nerfies (Park et al. 2021, "Nerfies: Deformable Neural Radiance Fields", arXiv:2011.12948) on the common loop.

A NeRF template (coarse + fine MLPs, stratified and hierarchical samples, volume rendering: trainables/nerf_render)
seen through a per-frame deformation field T(x, omega_i) (trainables/nerfies_networks: SE(3) or translation warp,
``warp: none`` is a plain NeRF). Data: the project's synthetic deforming scene or a Nerfies capture folder
(trainables/nerfies_data). Losses, per batch of rays r drawn across all training frames:

    L_rgb     = sum_{coarse, fine} mean_r ||C(r) - C_gt(r)||^2                                    (NeRF eq. 6)
    L_elastic = mean_r sum_i w_i rho(||log Sigma(x_i)||_F, c),  J_T(x) = U Sigma V^T         (Nerfies eq. 9-10)
    rho(x, c) = 2 (x/c)^2 / ((x/c)^2 + 4)                                  (Geman-McClure, Nerfies eq. 11)
    L_bg      = (1/K) sum_k ||T(x_k, omega) - x_k||_2   over static points x_k                   (Nerfies eq. 12)
    L = L_rgb + elastic_weight L_elastic + background_weight L_bg

The warp's positional encoding is windowed coarse to fine: alpha(t) = m t / N over N = ``warp_anneal_steps``
optimizer steps (Nerfies eq. 8-9; N = 0: all m frequencies from the start). Budget: ``steps_per_epoch`` optimizer
steps per report. Metrics: PSNR and SSIM of held-out views (other poses at training times), split into val and
test views; ``heldout.png`` and ``turntable.png`` as artifacts.

SSIM is written here (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, as in skimage's
``gaussian_weights=True`` setting) because neither torchmetrics nor scikit-image is installed in this environment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainables.context import Context, unwrap
from trainables.deforming_scene import make_deforming_scene, orbit_camera
from trainables.image_grid import save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit
from trainables.nerf_render import hierarchical_samples, render, stratified_samples, window_alpha
from trainables.nerfies_data import Capture, CaptureError, Views, check_capture, from_synthetic, read_capture
from trainables.nerfies_networks import WARPS, Nerfies
from trainables.optim import validate_optim_config
from trainables.registry import as_config_error, check_choice, check_range, register
from trainables.task import Task

NERFIES_METRICS: dict[str, str] = {"val_psnr": "max", "val_ssim": "max", "test_psnr": "max", "test_ssim": "max",
                                   "train_psnr": "max", "train_loss": "min"}
NERFIES_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "dataset": "deforming_scene",  # or "nerfies": a capture folder at data_dir
    "image_scale": 1,  # nerfies: read rgb/{image_scale}x
    "frames": 12, "image_size": 32, "scene_seed": 0,  # the synthetic scene (fixed across training seeds)
    "epochs": 8, "steps_per_epoch": 250, "batch_size": 512,  # rays per step, drawn across all frames
    "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "lr_schedule": "cosine", "lr_final": 0.05,
    "num_coarse": 32, "num_fine": 32,
    "pos_freqs": 6, "width": 64, "depth": 4,
    # The synthetic scene is Lambertian. With the view direction as an input, a plain NeRF can explain each training
    # frame's motion as view-dependent colour (every training frame has its own direction), which held-out views
    # then expose; without it, both models must explain frames by geometry (or, with a warp, by deformation).
    "use_viewdirs": False, "dir_freqs": 0,
    # Codes start at the spread of flax's nn.Embed (the Nerfies code): std 1/sqrt(code_dim); see nerfies_networks.
    "warp": "se3", "warp_freqs": 6, "warp_width": 64, "warp_depth": 4, "code_dim": 8, "code_init_std": 0.35,
    "warp_anneal_steps": 1000,  # N of alpha(t) = m t / N; 0 = full frequencies from the start
    "elastic_weight": 1e-3, "elastic_scale": 0.03, "elastic_rays": 64,  # lambda, Geman-McClure's c, rays per step
    "background_weight": 0.1, "background_points": 64,
    "eval_chunk": 4096,
}


def geman_mcclure(x: Tensor, c: float) -> Tensor:
    """rho(x, c) = 2 (x/c)^2 / ((x/c)^2 + 4)                                                  -- Nerfies eq. 11"""
    s = (x / c) ** 2
    return 2 * s / (s + 4)


def warp_jacobian(warp: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """J_T (..., 3, 3) of the points map ``warp`` at x (..., 3), differentiable (three reverse passes)."""
    x = x.detach().requires_grad_(True)
    y = warp(x)
    rows = [torch.autograd.grad(y[..., k].sum(), x, create_graph=True)[0] for k in range(3)]
    return torch.stack(rows, -2)  # J[k, j] = d y_k / d x_j


def elastic_loss(jacobian: Tensor, c: float) -> Tensor:
    """rho(||log Sigma||_F, c) per point: 0 for a rigid map (all singular values 1), > 0 for a stretch."""
    sigma = torch.linalg.svdvals(jacobian).clamp(min=1e-6)  # J = U Sigma V^T                        -- eq. 9
    norm = torch.log(sigma).pow(2).sum(-1).add(1e-12).sqrt()  # ||log Sigma - log I||_F                -- eq. 10
    return geman_mcclure(norm, c)


def psnr(mse: Tensor) -> Tensor:
    """PSNR = -10 log10(MSE) for images in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of images (N, H, W, C) in [0, 1] (Wang et al. 2004; 'valid' windows, channels averaged)."""
    x, y = a.permute(0, 3, 1, 2).double(), b.permute(0, 3, 1, 2).double()
    size = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    channels = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(z: Tensor) -> Tensor:
        return nn.functional.conv2d(z, kernel, groups=channels)

    c1, c2 = 0.01 ** 2, 0.03 ** 2  # (K1 L)^2, (K2 L)^2 with L = 1
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    # SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def load_capture(config: Mapping[str, Any]) -> Capture:
    """The synthetic scene (seeded by ``scene_seed``) or the capture folder at ``data_dir``."""
    if config["dataset"] == "nerfies":
        return read_capture(config["data_dir"], config["image_scale"])
    return from_synthetic(make_deforming_scene(n_frames=config["frames"], size=config["image_size"],
                                               seed=config["scene_seed"]))


def _subset(views: Views, keep: Tensor) -> Views:
    return Views(views.images[keep], views.c2w[keep], views.focal[keep], views.principal[keep], views.frame[keep])


class NerfiesTask(Task):
    """Rays of all training frames in one pool; each step renders a random batch through the warp and the NeRF."""

    def __init__(self, capture: Capture, config: Mapping[str, Any]) -> None:
        self.capture, self.config = capture, dict(config)
        self.steps_per_epoch = int(config["steps_per_epoch"])
        o, d = capture.train.rays()
        frames = capture.train.frame[:, None, None].expand(o.shape[:3])
        self.rays = {"o": o.reshape(-1, 3), "d": d.reshape(-1, 3), "rgb": capture.train.images.reshape(-1, 3),
                     "frame": frames.reshape(-1)}
        order = torch.arange(len(capture.val.images))
        self.splits = {"val": _subset(capture.val, order % 2 == 0), "test": _subset(capture.val, order % 2 == 1)}
        self.step = 0  # optimizer steps taken: the coarse-to-fine window of the evaluation follows it

    def build_models(self) -> dict[str, nn.Module]:
        c = self.config
        dir_freqs = c["dir_freqs"] if c["use_viewdirs"] else None
        return {"nerfies": Nerfies(self.capture.num_frames, c["warp"], c["pos_freqs"], dir_freqs, c["width"],
                                   c["depth"], c["warp_freqs"], c["warp_width"], c["warp_depth"], c["code_dim"],
                                   c["code_init_std"])}

    def train_batches(self, ctx: Context, epoch: int) -> Iterator[dict[str, Tensor]]:
        g = torch.Generator().manual_seed(1_000_003 * self.config["seed"] + 7_919 * epoch + ctx.rank)
        order = torch.randperm(len(self.rays["o"]), generator=g)
        size = self.config["batch_size"]
        for start in range(0, len(order) - size + 1, size):
            idx = order[start:start + size]
            yield {k: v[idx].to(ctx.device) for k, v in self.rays.items()}

    def alpha(self, step: int) -> float:
        """Nerfies eq. 8: alpha(t) = m t / N, clipped to [0, m]; N = 0 gives all m frequencies."""
        return window_alpha(step, self.config["warp_freqs"], self.config["warp_anneal_steps"])

    def render_rays(self, model: Nerfies, o: Tensor, d: Tensor, frame: Tensor, alpha: float,
                    train: bool) -> dict[str, Any]:
        """Coarse then fine pass (NeRF Sec. 5.2) of the bare ``model`` through the warp; returns both renderings and
        the coarse samples."""
        c = self.config
        t = stratified_samples(self.capture.near, self.capture.far, len(o), c["num_coarse"], perturb=train,
                               device=o.device).to(o.dtype)
        out: dict[str, Any] = {}
        for name, net in (("coarse", model.coarse), ("fine", model.fine)):
            if name == "fine":
                t = hierarchical_samples(t, out["coarse"].weights, c["num_fine"], deterministic=not train)
            x = o[:, None, :] + t[..., None] * d[:, None, :]  # x = o + t d
            sigma, rgb = net(model.warp(x, frame, alpha), d)
            out[name] = render(sigma, rgb, t, d)
            if name == "coarse":
                out["x_coarse"] = x
        return out

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Any]:
        alpha = self.alpha(step)
        # one forward of the (DDP-wrapped) model runs all of training_loss: every gradient is averaged over ranks
        loss, result = self.models["nerfies"](self.training_loss, batch, step, alpha)
        self.step = step + 1
        return {"loss": loss, **result, "warp_alpha": alpha}

    def training_loss(self, model: Nerfies, batch: dict[str, Tensor], step: int,
                      alpha: float) -> tuple[Tensor, dict[str, Tensor]]:
        """L = L_rgb + elastic_weight L_elastic + background_weight L_bg on the bare ``model`` (see the module)."""
        c = self.config
        out = self.render_rays(model, batch["o"], batch["d"], batch["frame"], alpha, train=True)
        mse_coarse = (out["coarse"].rgb - batch["rgb"]).pow(2).mean()
        mse_fine = (out["fine"].rgb - batch["rgb"]).pow(2).mean()
        loss = mse_coarse + mse_fine  # L_rgb: coarse and fine
        result: dict[str, Tensor] = {"mse_coarse": mse_coarse.detach(), "psnr": psnr(mse_fine.detach())}
        if model.deform is not None and c["elastic_weight"] > 0:
            n = min(c["elastic_rays"], len(batch["o"]))
            frame = batch["frame"][:n]
            jac = warp_jacobian(lambda x: model.warp(x, frame, alpha), out["x_coarse"][:n])
            weights = out["coarse"].weights[:n].detach()  # where the coarse pass says the surface is
            elastic = (weights * elastic_loss(jac, c["elastic_scale"])).sum(-1).mean()  # mean_r sum_i w_i rho
            loss = loss + c["elastic_weight"] * elastic
            result["elastic"] = elastic.detach()
        points = self.capture.static_points
        if model.deform is not None and c["background_weight"] > 0 and points is not None and len(points):
            g = torch.Generator().manual_seed(step)
            pick = torch.randint(len(points), (c["background_points"],), generator=g)
            x = points[pick].to(batch["o"].device)[:, None, :]
            frames = torch.randint(self.capture.num_frames, (len(x),), generator=g).to(x.device)
            background = (model.warp(x, frames, alpha) - x).norm(dim=-1).mean()  # (1/K) sum ||T(x_k) - x_k||
            loss = loss + c["background_weight"] * background
            result["background"] = background.detach()
        return loss, result

    @torch.no_grad()
    def render_views(self, views: Views, device: torch.device) -> Tensor:
        """Fine renderings (N, H, W, 3) of ``views`` with deterministic samples (midpoints, quantile midpoints)."""
        o, d = views.rays()
        n, h, w, _ = o.shape
        frame = views.frame[:, None, None].expand(n, h, w).reshape(-1)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        chunk, alpha, model = self.config["eval_chunk"], self.alpha(self.step), unwrap(self.models["nerfies"])
        parts = [self.render_rays(model, o[s:s + chunk].to(device), d[s:s + chunk].to(device),
                                  frame[s:s + chunk].to(device), alpha, train=False)["fine"].rgb.cpu()
                 for s in range(0, len(o), chunk)]
        return torch.cat(parts).clamp(0, 1).reshape(n, h, w, 3)

    def evaluate(self, ctx: Context) -> dict[str, float]:
        self.models["nerfies"].eval()
        metrics = {}
        for name, views in self.splits.items():
            if len(views.images) == 0:
                continue
            pred = self.render_views(views, ctx.device)
            mse = (pred - views.images).pow(2).flatten(1).mean(1)
            metrics[f"{name}_psnr"] = float(psnr(mse).mean())  # the mean of per-image PSNRs
            metrics[f"{name}_ssim"] = float(ssim(pred, views.images).mean())
        self.models["nerfies"].train()
        return metrics

    def write_artifacts(self, directory: str) -> None:
        """``heldout.png``: val views (top) and their renderings (bottom); ``turntable.png``: 8 views on an orbit
        at the first training camera's distance, the deformation code sweeping through the frames."""
        device = next(self.models["nerfies"].parameters()).device
        self.models["nerfies"].eval()
        val = self.splits["val"]
        shown = _subset(val, torch.arange(min(6, len(val.images))))
        pred = self.render_views(shown, device)
        images = torch.cat([shown.images, pred]).permute(0, 3, 1, 2)
        save_image_grid(images, os.path.join(directory, "heldout.png"), nrow=len(shown.images), scale=3)
        save_image_grid(self.turntable(device).permute(0, 3, 1, 2), os.path.join(directory, "turntable.png"),
                        nrow=8, scale=3)
        self.models["nerfies"].train()

    def turntable(self, device: torch.device, count: int = 8) -> Tensor:
        """``count`` renderings around the origin, frame k of them showing time k / (count - 1)."""
        train = self.capture.train
        radius = float(train.c2w[0, :3, 3].norm())
        elevation = math.asin(float(train.c2w[0, 1, 3]) / radius)
        c2w = torch.stack([orbit_camera(2 * math.pi * k / count, elevation, radius).float() for k in range(count)])
        frames = torch.tensor([round(k * (self.capture.num_frames - 1) / (count - 1)) for k in range(count)])
        views = Views(train.images[:1].expand(count, -1, -1, -1), c2w, train.focal[:1].expand(count),
                      train.principal[:1].expand(count, 2), frames)
        return self.render_views(views, device)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state.get("step", 0))


def canonical_warp(config: dict[str, Any]) -> dict[str, Any]:
    """A plain NeRF (``warp: none``) has no warp to anneal or regularise: those keys are written one way, so an
    ablation grid runs the plain NeRF once."""
    if config.get("warp") == "none":
        config.update(warp_anneal_steps=0, elastic_weight=0.0, background_weight=0.0)
    return config


def validate_nerfies(config: dict[str, Any]) -> None:
    check_choice(config, "dataset", ("deforming_scene", "nerfies"))
    check_choice(config, "warp", WARPS)
    for key in ("epochs", "steps_per_epoch", "batch_size", "num_coarse", "num_fine", "width", "depth",
                "warp_width", "warp_depth", "code_dim", "elastic_rays", "background_points", "eval_chunk",
                "image_scale"):
        check_range(config, key, 1)
    check_range(config, "num_coarse", 3)  # the fine pass needs interior coarse weights
    check_range(config, "frames", 2)
    check_range(config, "image_size", 8, 64)
    for key in ("pos_freqs", "dir_freqs", "warp_freqs", "warp_anneal_steps", "elastic_weight",
                "background_weight", "code_init_std"):
        check_range(config, key, 0)
    check_range(config, "elastic_scale", 0.0, low_open=True)
    validate_optim_config(config)
    if config["dataset"] == "nerfies":
        with as_config_error(CaptureError):
            check_capture(config["data_dir"])


@register("nerfies", defaults=NERFIES_DEFAULTS, validate=validate_nerfies, metrics=NERFIES_METRICS,
          primary="val_psnr", user_errors=(*LOOP_USER_ERRORS, CaptureError), paths=LOOP_PATHS,
          canonical=canonical_warp)
def train_nerfies(config: dict[str, Any], ctx: Context) -> None:
    """Nerfies (Park et al. 2021): a NeRF with per-frame deformation fields, coarse-to-fine and elastic loss."""
    fit(ctx, config, NerfiesTask(load_capture(config), config))
