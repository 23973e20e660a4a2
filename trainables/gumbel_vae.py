"""Categorical VAE with the Gumbel-softmax / Concrete relaxation (Jang et al. 2016, arXiv:1611.01144; Maddison et al.
2016, arXiv:1611.00712), against the score-function (REINFORCE) estimator.

N categorical latents z_n of K classes each, encoder q(z|x) = prod_n Cat(z_n; pi_n(x)), uniform prior p(z_n) = 1/K,
Bernoulli decoder p(x|z) = prod_d Bern(x_d; sigmoid(l_d(z))) on binarised MNIST-5k; MLP encoder and decoder.

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))
    KL      = sum_n sum_k pi_nk (log pi_nk - log(1/K))             analytic on the probabilities, as the papers' code
    gumbel: y_n = softmax((log pi_n + g_n) / tau),  g = -log(-log u), u ~ U(0, 1)   (Jang eq. 2; on the simplex)
            hard: z_n = one_hot(argmax_k y_nk) forward, grad of y_n backward         (straight-through Gumbel)
            loss = -(log p(x|y) - KL), differentiated by the reparameterisation through y
    score_function: z_n ~ Cat(pi_n) exactly;  grad E_q[f] = E_q[(f(z) - b) grad log q(z|x)],  f = log p(x|z)
            b = a moving average of f (decay ``baseline_decay``), or that plus a learned b(x) (``baseline: input``,
            NVIL's input-dependent baseline, trained on (f - c - b(x))^2)
    tau = max(tau_min, tau0 * exp(-r t)), recomputed every ``anneal_every`` steps t  (Jang Sec. 4; or fixed tau0)

Data: training images are binarised stochastically afresh every batch (x_d ~ Bern(pixel_d / 255), "dynamic"
binarisation); val and test are binarised once, the same way, with the fixed seed ``HELD_OUT_SEED`` whatever the
trial's seed, so held-out ELBOs are comparable across trials.

Metrics, in nats per image: ``train_elbo`` is the objective the estimator's own samples give (relaxed for the soft
Gumbel-softmax, so not the same quantity as the others); ``val_elbo`` and ``test_elbo`` are ALWAYS evaluated with
exact categorical samples z ~ Cat(pi) (``eval_samples`` per image, a fixed generator), whatever the estimator, so
every estimator is compared on the same objective, the true ELBO. ``temperature`` is the current tau.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.batching import BatchLoader, pixel_loader
from trainables.context import Context, unwrap
from trainables.data import DatasetBundle, Split
from trainables.image_grid import save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit, load_data, validate_loop_config
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.task import Task

ESTIMATORS = ("gumbel", "score_function")
BASELINES = ("moving_average", "input")
HELD_OUT_SEED = 1234  # binarises val and test identically in every trial
EVAL_SEED = 4321  # the exact categorical samples of the held-out ELBO: a function of the weights alone

GUMBEL_VAE_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "latents": 20,  # N: Jang et al.'s MNIST VAE has 20 x 10 (200-dim); their notebook 30 x 10
    "classes": 10,  # K
    "hidden": [512, 256],  # encoder 784-512-256-NK, decoder NK-256-512-784 (Jang et al.'s MLP)
    "estimator": "gumbel",
    "hard": False,  # straight-through Gumbel-softmax
    "anneal": True,
    "tau0": 1.0,
    "tau_min": 0.5,  # the paper's schedule: tau = max(0.5, exp(-r t))
    "anneal_rate": 1e-4,  # r; the paper tried 1e-5 and 1e-4
    "anneal_every": 500,  # N: steps between temperature updates (the paper's 500)
    "baseline": "moving_average",
    "baseline_decay": 0.9,
    "eval_samples": 4,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "batch_size": 100,
    "epochs": 30,
}
GUMBEL_VAE_METRICS: dict[str, str] = {"train_elbo": "max", "val_elbo": "max", "test_elbo": "max",
                                      "temperature": "min"}


# ---- the mathematics --------------------------------------------------------------------------------------------
def gumbel_softmax_sample(log_pi: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """A Gumbel-softmax sample over the last axis of ``log_pi`` (normalised log-probabilities); ``hard``: one-hot
    forward with the soft sample's gradient. Same law as ``RelaxedOneHotCategorical(tau, logits).rsample()``."""
    u = torch.rand_like(log_pi).clamp(torch.finfo(log_pi.dtype).tiny, 1.0)
    g = -torch.log(-torch.log(u))  # g ~ Gumbel(0, 1)
    y = F.softmax((log_pi + g) / tau, dim=-1)  # y = softmax((log pi + g) / tau)
    if not hard:
        return y
    z = F.one_hot(y.argmax(-1), log_pi.shape[-1]).to(y.dtype)  # z = one_hot(argmax_k y_k)
    return z - y.detach() + y  # forward z, backward dz/dtheta := dy/dtheta (straight-through)


