"""Attend, Infer, Repeat (Eslami et al. 2016, arXiv:1603.08575): counting and locating digits on multi-MNIST canvases
(:mod:`trainables.canvases`) with a variational autoencoder whose latent is a variable-length list of objects.

Generative model (N = ``max_steps`` objects at most; networks in :mod:`trainables.air_networks`, the spatial
transformer in :mod:`trainables.spatial_transformer`):

    p(n) geometric:  z_pres_i ~ Bernoulli(rho) while z_pres_{i-1} = 1   (rho annealed, below; once 0, stays 0)
    z_where_i ~ N((s_0, 0, 0), diag(sigma_s, sigma_xy, sigma_xy)^2),    z_what_i ~ N(0, I)
    x ~ N(sum_i z_pres_i place(decode(z_what_i), z_where_i), sigma_x^2 I)

Objective, per canvas (one sample of the inference network q, analytic KLs of the Gaussians):

    ELBO = log p(x|z) + sum_i [ z_pres_i (-KL(q(z_where_i) || p) - KL(q(z_what_i) || p))
                                + z_pres_{i-1} (log p(z_pres_i) - log q(z_pres_i)) ]

Gradients: reparameterisation for z_where and z_what (the samples are loc + scale * eps); the likelihood ratio for
the discrete z_pres_i (paper Sec. 2.2), each with its own learning signal, the ELBO terms it can influence (the
likelihood and steps j >= i), centred and scaled as in NVIL with a learned input-dependent baseline b_i:

    grad ~= grad ELBO + sum_i z_pres_{i-1} * (l_i - b_i - c_i) / max(1, sd) * grad log q(z_pres_i)
    baseline: min (l_i - c_i - b_i)^2,        c_i, sd: moving mean of l_i, moving sd of the centred signal

The prior's success probability rho is annealed log-linearly from ``prior_start`` (close to 1: objects are cheap
early, so the model learns to explain digits) to ``prior_end`` over ``anneal_steps`` optimizer steps (paper Sec. 3.1:
from near 1 to 1e-5 over 100k iterations), which then penalises every superfluous object and makes the count sparse.

Reported: count accuracy (greedy inference, z_pres_i = [p_i > 0.5], against the true count), the ELBO (nats per
canvas) on val and test, and ``test{k}_count_accuracy`` on canvases with exactly k > max_digits digits, more than
training ever showed (the paper's extrapolation test, ``eval_max_digits``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

from trainables.air_networks import AirNetwork, Baseline
from trainables.canvases import CanvasData, Canvases, load_canvas_data
from trainables.context import Context, unwrap
from trainables.image_grid import save_image_grid
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, fit, validate_loop_config
from trainables.optim import build_optimizer, validate_optim_config
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.spatial_transformer import where_to_box
from trainables.task import Task

EXTRAPOLATION = range(2, 6)  # test{k}_count_accuracy is declared for these k (eval_max_digits <= 5)
AIR_METRICS: dict[str, str] = {"val_count_accuracy": "max", "test_count_accuracy": "max", "val_elbo": "max",
                               "test_elbo": "max", "train_elbo": "max",
                               **{f"test{k}_count_accuracy": "max" for k in EXTRAPOLATION}}

AIR_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    "epochs": 20, "batch_size": 64, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "lr_schedule": "constant",
    "baseline_lr": 1e-3,  # the baseline's own Adam (keys prefixed baseline_ override the shared optimizer keys)
    "canvas_size": 50, "digit_size": 28, "max_digits": 2, "eval_max_digits": 3,
    "train_canvases": 10_000,  # fresh canvases of the train digits per epoch
    "val_canvases": 500, "test_canvases": 500,
    "max_steps": 3, "z_what_dim": 50, "lstm_size": 256, "hidden_size": 200, "glimpse_size": 20,
    "likelihood_std": 0.3, "scale_prior_std": 0.1, "shift_prior_std": 1.0,
    "prior_start": 0.99, "prior_end": 1e-5, "anneal_begin": 0,
    "anneal_steps": 3_000,  # about the default budget (20 x 157 steps); the paper: 100k iterations of a longer run
    "nvil_decay": 0.9,  # moving averages of the learning signal's mean and variance
}


def prior_success(step: int, start: float, end: float, begin: int, steps: int) -> float:
    """rho at optimizer ``step``: log rho moves linearly from log start to log end over [begin, begin + steps]."""
    t = min(1.0, max(0.0, (step - begin) / steps)) if steps > 0 else 1.0
    return math.exp(math.log(start) + t * (math.log(end) - math.log(start)))


def elbo_terms(x: torch.Tensor, q: Mapping[str, torch.Tensor], rho: float, prior_where: Normal,
               sigma_x: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ELBO (B,), learning signal l_i (B, N), log q(z_pres_i) (B, N)) of one inference pass ``q``."""
    pres, mask = q["z_pres"], q["mask"]
    log_lik = Normal(q["canvas"], sigma_x).log_prob(x).flatten(1).sum(1)  # log N(x; x_hat, sigma_x^2 I)
    kl_where = kl_divergence(Normal(q["where_loc"], q["where_scale"]), prior_where).sum(-1)  # KL(q(z_where_i) || p)
    kl_what = kl_divergence(Normal(q["what_loc"], q["what_scale"]), Normal(0.0, 1.0)).sum(-1)  # KL(q(z_what_i) || p)
    log_q_pres = mask * Bernoulli(probs=q["p_pres"]).log_prob(pres)  # log q(z_pres_i), sampled while z_pres_{i-1}=1
    log_p_pres = mask * Bernoulli(probs=torch.full_like(pres, rho)).log_prob(pres)  # log p(z_pres_i) = log rho^z..
    step_terms = pres * (-kl_where - kl_what) + log_p_pres - log_q_pres  # what step i adds to the ELBO
    elbo = log_lik + step_terms.sum(1)
    signal = log_lik[:, None] + step_terms.flip(1).cumsum(1).flip(1)  # l_i = log p(x|z) + sum_{j>=i} step_j
    return elbo, signal, log_q_pres


