"""Generative adversarial nets (Goodfellow et al. 2014, arXiv:1406.2661), the MNIST model, on the common loop.

A generator G maps noise z ~ p_z to an image; a discriminator D(x) in (0, 1) is the probability that x came from
the data rather than from G. They play the two-player minimax game (eq. 1)

    min_G max_D V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p_z}[log(1 - D(G(z)))]

trained by Algorithm 1: each iteration takes k discriminator steps, each on m real images and m noise samples,

    ascend  (1/m) sum_i [ log D(x_i) + log(1 - D(G(z_i))) ]              (D step, k times)

then one generator step on m fresh noise samples, with one of two objectives (``generator_loss``):

    minimax:         descend (1/m) sum_i log(1 - D(G(z_i)))                (Algorithm 1 as written)
    non_saturating:  ascend  (1/m) sum_i log D(G(z_i))                     (Sec. 3: "rather than training G to
                                                                            minimize log(1 - D(G(z))) ... maximize
                                                                            log D(G(z))": strong gradients early)

D outputs a logit a with D = sigmoid(a), so log D = logsigmoid(a) and log(1 - D) = logsigmoid(-a), exact where
D saturates. Models (the released mnist.yaml): G is an MLP of ReLU layers (1200, 1200) with a sigmoid output of
28x28 pixels in [0, 1], noise only at its input, z_dim 100; D is two maxout layers (240 units of 5 pieces) and a
sigmoid unit, trained with dropout (input 0.2, hidden 0.5). Evaluation is the paper's Parzen-window estimate
(:mod:`trainables.parzen`) of held-out images under G's samples, sigma chosen on val, reported on test.

Deviations, on purpose: z ~ U(-1, 1)^z_dim (the paper says only "noise"; the released code drew N(0, 1)); Adam
instead of SGD with momentum (see ``GAN_DEFAULTS``); PyTorch's default initialisation of the weights (the
released code: uniform in +-0.05 for G, +-0.005 for D) but its data-marginal init of G's output biases; the
evaluation uses fewer Parzen samples than the paper's 10,000 (configurable).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.batching import BatchLoader, pixel_loader
from trainables.context import Context, unwrap
from trainables.data import DatasetBundle
from trainables.image_grid import save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit, load_data, validate_loop_config
from trainables.optim import build_optimizers_per_model
from trainables.parzen import PAPER_SIGMAS, parzen_evaluate
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.task import Task

GENERATOR_LOSSES = ("minimax", "non_saturating")
GAN_METRICS: dict[str, str] = {"val_parzen_ll": "max", "test_parzen_ll": "max",
                               "train_d_loss": "min", "train_g_loss": "min"}

GAN_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "z_dim": 100,
    "g_hidden": [1200, 1200],  # ReLU layers of G
    "d_units": [240, 240],  # maxout layers of D
    "d_pieces": 5,  # linear pieces per maxout unit
    "d_input_dropout": 0.2,  # the released code: input include probability 0.8, hidden 0.5
    "d_dropout": 0.5,
    "g_output_bias": "marginals",  # G's output biases: logit of the data's pixel means (released code) or "default"
    "k_steps": 1,  # discriminator steps per generator step (the paper's experiments: k = 1)
    "generator_loss": "non_saturating",  # what the paper trained with in practice (Sec. 3)
    "steps_per_epoch": 0,  # > 0: iterations of Algorithm 1 per report; 0: one pass of k-batch groups
    "parzen_samples": 1000,  # the paper: 10,000 (see trainables/parzen.py)
    "parzen_points": 500,  # held-out images of val (sigma) and of test (the estimate), each at most
    "parzen_sigmas": list(PAPER_SIGMAS),
    "sample_grid": 64,  # images in samples.png, from a fixed z
    # The paper's SGD (lr 0.1, momentum 0.5 -> 0.7, lr decay 1.000004 per step) needs hours of steps; Adam with
    # beta1 = 0.5 (Radford et al. 2016's GAN setting: a smaller first moment damps the oscillation of the game)
    # learns in CPU minutes. Measured at these sizes, 20 passes (700 iterations, ~3 min on one thread), seed 0:
    # lr 1e-3 gave varied, recognisable digits (val / test Parzen -26 / -47); 5e-4: -38 / -68, fewer modes;
    # 2e-4: -56 / -88 after 1050 iterations, two modes. A constant rate: the game has no optimum to anneal to.
    "optimizer": "adam",
    "lr": 1e-3,
    "betas": [0.5, 0.999],
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "batch_size": 100,  # m, as in the released code
    "epochs": 20,
}


class Maxout(nn.Module):
    """h_i(x) = max_{j in [1, k]} z_ij,  z_ij = x^T W_{.ij} + b_ij   (Goodfellow et al. 2013, eq. 1)."""

    def __init__(self, in_features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)  # all z_ij in one product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x).view(len(x), self.units, self.pieces)  # z_ij, unit i, piece j
        return z.max(dim=2).values  # h_i = max_j z_ij


def generator(z_dim: int, hidden: list[int], image_shape: tuple[int, ...]) -> nn.Sequential:
    """G(z): ReLU layers, then a sigmoid layer of prod(image_shape) pixels in [0, 1], shaped as images."""
    widths = [z_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    d = int(torch.tensor(image_shape).prod())  # pixels
    return nn.Sequential(*layers, nn.Linear(widths[-1], d), nn.Sigmoid(), nn.Unflatten(1, tuple(image_shape)))


def discriminator(image_shape: tuple[int, ...], units: list[int], pieces: int, input_dropout: float,
                  dropout: float) -> nn.Sequential:
    """The logit a(x) of D(x) = sigmoid(a(x)): dropout on each layer's input, maxout layers, one linear unit."""
    widths = [int(torch.tensor(image_shape).prod()), *units]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Dropout(input_dropout if i == 0 else dropout), Maxout(a, b, pieces)]
    return nn.Sequential(*layers, nn.Dropout(dropout if units else input_dropout), nn.Linear(widths[-1], 1),
                         nn.Flatten(0))