def categorical_sample(log_pi: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact one-hot samples z ~ Cat(pi) over the last axis (OneHotCategorical's law, with a generator)."""
    flat = log_pi.exp().reshape(-1, log_pi.shape[-1])
    index = torch.multinomial(flat, 1, generator=generator).squeeze(1)
    return F.one_hot(index, log_pi.shape[-1]).to(log_pi.dtype).reshape(log_pi.shape)


def kl_to_uniform(log_pi: torch.Tensor) -> torch.Tensor:
    """KL(q || Uniform) per image from (B, N, K) log-probabilities: sum_{n,k} pi_nk (log pi_nk + log K)."""
    return (log_pi.exp() * (log_pi + math.log(log_pi.shape[-1]))).sum((-2, -1))


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_d x_d log s(l_d) + (1 - x_d) log(1 - s(l_d)) per image, s = sigmoid."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def log_q(z: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """log q(z|x) = sum_n log pi_{n, z_n} of one-hot (B, N, K) samples, per image."""
    return (z * log_pi).sum((-2, -1))


def score_function_surrogate(f: torch.Tensor, log_q_z: torch.Tensor, baseline: torch.Tensor | float) -> torch.Tensor:
    """A zero whose gradient is the REINFORCE estimate (1/B) sum_i (f_i - b_i) grad log q(z_i|x_i) (s - stop(s):
    the reported loss stays -ELBO). ``f`` and ``baseline`` carry no gradient here."""
    s = ((f - baseline).detach() * log_q_z).mean()  # grad s = mean_i (f_i - b_i) grad log q(z_i|x_i)
    return s - s.detach()


def temperature_at(step: int, tau0: float, tau_min: float, rate: float, every: int) -> float:
    """tau = max(tau_min, tau0 exp(-r t)) at the last update step t = every * floor(step / every)."""
    t = every * (step // every)
    return max(tau_min, tau0 * math.exp(-rate * t))


# ---- models -----------------------------------------------------------------------------------------------------
def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def binarise(split: Split, seed: int) -> torch.Tensor:
    """(N, 1, H, W) float {0, 1} images: x_d ~ Bern(pixel_d / 255), drawn with a fixed seed."""
    return torch.bernoulli(split.x.float() / 255.0, generator=torch.Generator().manual_seed(seed))


class GumbelVaeTask(Task):
    """Encoder, decoder (and for ``baseline: input`` a baseline net) trained with one optimizer on the ELBO."""

    def __init__(self, data: DatasetBundle, config: Mapping[str, Any]) -> None:
        self.data, self.config = data, dict(config)
        self.N, self.K = int(config["latents"]), int(config["classes"])
        self.shape = data.input_shape
        self.pixels = math.prod(self.shape)
        self.tau = float(config["tau0"])  # task state: saved for an exact resume
        self.baseline_mean = 0.0  # c: moving average of the learning signal (score function)
        self.baseline_ready = False
        self.held_out = {name: binarise(split, HELD_OUT_SEED)
                         for name, split in (("val", data.val), ("test", data.test)) if len(split) > 0}
        self._train: BatchLoader | None = None

    def build_models(self) -> dict[str, nn.Module]:
        hidden = list(self.config["hidden"])
        models = {"encoder": mlp([self.pixels, *hidden, self.N * self.K]),  # logits of pi(x)
                  "decoder": mlp([self.N * self.K, *hidden[::-1], self.pixels])}  # Bernoulli logits l(z)
        if self.config["estimator"] == "score_function" and self.config["baseline"] == "input":
            models["baseline"] = mlp([self.pixels, *hidden[-1:], 1])  # b(x)
        return models

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[Any]:
        if self._train is None:  # batches of pixel / 255 in [0, 1]
            self._train = pixel_loader(self.data.train, batch_size=int(self.config["batch_size"]),
                                       seed=int(self.config["seed"]), rank=ctx.rank, world_size=ctx.world_size,
                                       device=ctx.device)
        self._train.set_epoch(epoch)
        return self._train

    def encode(self, x: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """(B, N, K) log pi(x), normalised per latent."""
        logits = (encoder or self.models["encoder"])(x.flatten(1)).view(-1, self.N, self.K)
        return F.log_softmax(logits, dim=-1)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, Any]:
        cfg = self.config
        gumbel = cfg["estimator"] == "gumbel"  # tau means nothing to the score function's exact samples
        if gumbel and cfg["anneal"] and step % int(cfg["anneal_every"]) == 0:
            self.tau = temperature_at(step, cfg["tau0"], cfg["tau_min"], cfg["anneal_rate"], cfg["anneal_every"])
        x = torch.bernoulli(batch[0])  # dynamic binarisation: x_d ~ Bern(pixel_d / 255), the loop's RNG
        log_pi = self.encode(x)
        kl = kl_to_uniform(log_pi)
        if gumbel:
            y = gumbel_softmax_sample(log_pi, self.tau, hard=bool(cfg["hard"]))
            elbo = bernoulli_log_likelihood(self.models["decoder"](y.flatten(1)).view_as(x), x) - kl
            return {"loss": -elbo.mean(), "elbo": elbo.mean().detach()}  # reparameterised gradient through y
        z = categorical_sample(log_pi.detach())  # exact samples: no gradient through z itself
        f = bernoulli_log_likelihood(self.models["decoder"](z.flatten(1)).view_as(x), x)  # learning signal
        if not self.baseline_ready:  # c starts at the first batch's mean, not at 0 (far from f ~ -500 nats)
            self.baseline_mean, self.baseline_ready = float(f.detach().mean()), True
        baseline: torch.Tensor | float = self.baseline_mean
        extra = f.new_zeros(())
        if "baseline" in self.models:
            b_x = self.models["baseline"](x.flatten(1)).squeeze(1)  # b(x) learns the residual f - c
            extra = ((f.detach() - self.baseline_mean - b_x) ** 2).mean()  # NVIL: min (f - c - b(x))^2 over b
            baseline = self.baseline_mean + b_x.detach()
        surrogate = score_function_surrogate(f, log_q(z, log_pi), baseline)
        d = float(cfg["baseline_decay"])
        self.baseline_mean = d * self.baseline_mean + (1 - d) * float(f.detach().mean())  # c <- d c + (1 - d) mean(f)
        # grad: decoder by grad f, encoder by REINFORCE plus the exact grad of -KL, b(x) by its squared error;
        # value: -ELBO (+ b(x)'s squared error)
        loss = -(f.mean() + surrogate - kl.mean()) + extra
        return {"loss": loss, "elbo": (f - kl).mean().detach()}

    @torch.no_grad()
    def exact_elbo(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Per-image ELBO with exact z ~ Cat(pi) (``samples`` draws averaged; the EVAL_SEED generator)."""
        encoder, decoder = unwrap(self.models["encoder"]), unwrap(self.models["decoder"])
        log_pi = self.encode(x, encoder)
        generator = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        likelihood = torch.zeros(len(x), device=x.device)
        for _ in range(samples):
            z = categorical_sample(log_pi, generator)
            likelihood += bernoulli_log_likelihood(decoder(z.flatten(1)).view_as(x), x) / samples
        return likelihood - kl_to_uniform(log_pi)  # E_q[log p(x|z)] - KL

    def evaluate(self, ctx: Context) -> dict[str, float]:
        for model in self.models.values():
            model.eval()
        samples = int(self.config["eval_samples"])
        return {f"{name}_elbo": float(self.exact_elbo(x.to(ctx.device), samples).mean())
                for name, x in self.held_out.items()}

    def epoch_metrics(self) -> dict[str, Any]:
        return {"temperature": self.tau}

    @torch.no_grad()
    def write_artifacts(self, directory: str) -> None:
        """``reconstructions.png``: rows of 8 held-out images (spread over the split), each row above its
        reconstructions (Bernoulli means with an exact z ~ Cat(pi)); ``samples.png``: decoder means of 64 z drawn
        from the uniform prior."""
        os.makedirs(directory, exist_ok=True)
        encoder, decoder = unwrap(self.models["encoder"]), unwrap(self.models["decoder"])
        device = next(decoder.parameters()).device
        held_out = next(iter(self.held_out.values()))
        rows = max(1, min(4, len(held_out) // 8))
        x = held_out[torch.linspace(0, len(held_out) - 1, 8 * rows).long()].to(device)  # spread over the split
        generator = torch.Generator(device=device).manual_seed(EVAL_SEED)
        z = categorical_sample(self.encode(x, encoder), generator)
        recon = torch.sigmoid(decoder(z.flatten(1))).view_as(x)
        # row 2r: images 8r..8r+7, row 2r+1: their reconstructions
        pairs = torch.stack([x.view(rows, -1, *self.shape), recon.view(rows, -1, *self.shape)], 1)
        pairs = pairs.reshape(-1, *self.shape)
        save_image_grid(pairs, os.path.join(directory, "reconstructions.png"), nrow=8)
        prior = torch.full((64, self.N, self.K), -math.log(self.K), device=device)  # p(z_n = k) = 1/K
        z = categorical_sample(prior, generator)
        save_image_grid(torch.sigmoid(decoder(z.flatten(1))).view(64, *self.shape),
                        os.path.join(directory, "samples.png"), nrow=8)

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "baseline_mean": self.baseline_mean, "baseline_ready": self.baseline_ready}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.baseline_mean, self.baseline_ready = float(state["baseline_mean"]), bool(state["baseline_ready"])


# ---- registration -----------------------------------------------------------------------------------------------
def validate_gumbel_vae(config: dict[str, Any]) -> None:
    check_range(config, "latents", 1)
    check_range(config, "classes", 2)
    if not config["hidden"] or not all(isinstance(h, int) and h >= 1 for h in config["hidden"]):
        raise ConfigError(f"hidden={config['hidden']!r} must be a non-empty list of positive layer widths")
    check_choice(config, "estimator", ESTIMATORS)
    check_choice(config, "baseline", BASELINES)
    check_range(config, "tau0", 0.0, low_open=True)
    check_range(config, "tau_min", 0.0, low_open=True)
    check_range(config, "anneal_rate", 0.0)
    check_range(config, "anneal_every", 1)
    check_range(config, "baseline_decay", 0.0, 1.0, high_open=True)
    check_range(config, "eval_samples", 1)
    if config["dataset"] not in ("mnist5k", "digits"):
        raise ConfigError(f"dataset={config['dataset']!r}: the Bernoulli decoder needs grey images "
                          "(mnist5k or digits)")


def canonical_gumbel_vae(config: dict[str, Any]) -> dict[str, Any]:
    """Keys that cannot change the run written as their defaults: the temperature keys under the score-function
    estimator (exact samples), the annealing keys when tau is fixed, the baseline keys under Gumbel-softmax."""
    defaults = GUMBEL_VAE_DEFAULTS
    if config.get("estimator") == "score_function":
        irrelevant: tuple[str, ...] = ("hard", "anneal", "tau0", "tau_min", "anneal_rate", "anneal_every")
    else:
        irrelevant = ("baseline", "baseline_decay")
        if not config.get("anneal"):
            irrelevant += ("tau_min", "anneal_rate", "anneal_every")
    config.update({key: defaults[key] for key in irrelevant})
    return config


@register("gumbel_vae", defaults=GUMBEL_VAE_DEFAULTS, validate=(validate_loop_config, validate_gumbel_vae),
          metrics=GUMBEL_VAE_METRICS, primary="val_elbo", user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS,
          canonical=canonical_gumbel_vae)
def train_gumbel_vae(config: dict[str, Any], ctx: Context) -> None:
    """Categorical VAE (N x K latents): Gumbel-softmax (soft / straight-through, annealed tau) or REINFORCE."""
    fit(ctx, config, GumbelVaeTask(load_data(config), config))