def air_loss(elbo: torch.Tensor, signal: torch.Tensor, log_q_pres: torch.Tensor, mask: torch.Tensor,
             baseline: torch.Tensor, stats: Baseline, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate loss whose gradient is the estimator of the module docstring, and the baseline's loss."""
    target = signal.detach()  # l_i
    with torch.no_grad():  # NVIL's moving mean c_i of l_i and variance of the centred signal
        count = mask.sum(0).clamp(min=1)
        batch_mean = (mask * target).sum(0) / count
        seen = mask.sum(0) > 0
        new_mean = torch.where(stats.started, decay * stats.mean + (1 - decay) * batch_mean, batch_mean)
        stats.mean.copy_(torch.where(seen, new_mean, stats.mean))
        centred = mask * (target - stats.mean - baseline)
        batch_var = centred.pow(2).sum() / mask.sum().clamp(min=1)
        stats.var.copy_(torch.where(stats.started, decay * stats.var + (1 - decay) * batch_var, batch_var))
        stats.started.fill_(True)
    advantage = (target - stats.mean - baseline.detach()) / stats.var.sqrt().clamp(min=1.0)  # (l_i - c_i - b_i) / sd
    surrogate = -(elbo + (mask * advantage * log_q_pres).sum(1)).mean()  # -(ELBO + sum_i A_i log q(z_pres_i))
    baseline_loss = (mask * (target - stats.mean - baseline).pow(2)).sum(1).mean()  # (l_i - c_i - b_i)^2
    return surrogate, baseline_loss


class AirTask(Task):
    """AIR on fresh multi-digit canvases each epoch; two optimizers (the model's and the baseline's)."""

    manual_optimization = True

    def __init__(self, data: CanvasData, config: Mapping[str, Any]) -> None:
        self.data, self.config = data, dict(config)
        scale_mean = config["digit_size"] / config["canvas_size"]
        self.prior_where = Normal(torch.tensor([scale_mean, 0.0, 0.0]), torch.tensor(
            [config["scale_prior_std"], config["shift_prior_std"], config["shift_prior_std"]]))

    def build_models(self) -> dict[str, nn.Module]:
        c = self.config
        air = AirNetwork(c["canvas_size"], c["digit_size"], c["glimpse_size"], c["max_steps"], c["z_what_dim"],
                         c["lstm_size"], c["hidden_size"], c["digit_size"] / c["canvas_size"])
        return {"air": air, "baseline": Baseline(c["canvas_size"], c["lstm_size"], c["hidden_size"], c["max_steps"])}

    def build_optimizers(self, models: Mapping[str, nn.Module], config: Mapping[str, Any]) -> dict[str, Any]:
        return {"air": build_optimizer(models["air"].parameters(), config),
                "baseline": build_optimizer(models["baseline"].parameters(), config, prefix="baseline_")}

    def train_batches(self, ctx: Context, epoch: int) -> Iterator[torch.Tensor]:
        seed = 1_000_003 * self.config["seed"] + 7_919 * epoch + ctx.rank  # a function of (seed, epoch, rank)
        canvases = self.data.train_canvases(self.config["train_canvases"] // ctx.world_size, seed)
        size = self.config["batch_size"]
        for start in range(0, len(canvases), size):
            yield canvases.x[start:start + size].to(ctx.device).float() / 255.0

    def _prior(self, device: torch.device) -> Normal:
        return Normal(self.prior_where.loc.to(device), self.prior_where.scale.to(device))

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, Any]:
        c = self.config
        rho = prior_success(step, c["prior_start"], c["prior_end"], c["anneal_begin"], c["anneal_steps"])
        q = self.models["air"](batch)
        elbo, signal, log_q_pres = elbo_terms(batch, q, rho, self._prior(batch.device), c["likelihood_std"])
        baseline = self.models["baseline"](batch, q["hidden"])
        surrogate, baseline_loss = air_loss(elbo, signal, log_q_pres, q["mask"], baseline,
                                            unwrap(self.models["baseline"]), c["nvil_decay"])
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=False)
        (surrogate + baseline_loss).backward()  # disjoint parameters: each loss trains only its own network
        for optimizer in self.optimizers.values():
            optimizer.step()
        return {"elbo": elbo.mean().detach(), "loss": surrogate.detach(), "baseline_loss": baseline_loss.detach(),
                "count": q["z_pres"].sum(1).mean(), "prior_rho": rho}

    @torch.no_grad()
    def score(self, canvases: Canvases, device: torch.device, chunk: int = 250) -> dict[str, float]:
        """Count accuracy (greedy inference) and the mean one-sample ELBO (seeded, outside the training RNG) under
        the final prior rho = prior_end, so ELBOs of different epochs and runs are comparable."""
        air = self.models["air"]
        air.eval()
        correct, elbo_sum = 0, 0.0
        # manual_seed seeds every device: fork the one we sample on too, so training's stream is left untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for start in range(0, len(canvases), chunk):
                x = canvases.x[start:start + chunk].to(device).float() / 255.0
                greedy = air(x, greedy=True)
                counts = greedy["z_pres"].sum(1).round().long().cpu()
                correct += int((counts == canvases.counts[start:start + chunk]).sum())
                elbo, _, _ = elbo_terms(x, air(x), self.config["prior_end"], self._prior(device),
                                        self.config["likelihood_std"])
                elbo_sum += float(elbo.sum())
        air.train()
        return {"count_accuracy": correct / max(1, len(canvases)), "elbo": elbo_sum / max(1, len(canvases))}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        metrics: dict[str, float] = {}
        named = {"val": self.data.val, "test": self.data.test,
                 **{f"test{k}": v for k, v in self.data.extrapolation.items()}}
        for name, canvases in named.items():
            scores = self.score(canvases, ctx.device)
            metrics[f"{name}_count_accuracy"] = scores["count_accuracy"]
            if name in ("val", "test"):
                metrics[f"{name}_elbo"] = scores["elbo"]
        return metrics

    @torch.no_grad()
    def write_artifacts(self, directory: str) -> None:
        """``reconstructions.png``: 8 val canvases of every count (top row) and their greedy reconstructions with the
        boxes of the objects AIR inferred (bottom row), and the same for canvases with more digits than training
        showed."""
        air = self.models["air"]
        air.eval()
        sets = [self.data.val] + [self.data.extrapolation[k] for k in sorted(self.data.extrapolation)]
        images, boxes = [], []
        for canvases in sets:
            x = canvases.x[_showcase(canvases.counts, 8)].float().to(next(air.parameters()).device) / 255.0
            q = air(x, greedy=True)
            size = x.shape[-1]
            inferred = [[tuple(where_to_box(q["z_where"][i, j:j + 1], size)[0].tolist())
                         for j in range(q["z_pres"].shape[1]) if q["z_pres"][i, j] > 0] for i in range(len(x))]
            images += [x, q["canvas"].clamp(0, 1)]
            boxes += [[] for _ in range(len(x))] + inferred
        air.train()
        save_image_grid(torch.cat(images).cpu(), os.path.join(directory, "reconstructions.png"), nrow=8, scale=3,
                        boxes=boxes)