def sample_noise(m: int, z_dim: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ U(-1, 1)^z_dim, m rows."""
    return torch.rand(m, z_dim, generator=generator).to(device) * 2.0 - 1.0


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-(1/m) sum [log D(x) + log(1 - D(G(z)))]: D ascends V by descending this."""
    return -(F.logsigmoid(real_logits).mean() + F.logsigmoid(-fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """What G descends: (1/m) sum log(1 - D(G(z))) (minimax) or -(1/m) sum log D(G(z)) (non_saturating)."""
    if kind == "minimax":
        return F.logsigmoid(-fake_logits).mean()  # log(1 - D) = log sigmoid(-a)
    if kind == "non_saturating":
        return -F.logsigmoid(fake_logits).mean()  # -log D = -log sigmoid(a)
    raise ValueError(f"generator_loss {kind!r} is not one of {GENERATOR_LOSSES}")


class GanTask(Task):
    """Algorithm 1 on the common loop: a batch is k real minibatches, a step is one iteration (k D steps, 1 G step)."""

    manual_optimization = True

    def __init__(self, data: DatasetBundle, config: Mapping[str, Any]) -> None:
        self.data, self.config = data, dict(config)
        self.k, self.m, self.z_dim = int(config["k_steps"]), int(config["batch_size"]), int(config["z_dim"])
        self.steps_per_epoch = int(config["steps_per_epoch"]) or None
        self._train: BatchLoader | None = None
        fixed = torch.Generator().manual_seed(int(config["seed"]))  # the same z every epoch: comparable pictures
        self.grid_z = sample_noise(int(config["sample_grid"]), self.z_dim, fixed)
        self.eval_z = sample_noise(int(config["parzen_samples"]), self.z_dim, fixed)
        n = int(config["parzen_points"])
        self.val_x, self.test_x = (pixels(split.subset(n).x) for split in (data.val, data.test))  # all digits

    def build_models(self) -> dict[str, nn.Module]:
        shape, c = self.data.input_shape, self.config
        return {"discriminator": discriminator(shape, c["d_units"], c["d_pieces"], c["d_input_dropout"],
                                               c["d_dropout"]),
                "generator": generator(self.z_dim, c["g_hidden"], shape)}

    def build_optimizers(self, models: Mapping[str, nn.Module],
                         config: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return build_optimizers_per_model(models, config)

    def initialize(self, models: Mapping[str, nn.Module], ctx: Context) -> None:
        """G's output biases start at the data's pixel marginals, b = logit(mean_n x_n) (the released code's
        init_sigmoid_bias_from_marginals, clipped to [1e-5, 1 - 1e-5]): G starts near the mean image and need not
        learn the always-black border first; ``g_output_bias = default`` keeps PyTorch's init (grey images).
        Measured: the untrained G's near-copies of the mean image already score about -80 nats under Parzen (grey
        ones about -540), about what 120 iterations reach: the estimate's weakness, so tests of learning use
        ``default``."""
        if self.config["g_output_bias"] != "marginals":
            return
        mean = pixels(self.data.train.x).mean(0).flatten().clamp(1e-5, 1.0 - 1e-5)
        last = [m for m in models["generator"].modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(mean))  # sigmoid(b) = mean pixel

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        if self._train is None:  # pixels in [0, 1]
            self._train = pixel_loader(self.data.train, batch_size=self.m, seed=int(self.config["seed"]),
                                       rank=ctx.rank, world_size=ctx.world_size, drop_last=True, device=ctx.device)
        self._train.set_epoch(epoch)
        return _groups((x for x, _ in self._train), self.k)

    def batch_size(self, batch: Any) -> int:
        return self.m

    def train_step(self, batch: list[torch.Tensor], step: int) -> dict[str, Any]:
        D, G = self.models["discriminator"], self.models["generator"]
        opt_d, opt_g = self.optimizers["discriminator"], self.optimizers["generator"]
        device = batch[0].device
        for x in batch:  # k discriminator steps, each on its own m real images and m noise samples
            with torch.no_grad():
                fake = unwrap(G)(sample_noise(self.m, self.z_dim, device=device))  # G(z_i), no gradient into G
            logits = D(torch.cat([x, fake]))  # one forward of D over both halves (one DDP forward per backward)
            real_logits, fake_logits = logits[:self.m], logits[self.m:]
            d_loss = discriminator_loss(real_logits, fake_logits)  # -(1/m) sum [log D(x) + log(1 - D(G(z)))]
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()  # ascend V in theta_d
        fake_logits_g = unwrap(D)(G(sample_noise(self.m, self.z_dim, device=device)))  # a(G(z_i)), fresh z
        g_loss = generator_loss(fake_logits_g, self.config["generator_loss"])
        opt_g.zero_grad()
        g_loss.backward(inputs=list(G.parameters()))  # gradients for theta_g only; D's weights stay untouched
        opt_g.step()  # descend in theta_g
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(real_logits).mean().detach(),  # D(x) on the last D step's batch
                "d_fake": torch.sigmoid(fake_logits).mean().detach()}  # D(G(z)) there

    @torch.no_grad()
    def evaluate(self, ctx: Context) -> dict[str, float]:
        D, G = unwrap(self.models["discriminator"]).eval(), unwrap(self.models["generator"]).eval()
        samples = G(self.eval_z.to(ctx.device)).cpu()
        metrics = parzen_evaluate(self.val_x, self.test_x, samples, self.config["parzen_sigmas"])
        # D's accuracy on held-out real images and as many samples: 0.5 at the game's equilibrium (D = 1/2)
        real = torch.sigmoid(D(self.val_x.to(ctx.device))).cpu()
        fake = torch.sigmoid(D(samples[:len(real)].to(ctx.device))).cpu()
        correct = float((real > 0.5).sum() + (fake < 0.5).sum())
        metrics.update({"val_d_accuracy": correct / (len(real) + len(fake)), "val_d_real": float(real.mean()),
                        "val_d_fake": float(fake.mean())})
        return metrics

    def write_artifacts(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        G = unwrap(self.models["generator"])
        with torch.no_grad():
            was_training = G.training
            images = G.eval()(self.grid_z.to(next(G.parameters()).device))
            G.train(was_training)
        save_image_grid(images, os.path.join(directory, "samples.png"), nrow=8)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1] (the paper's scaling of MNIST)."""
    return x.float() / 255.0


def _groups(batches: Iterable[torch.Tensor], k: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of k minibatches (one iteration of Algorithm 1 each); an incomplete last group is dropped."""
    group: list[torch.Tensor] = []
    for x in batches:
        group.append(x)
        if len(group) == k:
            yield group
            group = []


def validate_gan(config: dict[str, Any]) -> None:
    for key in ("z_dim", "d_pieces", "k_steps", "parzen_samples", "parzen_points", "sample_grid"):
        check_range(config, key, 1)
    check_range(config, "steps_per_epoch", 0)
    for key in ("d_input_dropout", "d_dropout"):
        check_range(config, key, 0.0, 1.0, high_open=True)
    check_choice(config, "generator_loss", GENERATOR_LOSSES)
    check_choice(config, "g_output_bias", ("marginals", "default"))
    for key in ("g_hidden", "d_units"):
        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in config[key]):
            raise ConfigError(f"{key}={config[key]!r} must be a list of positive layer widths")
    sigmas = config["parzen_sigmas"]
    if not sigmas or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in sigmas):
        raise ConfigError(f"parzen_sigmas={sigmas!r} must be a non-empty list of positive window widths")


@register("gan", defaults=GAN_DEFAULTS, validate=(validate_loop_config, validate_gan), metrics=GAN_METRICS,
          primary="val_parzen_ll", user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS)
def train_gan(config: dict[str, Any], ctx: Context) -> None:
    """Generative adversarial nets (Goodfellow et al. 2014): MLP generator, maxout discriminator, Parzen estimate."""
    data = load_data(config)
    groups = len(data.train.x) // ctx.world_size // int(config["batch_size"]) // int(config["k_steps"])
    if groups < 1:
        raise ConfigError(f"k_steps={config['k_steps']} x batch_size={config['batch_size']} needs more training "
                          f"images than the {len(data.train.x)} of {config['dataset']} (per rank)")
    fit(ctx, config, GanTask(data, config))
