"""DCGAN with vanilla, batch or weight normalization, and the reconstruction measure of Xiang & Li 2017
("On the Effects of Batch and Weight Normalization in Generative Adversarial Networks", arXiv:1704.03971).

The GAN (Goodfellow et al. 2014) with the usual non-saturating generator loss, D giving a logit s(x):

    D step:  L_D = -log sigmoid(s(x)) - log(1 - sigmoid(s(G(z))))     x a real batch, z ~ N(0, I)
    G step:  L_G = -log sigmoid(s(G(z)))                               (after D's step, on the same z)

one D step then one G step per batch, each with its own RMSProp (the paper's optimizer).

Networks (DCGAN, Radford et al. 2016, sized for H x W images with H, W divisible by 4; 28x28 MNIST here):

    G: z -> linear -> 2w x H/4 x W/4 -> convT 4x4/2 -> w x H/2 x W/2 -> convT 4x4/2 -> C x H x W -> sigmoid
    D: x -> conv 4x4/2 -> w x H/2 x W/2 -> conv 4x4/2 -> 2w x H/4 x W/4 -> conv (H/4 x W/4) -> logit

``norm`` (the paper's three arms, as in the authors' code):
- ``vanilla``: plain layers with biases, PReLU after every hidden layer of G and D;
- ``batch``: as vanilla with batch norm after every hidden layer except D's first (G's and D's last layers have
  none), as DCGAN does;
- ``weight``: strict weight-normalized hidden layers, each followed by TPReLU, in G and D; the output layers of
  both are affine weight-normalized (:mod:`trainables.gan_normalization`).

Images are in [0, 1] (G ends in a sigmoid), as in the authors' code. The reconstruction measure
(:func:`reconstruction_mse`) is the paper's objective score: the lower, the better G covers held-out images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.batching import BatchLoader, pixel_loader
from trainables.context import Context, unwrap
from trainables.data import DatasetBundle, known_input_shape
from trainables.gan_normalization import TPReLU, WNConv2d, WNConvTranspose2d, WNLinear
from trainables.image_grid import save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit, load_data, validate_loop_config
from trainables.optim import build_optimizers_per_model
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.task import Task

NORMS = ("vanilla", "batch", "weight")
DCGAN_METRICS: dict[str, str] = {"val_recon_mse": "min", "test_recon_mse": "min"}

DCGAN_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "augment": "none",
    "epochs": 10,
    "batch_size": 32,  # the authors' code
    # RMSProp as in the authors' code (alpha 0.9, eps 1e-6, lr 1e-4 for both nets); constant rate
    "optimizer": "rmsprop",
    "lr": 1e-4,
    "alpha": 0.9,
    "eps": 1e-6,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "norm": "weight",
    "z_dim": 100,
    "width": 32,  # channels of D's first layer / G's last hidden layer (the paper's DCGAN: 64)
    "steps_per_epoch": 0,  # > 0: exactly this many D+G steps per report; 0: one pass over the training split
    "recon_images": 100,  # held-out images per split in the reconstruction measure (a fixed random subset)
    "recon_steps": 50,  # RMSProp steps on z (the authors' running test: 50)
    "recon_lr": 0.01,  # the authors' running test
    "num_samples": 64,  # images in samples.png (a fixed z)
}


def _activation(norm: str, channels: int) -> nn.Module:
    return TPReLU(channels) if norm == "weight" else nn.PReLU(channels)


def _hidden(norm: str, layer: nn.Module, channels: int, batch_norm: bool = True) -> list[nn.Module]:
    """A hidden layer, then batch norm (``batch``, where allowed), then the activation."""
    bn = [nn.BatchNorm2d(channels)] if norm == "batch" and batch_norm else []
    return [layer, *bn, _activation(norm, channels)]


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, C, H, W) in [0, 1]."""

    def __init__(self, z_dim: int, width: int, image_shape: tuple[int, int, int], norm: str) -> None:
        super().__init__()
        c, h, w = image_shape
        self.start = (2 * width, h // 4, w // 4)
        weight = norm == "weight"
        units = 2 * width * (h // 4) * (w // 4)
        self.linear = WNLinear(z_dim, units) if weight else nn.Linear(z_dim, units)
        self.start_act = nn.Sequential(*_hidden(norm, nn.Identity(), 2 * width))
        up1 = (WNConvTranspose2d if weight else nn.ConvTranspose2d)(2 * width, width, 4, stride=2, padding=1)
        if weight:  # the output layer is affine weight-normalized, as in the paper
            up2: nn.Module = WNConvTranspose2d(width, c, 4, stride=2, padding=1, affine=True)
        else:
            up2 = nn.ConvTranspose2d(width, c, 4, stride=2, padding=1)
        self.body = nn.Sequential(*_hidden(norm, up1, width), up2, nn.Sigmoid())

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.start_act(self.linear(z).view(-1, *self.start)))


class Discriminator(nn.Module):
    """images (N, C, H, W) -> logits (N,)."""

    def __init__(self, width: int, image_shape: tuple[int, int, int], norm: str) -> None:
        super().__init__()
        c, h, w = image_shape
        conv = WNConv2d if norm == "weight" else nn.Conv2d
        down1, down2 = conv(c, width, 4, stride=2, padding=1), conv(width, 2 * width, 4, stride=2, padding=1)
        if norm == "weight":  # affine output layer: one full-size filter per image
            head: nn.Module = WNConv2d(2 * width, 1, (h // 4, w // 4), affine=True)
        else:
            head = nn.Conv2d(2 * width, 1, (h // 4, w // 4))
        self.body = nn.Sequential(*_hidden(norm, down1, width, batch_norm=False), *_hidden(norm, down2, 2 * width),
                                  head)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).flatten()


def reconstruction_mse(generator: nn.Module, images: Tensor, z_dim: int, steps: int,
                       lr: float) -> tuple[Tensor, Tensor]:
    """The reconstruction measure of Xiang & Li 2017 (arXiv:1704.03971): how closely the frozen generator can
    reproduce held-out images.

    For each image x, z starts at 0 and RMSProp (alpha 0.9, eps 1e-6, as the authors' code) takes ``steps``
    steps on  ||G(z) - x||^2 / D  (D pixels) with G's weights fixed; the score is that mean squared error at
    the last z. The per-image errors are summed for the gradient, so every image's z moves as if alone (the
    batch size does not scale its gradient). ``generator`` is used in eval mode (batch norm: running
    statistics) and left as it was. Returns (per-image MSE (N,), reconstructions G(z) (N, C, H, W)).
    """
    was_training = generator.training
    generator.eval()
    z = torch.zeros(len(images), z_dim, device=images.device, requires_grad=True)  # z_0 = 0
    optimizer = torch.optim.RMSprop([z], lr=lr, alpha=0.9, eps=1e-6)
    try:
        for _ in range(steps):
            per_image = (generator(z) - images).pow(2).flatten(1).mean(1)  # ||G(z) - x||^2 / D
            (z.grad,) = torch.autograd.grad(per_image.sum(), [z])  # G's parameters get no gradient: frozen
            optimizer.step()
        with torch.no_grad():
            recon = generator(z)
            return (recon - images).pow(2).flatten(1).mean(1), recon
    finally:
        generator.train(was_training)


class DCGANTask(Task):
    """Generator and discriminator, one RMSProp each; a D step then a G step per batch (manual optimization)."""

    manual_optimization = True

    def __init__(self, config: Mapping[str, Any], data: DatasetBundle) -> None:
        self.config, self.data = config, data
        self.z_dim, self.norm = int(config["z_dim"]), config["norm"]
        self.steps_per_epoch = int(config["steps_per_epoch"]) or None
        # A fixed z for samples.png: a function of the seed alone, so a resumed run shows the same digits.
        self.fixed_z = torch.randn(config["num_samples"], self.z_dim,
                                   generator=torch.Generator().manual_seed(int(config["seed"])))
        self.pairs: Tensor | None = None  # held-out images interleaved with their reconstructions
        self.loader: BatchLoader | None = None

    def build_models(self) -> dict[str, nn.Module]:
        shape, w = self.data.input_shape, int(self.config["width"])
        return {"generator": Generator(self.z_dim, w, shape, self.norm), "discriminator": Discriminator(w, shape,
                                                                                                        self.norm)}

    def build_optimizers(self, models: Mapping[str, nn.Module],
                         config: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return build_optimizers_per_model(models, config)

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        if self.loader is None:  # images in [0, 1]
            self.loader = pixel_loader(self.data.train, batch_size=int(self.config["batch_size"]),
                                       seed=int(self.config["seed"]), rank=ctx.rank, world_size=ctx.world_size,
                                       drop_last=True, device=ctx.device)
        self.loader.set_epoch(epoch)
        return (x for x, _ in self.loader)

    def train_step(self, batch: Tensor, step: int) -> dict[str, Any]:
        g, d = self.models["generator"], self.models["discriminator"]
        g_opt, d_opt = self.optimizers["generator"], self.optimizers["discriminator"]
        fake = g(torch.randn(len(batch), self.z_dim, device=batch.device))  # G(z), z ~ N(0, I)

        # D step: -log sigmoid(s(x)) - log(1 - sigmoid(s(G(z)))); real and fake in separate batches (batch norm
        # statistics are not mixed), each backpropagated at once (two forwards per backward would trouble DDP)
        d_opt.zero_grad()
        real_logits = d(batch)
        loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        loss_real.backward()
        fake_logits = d(fake.detach())
        loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        loss_fake.backward()
        d_opt.step()

        # G step: -log sigmoid(s(G(z))) against the updated D (the non-saturating loss)
        g_opt.zero_grad()
        logits = d(fake)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss_g.backward()
        g_opt.step()
        return {"d_loss": (loss_real + loss_fake).detach(), "g_loss": loss_g.detach(),
                "d_real": torch.sigmoid(real_logits).mean().detach(),
                "d_fake": torch.sigmoid(fake_logits).mean().detach()}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        generator = unwrap(self.models["generator"])
        n, metrics = int(self.config["recon_images"]), {}
        for name, split in (("val", self.data.val), ("test", self.data.test)):
            if len(split) == 0:
                continue
            # the same n images in every trial (Split.subset: a fixed random draw, all digits)
            images = split.subset(n).x.to(ctx.device).float() / 255.0
            mse, recon = reconstruction_mse(generator, images, self.z_dim, int(self.config["recon_steps"]),
                                            float(self.config["recon_lr"]))
            metrics[f"{name}_recon_mse"] = float(mse.mean())
            if name == "val":  # image, reconstruction, image, reconstruction ...
                k = min(32, len(images))
                self.pairs = torch.stack([images[:k], recon[:k]], 1).flatten(0, 1).cpu()
        return metrics

    def write_artifacts(self, directory: str) -> None:
        generator = unwrap(self.models["generator"])
        was_training = generator.training
        generator.eval()
        with torch.no_grad():
            samples = generator(self.fixed_z.to(next(generator.parameters()).device))
        generator.train(was_training)
        save_image_grid(samples, f"{directory}/samples.png", nrow=8)
        if self.pairs is not None:
            save_image_grid(self.pairs, f"{directory}/reconstructions.png", nrow=8)


def validate_dcgan(config: dict[str, Any]) -> None:
    check_choice(config, "norm", NORMS)
    for key in ("z_dim", "width", "recon_images", "recon_steps", "num_samples"):
        check_range(config, key, 1)
    check_range(config, "steps_per_epoch", 0)
    check_range(config, "recon_lr", 0.0, low_open=True)
    shape = known_input_shape(config["dataset"])
    if shape is not None and (shape[1] % 4 or shape[2] % 4):
        raise ConfigError(f"dataset {config['dataset']!r} ({shape[1]}x{shape[2]}): the DCGAN needs a height and "
                          "width divisible by 4")


@register("dcgan", defaults=DCGAN_DEFAULTS, validate=(validate_loop_config, validate_dcgan), metrics=DCGAN_METRICS,
          primary="val_recon_mse", user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS)
def train_dcgan(config: dict[str, Any], ctx: Context) -> None:
    """DCGAN (vanilla / batch / weight normalization, Xiang & Li 2017) scored by held-out reconstruction error."""
    fit(ctx, config, DCGANTask(config, load_data(config)))
