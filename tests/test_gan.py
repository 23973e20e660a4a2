"""The GAN of Goodfellow et al. 2014: shapes, maxout, the Parzen estimator against hand-computed densities, the two
generator objectives against their formulas, Algorithm 1's k discriminator steps per generator step, exact resume,
that it learns in a bounded budget, and one sweep trial through the CLI into MLflow with its samples grid."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from orchestrator import spaces
from trainables import registry
from trainables.context import LocalContext
from trainables.gan import (
    GanTask,
    Maxout,
    discriminator,
    discriminator_loss,
    generator,
    generator_loss,
    sample_noise,
)
from trainables.loop import load_data
from trainables.parzen import PAPER_SIGMAS, parzen_evaluate, parzen_log_likelihood
from trainables.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A small GAN for in-process runs (the paper's 1200-1200 / 240x5 sizes are the defaults; about 8x slower per step).
# PyTorch's init of G's output biases: with the data-marginal init the untrained G's near-copies of the mean image
# already score about -80 nats under Parzen, which a short run does not beat (see GanTask.initialize).
SMALL = {"g_hidden": [256, 256], "d_units": [64, 64], "lr": 1e-3, "parzen_samples": 500, "g_output_bias": "default"}


@pytest.fixture(scope="module")
def data():
    return load_data(registry.get("gan").resolve({}))


# ------------------------------------------------------------------------------------------------- the models
def test_generator_and_discriminator_shapes_and_ranges() -> None:
    z = sample_noise(7, 100, torch.Generator().manual_seed(0))
    assert z.shape == (7, 100) and z.min() >= -1.0 and z.max() <= 1.0 and z.min() < -0.5 and z.max() > 0.5
    G = generator(100, [32, 16], (1, 28, 28))
    images = G(z)
    assert images.shape == (7, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0  # sigmoid pixels
    D = discriminator((1, 28, 28), [24, 12], 5, 0.2, 0.5)
    assert D(images).shape == (7,)  # one logit per image
    assert sum(isinstance(m, Maxout) for m in D.modules()) == 2
    assert [m.p for m in D.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5, 0.5]  # on each layer's input
    assert generator(10, [], (1, 8, 8))(torch.zeros(2, 10)).shape == (2, 1, 8, 8)  # digits' 8x8, no hidden layer


def test_maxout_is_the_max_over_pieces_of_affine_maps() -> None:
    torch.manual_seed(0)
    layer = Maxout(6, 4, 3)
    x = torch.randn(5, 6)
    z = x @ layer.linear.weight.T + layer.linear.bias  # z_ij = x^T W_.ij + b_ij, unit i's pieces at 3i..3i+2
    expected = torch.stack([z[:, 3 * i:3 * i + 3].max(1).values for i in range(4)], dim=1)
    assert torch.allclose(layer(x), expected)
    one = Maxout(6, 4, 1)  # one piece: a plain linear layer
    assert torch.allclose(one(x), one.linear(x))


def test_the_generators_output_biases_start_at_the_pixel_marginals(data) -> None:
    task = GanTask(data, registry.get("gan").resolve({"g_hidden": [16]}))
    models = task.build_models()
    task.initialize(models, LocalContext())
    bias = models["generator"][2].bias  # the sigmoid layer's
    mean = data.train.x.double().mean(0).flatten() / 255.0
    assert torch.allclose(torch.sigmoid(bias).double(), mean.clamp(1e-5, 1 - 1e-5), atol=1e-6)
    assert float(torch.sigmoid(bias).min()) < 1e-4  # MNIST's border is always black


# ----------------------------------------------------------------------------------------------------- Parzen
def test_parzen_of_one_sample_is_the_gaussian_log_density() -> None:
    x, mu = torch.tensor([[0.2, 0.9, 0.4]], dtype=torch.float64), torch.tensor([[0.1, 0.5, 0.4]], dtype=torch.float64)
    sigma = 0.3
    by_hand = -(0.1**2 + 0.4**2) / (2 * sigma**2) - 1.5 * math.log(2 * math.pi * sigma**2)  # d = 3
    assert float(parzen_log_likelihood(x, mu, [sigma])[0, 0]) == pytest.approx(by_hand, rel=1e-9)


def test_parzen_equals_a_mixture_of_scipy_gaussians_for_every_sigma_and_chunk() -> None:
    g = torch.Generator().manual_seed(1)
    points, samples = torch.rand(9, 1, 2, 3, generator=g), torch.rand(13, 1, 2, 3, generator=g)
    sigmas = [0.1, 0.25, 1.0]
    got = parzen_log_likelihood(points, samples, sigmas, chunk_size=4)
    assert got.shape == (3, 9)
    for s, sigma in enumerate(sigmas):
        logpdf = [[multivariate_normal(mu.flatten().double().numpy(), sigma**2).logpdf(x.flatten().double().numpy())
                   for mu in samples] for x in points]
        reference = logsumexp(logpdf, axis=1) - math.log(len(samples))  # log (1/N) sum_i N(x; mu_i, sigma^2 I)
        assert torch.allclose(got[s], torch.tensor(reference, dtype=torch.float64), rtol=1e-9)


def test_parzen_picks_sigma_on_val_and_scores_test_with_it() -> None:
    g = torch.Generator().manual_seed(2)
    samples, val, test = (torch.rand(n, 8, generator=g) for n in (50, 20, 30))
    result = parzen_evaluate(val, test, samples, PAPER_SIGMAS)
    on_val = parzen_log_likelihood(val, samples, PAPER_SIGMAS).mean(1)
    assert result["parzen_sigma"] == PAPER_SIGMAS[int(on_val.argmax())]
    assert result["val_parzen_ll"] == pytest.approx(float(on_val.max()))
    on_test = parzen_log_likelihood(test, samples, [result["parzen_sigma"]])[0]
    assert result["test_parzen_ll"] == pytest.approx(float(on_test.mean()))
    assert result["test_parzen_ll_se"] == pytest.approx(float(on_test.std()) / math.sqrt(30))


# ---------------------------------------------------------------------------------------------- the objectives
def test_losses_are_the_papers_formulas() -> None:
    a_real, a_fake = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64), torch.tensor([-3.0, 0.4], dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(a_real), torch.sigmoid(a_fake)
    # D ascends (1/m) sum log D(x) + log(1 - D(G(z))): it descends the negative
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    assert float(discriminator_loss(a_real, a_fake)) == pytest.approx(float(expected_d), rel=1e-12)
    # minimax: G descends (1/m) sum log(1 - D(G(z))); non-saturating: G ascends (1/m) sum log D(G(z))
    assert float(generator_loss(a_fake, "minimax")) == pytest.approx(float(torch.log(1 - d_fake).mean()), rel=1e-12)
    assert float(generator_loss(a_fake, "non_saturating")) == pytest.approx(float(-torch.log(d_fake).mean()),
                                                                            rel=1e-12)
    # Sec. 3's reason for the switch: where D confidently rejects a sample (D(G(z)) ~ 0), minimax's gradient
    # vanishes and the non-saturating one does not
    a = torch.tensor([-8.0], requires_grad=True)
    (minimax_grad,) = torch.autograd.grad(generator_loss(a, "minimax"), a)
    (non_saturating_grad,) = torch.autograd.grad(generator_loss(a, "non_saturating"), a)
    assert abs(float(minimax_grad)) < 1e-3 < 0.99 < abs(float(non_saturating_grad))
    assert torch.isfinite(generator_loss(torch.tensor([-200.0, 200.0]), "minimax"))  # saturated D stays finite


def test_an_iteration_takes_k_discriminator_steps_and_one_generator_step(data) -> None:
    config = registry.get("gan").resolve({**SMALL, "k_steps": 3})
    task = GanTask(data, config)
    ctx = LocalContext()
    batch = next(iter(task.train_batches(ctx, 0)))
    assert len(batch) == 3 and all(x.shape == (100, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 for x in batch)
    models = task.build_models()
    task.models, task.optimizers = models, task.build_optimizers(models, config)
    d_before = [p.detach().clone() for p in models["discriminator"].parameters()]
    out = task.train_step(batch, 0)
    assert set(out) == {"d_loss", "g_loss", "d_real", "d_fake"}
    steps = {name: {int(s["step"]) for s in opt.state.values()} for name, opt in task.optimizers.items()}
    assert steps == {"discriminator": {3}, "generator": {1}}  # Adam's per-parameter step counts
    assert all(not torch.equal(a, b) for a, b in zip(d_before, models["discriminator"].parameters(), strict=True))
    assert len(list(task.train_batches(ctx, 1))) == len(data.train.x) // 100 // 3  # whole groups of k batches


# ------------------------------------------------------------------------------------------------- the loop
def test_it_learns_in_a_bounded_budget(data) -> None:
    spec = registry.get("gan")
    config = spec.resolve({**SMALL, "epochs": 3, "steps_per_epoch": 40})
    untrained = GanTask(data, config)
    torch.manual_seed(config["seed"])  # the weights fit() starts from
    untrained.models = untrained.build_models()
    untrained.initialize(untrained.models, LocalContext())
    before = untrained.evaluate(LocalContext())
    ctx = LocalContext()
    spec.train(config, ctx)
    after = ctx.results[-1]
    assert after["step"] == 120 and {"train_d_loss", "train_g_loss", "val_d_accuracy"} <= set(after)
    # measured (seeds 0, 1, 2): untrained -541, after 120 iterations -92, -110, -89 (test images under 500 samples)
    assert after["test_parzen_ll"] > before["test_parzen_ll"] + 250, (before, after)
    # D learns to tell real from generated at some point (untrained it is a coin: 0.06 measured, all on one side)
    assert max(r["val_d_accuracy"] for r in ctx.results) > 0.75, ctx.results


def test_a_resumed_run_continues_exactly(tmp_path: Path) -> None:
    spec = registry.get("gan")
    tiny = {"g_hidden": [16], "d_units": [8], "parzen_samples": 50, "parzen_points": 20, "steps_per_epoch": 3,
            "k_steps": 2}
    straight = LocalContext()
    spec.train(spec.resolve({**tiny, "epochs": 2}), straight)
    first = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({**tiny, "epochs": 1}), first)
    resumed = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({**tiny, "epochs": 2}), resumed)
    assert [r["epoch"] for r in resumed.results] == [2]
    for key in ("train_d_loss", "train_g_loss", "test_parzen_ll", "val_d_accuracy"):
        assert resumed.results[0][key] == straight.results[1][key], key


# ------------------------------------------------------------------------------------------- config and CLI
@pytest.mark.parametrize(("overrides", "message"), [
    ({"k_steps": 0}, "k_steps=0 is out of range"),
    ({"generator_loss": "wasserstein"}, "generator_loss='wasserstein' is not one of"),
    ({"d_units": [240, 0]}, "d_units=.240, 0. must be a list of positive layer widths"),
    ({"parzen_sigmas": []}, "parzen_sigmas=.. must be a non-empty list"),
    ({"d_dropout": 1.0}, "d_dropout=1.0 is out of range"),
])
def test_bad_config_values_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        registry.get("gan").resolve(overrides)
    assert "\n" not in str(info.value)


def test_k_steps_larger_than_the_data_is_a_config_error() -> None:
    spec = registry.get("gan")
    with pytest.raises(ConfigError, match="k_steps=40 x batch_size=100 needs more training images"):
        spec.train(spec.resolve({"k_steps": 40}), LocalContext())


def test_the_k_steps_space_sweeps_k_and_the_learning_rate() -> None:
    space = spaces.load_space("gan_k_steps")
    space.validate(registry.get("gan"))
    assert space.trainable == "gan" and set(space.searched) == {"k_steps", "lr"} and space.metric == "val_parzen_ll"
    assert "gan" in registry.TRAINABLE_MODULES and registry.get("gan").primary == "val_parzen_ll"


@pytest.mark.slow  # one real sweep trial through Ray and MLflow: about 30 s after the session's Ray is up
def test_a_sweep_trial_logs_parzen_metrics_and_the_samples_grid(tmp_path: Path, ray_address: str) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    sweep = run_cli("orchestrator.sweep", ["gan_k_steps", "--seeds", "1", "--address", ray_address, "--set",
                                           "k_steps=2", "lr=0.001", "epochs=1", "steps_per_epoch=3", "g_hidden=[32]",
                                           "d_units=[16]", "parzen_samples=100", "parzen_points=50"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gan_k_steps").experiment_id])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    for metric in ("val_parzen_ll", "test_parzen_ll", "train_d_loss", "train_g_loss", "val_d_accuracy"):
        assert math.isfinite(child.data.metrics[metric]), metric
    assert child.data.metrics["step"] == 3
    assert [a.path for a in client.list_artifacts(child.info.run_id, "task")] == ["task/samples.png"]
    png = Path(client.download_artifacts(child.info.run_id, "task/samples.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