def _showcase(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` canvases taking every count in turn (0, 1, 2, 0, 1, ...), the first of each, so a picture
    shows every count however the first canvases fell."""
    by_count = [torch.nonzero(counts == k).flatten().tolist() for k in sorted(set(counts.tolist()))]
    order = [ids[r] for r in range(len(counts)) for ids in by_count if r < len(ids)]
    return torch.tensor(order[:n], dtype=torch.long)


def validate_air(config: dict[str, Any]) -> None:
    check_choice(config, "dataset", ("mnist5k", "digits"))
    for key in ("canvas_size", "digit_size", "glimpse_size", "z_what_dim", "lstm_size", "hidden_size", "max_steps",
                "train_canvases", "val_canvases", "test_canvases"):
        check_range(config, key, 1)
    check_range(config, "max_digits", 1)
    check_range(config, "eval_max_digits", config["max_digits"], max(EXTRAPOLATION))
    if config["max_steps"] < config["eval_max_digits"]:
        raise ConfigError(f"max_steps={config['max_steps']} cannot count the eval_max_digits="
                          f"{config['eval_max_digits']} digits it is scored on: need max_steps >= eval_max_digits")
    if config["digit_size"] > config["canvas_size"]:
        raise ConfigError(f"digit_size={config['digit_size']} does not fit canvas_size={config['canvas_size']}")
    for key in ("likelihood_std", "scale_prior_std", "shift_prior_std"):
        check_range(config, key, 0.0, low_open=True)
    for key in ("prior_start", "prior_end"):
        check_range(config, key, 0.0, 1.0, low_open=True, high_open=True)
    check_range(config, "anneal_begin", 0)
    check_range(config, "anneal_steps", 0)
    check_range(config, "nvil_decay", 0.0, 1.0, high_open=True)
    check_range(config, "baseline_lr", 0.0, low_open=True)
    validate_optim_config(config, prefix="baseline_")


@register("air", defaults=AIR_DEFAULTS, validate=(validate_air, validate_loop_config), metrics=AIR_METRICS,
          primary="val_count_accuracy", user_errors=LOOP_USER_ERRORS, paths=LOOP_PATHS)
def train_air(config: dict[str, Any], ctx: Context) -> None:
    """Attend-Infer-Repeat (Eslami et al. 2016): count and locate digits on multi-MNIST canvases, on the loop."""
    fit(ctx, config, AirTask(load_canvas_data(config), config))
