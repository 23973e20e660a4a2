"""The categorical VAE (Gumbel-softmax vs score function): the samples, the straight-through gradient, the ELBO of a
hand-built model, unbiasedness of REINFORCE, the temperature schedule, exact resume, that it learns in a bounded
budget, and one trial through the sweep CLI into MLflow."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from orchestrator import spaces
from trainables import registry
from trainables.context import LocalContext
from trainables.data import DatasetBundle, Split
from trainables.gumbel_vae import (
    HELD_OUT_SEED,
    GumbelVaeTask,
    bernoulli_log_likelihood,
    binarise,
    categorical_sample,
    gumbel_softmax_sample,
    kl_to_uniform,
    log_q,
    score_function_surrogate,
    temperature_at,
)
from trainables.loop import load_data
from trainables.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------------ samples
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 5.0])
def test_gumbel_softmax_sample_is_a_point_on_the_simplex(tau: float) -> None:
    torch.manual_seed(0)
    log_pi = torch.log_softmax(torch.randn(64, 20, 10), -1)
    y = gumbel_softmax_sample(log_pi, tau)
    assert y.shape == log_pi.shape and bool((y >= 0).all()) and bool((y <= 1).all())
    assert torch.allclose(y.sum(-1), torch.ones(64, 20), atol=1e-5)
    assert not bool((y.max(-1).values == 1).all())  # soft: not one-hot


def test_argmax_of_the_gumbel_softmax_sample_is_distributed_as_pi() -> None:
    torch.manual_seed(1)  # Gumbel-max trick: argmax_k (log pi_k + g_k) ~ Cat(pi), whatever tau
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4])
    y = gumbel_softmax_sample(pi.log().expand(40_000, 4), tau=0.7)
    freq = torch.bincount(y.argmax(-1), minlength=4).float() / 40_000
    assert torch.allclose(freq, pi, atol=0.01)  # 4 sigma of a 0.4 frequency over 40k draws is 0.01


def test_hard_sample_is_one_hot_forward_with_the_soft_samples_gradient() -> None:
    logits = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    weights = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(3))

    def sample(hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(7)  # the same Gumbel noise for both
        y = gumbel_softmax_sample(torch.log_softmax(logits, -1), 0.5, hard=hard)
        (grad,) = torch.autograd.grad((y * weights).sum(), logits)
        return y.detach(), grad

    hard, hard_grad = sample(True)
    soft, soft_grad = sample(False)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(8, 3))
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))  # the one-hot is the soft sample's argmax
    assert torch.allclose(hard_grad, soft_grad) and soft_grad.abs().sum() > 0


def test_categorical_samples_are_one_hot_with_frequencies_pi() -> None:
    pi = torch.tensor([0.5, 0.25, 0.25])
    z = categorical_sample(pi.log().expand(20_000, 1, 3), torch.Generator().manual_seed(4))
    assert torch.equal(z.sum(-1), torch.ones(20_000, 1))
    assert torch.allclose(z.mean((0, 1)), pi, atol=0.015)


# -------------------------------------------------------------------------------------------------------- ELBO
def tiny_data() -> DatasetBundle:
    """One latent of K = 2 classes, 1 x 1 x 2 binary images; val image (1, 0)."""
    x = torch.tensor([[[[255, 0]]]], dtype=torch.uint8)
    split = Split(x, torch.zeros(1, dtype=torch.int64))
    return DatasetBundle("tiny", split, split, split, 1, (1, 1, 2), (0.5,), (0.5,), "none")


def test_elbo_of_a_hand_built_model_equals_the_hand_computation() -> None:
    config = {**registry.get("gumbel_vae").defaults, "latents": 1, "classes": 2, "hidden": [4]}
    task = GumbelVaeTask(tiny_data(), config)
    encoder, decoder = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():  # q(z|x) = (0.25, 0.75) for every x; p(x_d = 1|z): z = e0 -> (0.5, 0.75), e1 -> (0.9, 0.2)
        encoder.weight.zero_(), encoder.bias.copy_(torch.tensor([0.25, 0.75]).log())
        decoder.weight.copy_(torch.tensor([[0.0, math.log(9.0)], [math.log(3.0), math.log(0.25)]]))
        decoder.bias.zero_()
    task.models = {"encoder": encoder, "decoder": decoder}
    x = torch.tensor([[[[1.0, 0.0]]]])
    # E_q log p(x|z) = 0.25 (log 0.5 + log 0.25) + 0.75 (log 0.9 + log 0.8);  KL = sum q log(q / (1/2))
    expected_ll = 0.25 * (math.log(0.5) + math.log(0.25)) + 0.75 * (math.log(0.9) + math.log(0.8))
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    log_pi = task.encode(x, encoder).detach()
    assert float(kl_to_uniform(log_pi)) == pytest.approx(kl, rel=1e-6)
    with torch.no_grad():
        enumerated = sum(float(log_pi[0, 0, k].exp() * bernoulli_log_likelihood(decoder(z).view_as(x), x))
                         for k, z in enumerate(torch.eye(2)))
    assert enumerated == pytest.approx(expected_ll, rel=1e-6)
    # the held-out ELBO with exact samples: 20,000 copies of x, one draw each, average around the hand value (the
    # per-draw std of log p(x|z) is 0.7, so 0.03 is 6 standard errors); a second draw per copy averages too
    copies = x.expand(20_000, 1, 1, 2)
    assert float(task.exact_elbo(copies, samples=1).mean()) == pytest.approx(expected_ll - kl, abs=0.03)
    assert float(task.exact_elbo(copies, samples=2).mean()) == pytest.approx(expected_ll - kl, abs=0.03)


def test_score_function_gradient_is_unbiased_on_a_toy_objective() -> None:
    theta = torch.tensor([[0.3, -0.2, 0.5], [-1.0, 0.4, 0.1]], requires_grad=True)  # N = 2 latents, K = 3
    c = torch.tensor([[1.0, -2.0, 3.0], [0.5, 2.0, -1.0]])

    def f(z: torch.Tensor) -> torch.Tensor:  # a nonlinear f of the one-hot (..., 2, 3) z
        return ((z * c).sum((-2, -1)) ** 2) + 10.0

    log_pi = torch.log_softmax(theta, -1)
    exact = sum(log_pi[0, i].exp() * log_pi[1, j].exp() * f(torch.stack([torch.eye(3)[i], torch.eye(3)[j]]))
                for i, j in itertools.product(range(3), range(3)))
    (exact_grad,) = torch.autograd.grad(exact, theta)
    samples = 200_000
    z = categorical_sample(log_pi.detach().expand(samples, 2, 3), torch.Generator().manual_seed(5))
    for baseline in (0.0, 12.0):  # unbiased with or without a (constant) baseline
        log_pi = torch.log_softmax(theta, -1).expand(samples, 2, 3)
        surrogate = score_function_surrogate(f(z), log_q(z, log_pi), baseline)
        (estimate,) = torch.autograd.grad(surrogate, theta)
        assert torch.allclose(estimate, exact_grad, atol=0.1), (baseline, estimate, exact_grad)
    assert exact_grad.abs().max() > 1.0  # a non-trivial gradient to match (the tolerance is a tenth of it)


# ------------------------------------------------------------------------------------------------- temperature
def test_annealing_schedule_values() -> None:
    assert temperature_at(0, 1.0, 0.5, 1e-4, 500) == 1.0
    assert temperature_at(499, 1.0, 0.5, 1e-4, 500) == 1.0  # updated every N steps only
    assert temperature_at(500, 1.0, 0.5, 1e-4, 500) == pytest.approx(math.exp(-0.05))
    assert temperature_at(1999, 1.0, 0.5, 1e-4, 500) == pytest.approx(math.exp(-0.15))
    assert temperature_at(10_000, 1.0, 0.5, 1e-4, 500) == 0.5  # exp(-1) < 0.5: held at tau_min
    assert temperature_at(10_000, 2.0, 0.5, 0.0, 500) == 2.0


def test_the_trial_anneals_tau_and_resumes_it_exactly(tmp_path: Path) -> None:
    spec = registry.get("gumbel_vae")
    config = spec.resolve({"epochs": 2, "limit_train_batches": 7, "anneal_rate": 0.02, "anneal_every": 3,
                           "hidden": [64], "hard": True})
    straight = LocalContext()
    spec.train(config, straight)
    assert [r["temperature"] for r in straight.results] == pytest.approx([math.exp(-0.12), math.exp(-0.24)])
    spec.train({**config, "epochs": 1}, LocalContext(checkpoint_root=str(tmp_path)))
    resumed = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(config, resumed)
    assert [r["epoch"] for r in resumed.results] == [2]
    for key in ("temperature", "val_elbo", "test_elbo", "train_elbo"):
        assert resumed.results[0][key] == straight.results[-1][key], key
    fixed = LocalContext()
    spec.train({**config, "anneal": False, "tau0": 0.7}, fixed)
    assert [r["temperature"] for r in fixed.results] == [0.7, 0.7]


# ------------------------------------------------------------------------------------------------------- learns
def test_gumbel_vae_learns_in_a_bounded_budget() -> None:
    """Five epochs (175 steps): the held-out ELBO rises far above the untrained model's and above the best model
    that ignores its latents (independent pixels with the training means), so the latents carry information.
    Measured (seeds 0, 1): untrained -543.7, latent-free bar -203.9, after training -193.8, -193.6."""
    spec = registry.get("gumbel_vae")
    config = spec.resolve({"epochs": 5, "lr": 3e-3})
    data = load_data(config)
    untrained = GumbelVaeTask(data, config)
    torch.manual_seed(0)
    untrained.models = untrained.build_models()
    before = untrained.evaluate(LocalContext())["val_elbo"]
    ctx = LocalContext()
    spec.train(config, ctx)
    after = ctx.results[-1]["val_elbo"]
    p = (data.train.x.float() / 255).mean(0).clamp(1e-4, 1 - 1e-4)
    x = binarise(data.val, HELD_OUT_SEED)
    latent_free = float((x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1).mean())
    assert after > before + 300, (before, after)
    assert after > latent_free + 4, (latent_free, after)


# ------------------------------------------------------------------------------------------- config and spaces
def test_the_space_crosses_schedule_hardness_and_estimator_and_collapses_the_score_functions() -> None:
    space = spaces.load_space("gumbel_temperature")
    space.validate(registry.get("gumbel_vae"))
    assert space.trainable == "gumbel_vae" and space.seeds == 3 and space.metric == "val_elbo"
    assert set(space.searched) == {"estimator", "hard", "anneal"}
    assert space.num_trials() == 5 * 3  # 4 Gumbel configs + 1 score function (hard/anneal mean nothing to it)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"estimator": "reinforce"}, "estimator='reinforce' is not one of"),
    ({"classes": 1}, "classes=1 is out of range"),
    ({"tau0": 0.0}, "tau0=0.0 is out of range"),
    ({"hidden": []}, "hidden=.. must be a non-empty list"),
    ({"baseline": "none"}, "baseline='none' is not one of"),
])
def test_bad_config_values_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        registry.get("gumbel_vae").resolve(overrides)
    assert "\n" not in str(info.value)


def test_score_function_with_a_learned_baseline_trains_its_baseline_net() -> None:
    spec = registry.get("gumbel_vae")
    config = spec.resolve({"estimator": "score_function", "baseline": "input", "epochs": 1,
                           "limit_train_batches": 3, "hidden": [32]})
    task = GumbelVaeTask(load_data(config), config)
    assert set(task.build_models()) == {"encoder", "decoder", "baseline"}
    ctx = LocalContext()
    spec.train(config, ctx)
    assert math.isfinite(ctx.results[-1]["val_elbo"]) and ctx.results[-1]["temperature"] == 1.0


# -------------------------------------------------------------------------------------------------- sweep CLI
@pytest.mark.slow  # one real sweep trial through Ray and MLflow: about 35 s after the session's Ray is up
def test_a_sweep_trial_logs_elbos_and_images_into_mlflow(tmp_path: Path, ray_address: str) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    sweep = run_cli("orchestrator.sweep", ["gumbel_temperature", "--seeds", "1", "--address", ray_address, "--set",
                                           "estimator=gumbel", "hard=true", "anneal=true", "epochs=1",
                                           "limit_train_batches=3"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gumbel_temperature").experiment_id])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    metrics = child.data.metrics
    assert {"train_elbo", "val_elbo", "test_elbo", "temperature"} <= set(metrics)
    assert -600 < metrics["val_elbo"] < 0 and metrics["temperature"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "task")}
    assert artifacts == {"task/reconstructions.png", "task/samples.png"}
    png = Path(client.download_artifacts(child.info.run_id, "task/reconstructions.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
