"""DCGAN with vanilla / batch / weight normalization (Xiang & Li 2017): the weight-normalized layers' formulas and
scale invariance, TPReLU, the networks' shapes, the reconstruction measure, that a short training lowers the held-out
reconstruction error, and one trial through the sweep CLI into MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainables import registry
from trainables.context import LocalContext
from trainables.dcgan import NORMS, Discriminator, Generator, reconstruction_mse
from trainables.gan_normalization import TPReLU, WNConv2d, WNConvTranspose2d, WNLinear
from trainables.loop import load_data
from trainables.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (1, 28, 28)


# ------------------------------------------------------------------------------------- weight-normalized layers
def test_strict_linear_is_the_projection_on_the_unit_weight_and_ignores_the_weights_scale() -> None:
    torch.manual_seed(0)
    layer = WNLinear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = layer.weight.detach()
    expected = x @ (w / w.norm(dim=1, keepdim=True)).T  # y = w . x / ||w||
    assert torch.allclose(layer(x), expected)
    # a unit input along w's direction gives exactly 1; any unit input gives |y| <= 1 (Cauchy-Schwarz)
    along = w[1] / w[1].norm()
    assert float(layer(along[None])[0, 1].detach()) == pytest.approx(1.0, abs=1e-12)
    unit = x / x.norm(dim=1, keepdim=True)
    assert (layer(unit).abs() <= 1 + 1e-12).all()
    with torch.no_grad():  # rescaling each unit's weights by any positive factor changes nothing
        layer.weight.mul_(torch.tensor([[0.01], [7.0], [300.0]], dtype=torch.float64))
    assert torch.allclose(layer(x), expected)
    assert layer.gamma is None and layer.beta is None and layer.bias is None  # strict: no scale, no bias


def test_affine_layers_are_gamma_times_the_strict_output_plus_beta() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for strict, affine in ((WNConv2d(3, 4, 3, padding=1), WNConv2d(3, 4, 3, padding=1, affine=True)),
                           (WNConvTranspose2d(3, 4, 4, 2, 1), WNConvTranspose2d(3, 4, 4, 2, 1, affine=True))):
        strict, affine = strict.double(), affine.double()
        with torch.no_grad():
            affine.weight.copy_(strict.weight)
            affine.gamma.copy_(torch.tensor([0.5, 2.0, -1.0, 3.0]))
            affine.beta.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        expected = affine.gamma.view(1, -1, 1, 1) * strict(x) + affine.beta.view(1, -1, 1, 1)
        assert torch.allclose(affine(x), expected)  # y = gamma * w . x / ||w|| + beta


def test_conv_layers_normalise_each_output_channels_kernel() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    conv = WNConv2d(3, 4, 3, stride=2, padding=1).double()
    v = conv.weight.detach()  # (out, in, kh, kw)
    unit = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(conv(x), F.conv2d(x, unit, stride=2, padding=1))
    up = WNConvTranspose2d(3, 4, 4, stride=2, padding=1).double()
    v = up.weight.detach()  # (in, out, kh, kw): one output pixel sees 1/4 of the taps, so ||w|| = ||v|| / 2
    unit = v / (v.transpose(0, 1).flatten(1).norm(dim=1) / 2).view(1, -1, 1, 1)
    assert torch.allclose(up(x), F.conv_transpose2d(x, unit, stride=2, padding=1))
    before = (conv(x), up(x))
    with torch.no_grad():
        conv.weight.mul_(torch.rand(4, 1, 1, 1, dtype=torch.float64) * 10 + 0.1)
        up.weight.mul_(torch.rand(1, 4, 1, 1, dtype=torch.float64) * 10 + 0.1)
    assert torch.allclose(conv(x), before[0]) and torch.allclose(up(x), before[1])


def test_the_gradient_of_a_strict_layers_weights_is_orthogonal_to_them() -> None:
    # scale invariance f(c v) = f(v)  =>  d/dc f(c v) = grad . v = 0
    torch.manual_seed(3)
    layer = WNConv2d(2, 3, 3).double()
    (layer(torch.randn(4, 2, 5, 5, dtype=torch.float64)) ** 2).sum().backward()
    per_unit = (layer.weight.grad * layer.weight.detach()).flatten(1).sum(1)
    assert per_unit.abs().max() < 1e-10 < layer.weight.grad.abs().max()


def test_tprelu_is_prelu_translated_by_its_learned_b() -> None:
    torch.manual_seed(4)
    act = TPReLU(3).double()
    with torch.no_grad():
        act.bias.copy_(torch.tensor([-0.5, 0.0, 1.5]))
        act.weight.copy_(torch.tensor([0.25, 0.1, 0.0]))
    prelu = torch.nn.PReLU(3).double()
    with torch.no_grad():
        prelu.weight.copy_(act.weight)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 2
    b = act.bias.view(1, -1, 1, 1)
    assert torch.allclose(act(x), prelu(x - b) + b)  # PReLU(x - b) + b
    y = act(x)
    above = x >= b.expand_as(x)
    assert torch.allclose(y[above], x[above]) and above.any()  # identity above b
    assert (y[:, 2] >= 1.5).all()  # slope 0: the paper's TReLU_b(x) = max(x, b)
    assert act.bias.requires_grad  # b is learned


# --------------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("norm", NORMS)
def test_generator_and_discriminator_shapes(norm: str) -> None:
    torch.manual_seed(0)
    g, d = Generator(100, 8, SHAPE, norm), Discriminator(8, SHAPE, norm)
    images = g(torch.randn(6, 100))
    assert images.shape == (6, *SHAPE) and 0 <= float(images.detach().min()) and float(images.detach().max()) <= 1
    assert d(images).shape == (6,)
    assert Generator(16, 4, (3, 32, 32), norm)(torch.randn(2, 16)).shape == (2, 3, 32, 32)  # any H, W % 4 == 0
    kinds = {type(m).__name__ for m in [*g.modules(), *d.modules()]}
    assert ("BatchNorm2d" in kinds) == (norm == "batch")
    assert ("TPReLU" in kinds) == (norm == "weight") and ("PReLU" in kinds) == (norm != "weight")
    if norm == "weight":  # strict hidden layers, affine output layers, in both nets
        wn = [m for m in [*g.modules(), *d.modules()] if isinstance(m, (WNLinear, WNConv2d, WNConvTranspose2d))]
        assert [m.gamma is not None for m in wn] == [False, False, True, False, False, True]
        assert not any(isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d)
                       and not isinstance(m, (WNLinear, WNConv2d, WNConvTranspose2d)) for m in g.modules())


def test_reconstruction_finds_a_z_that_the_frozen_generator_maps_close_to_its_own_image() -> None:
    torch.manual_seed(5)
    g = Generator(16, 8, SHAPE, "weight")
    target_z = 0.5 * torch.randn(8, 16)
    with torch.no_grad():
        target = g(target_z)
        at_zero = (g(torch.zeros(8, 16)) - target).pow(2).flatten(1).mean(1)
    params = [p.detach().clone() for p in g.parameters()]
    mse, recon = reconstruction_mse(g, target, 16, steps=60, lr=0.01)
    assert mse.shape == (8,) and recon.shape == target.shape
    assert torch.allclose(mse, (recon - target).pow(2).flatten(1).mean(1))
    assert float(mse.mean()) < 0.3 * float(at_zero.mean())  # measured 0.08x (seed 5; seeds 6, 7: 0.09x, 0.06x)
    assert all(torch.equal(p, q) for p, q in zip(params, g.parameters(), strict=True))  # G frozen
    assert all(p.grad is None for p in g.parameters()) and g.training  # no gradients left, mode restored


# --------------------------------------------------------------------------------------- it learns; config errors
def test_a_short_training_lowers_the_held_out_reconstruction_error() -> None:
    spec = registry.get("dcgan")
    config = spec.resolve({"norm": "weight", "epochs": 2, "steps_per_epoch": 50, "width": 16, "lr": 2e-3,
                           "recon_images": 64, "recon_steps": 30})
    data = load_data(config)
    torch.manual_seed(config["seed"])  # the loop builds the same initial generator from the same seed
    untrained = Generator(config["z_dim"], config["width"], data.input_shape, "weight")
    scored = data.test.subset(64)  # the images evaluate scores
    assert len(scored.y.unique()) >= 8  # a spread of digits, not the first class of a sorted split
    before, _ = reconstruction_mse(untrained, scored.x.float() / 255, config["z_dim"], 30, 0.01)
    ctx = LocalContext()
    spec.train(config, ctx)
    first, last = ctx.results
    assert last["step"] == 100 and set(spec.metrics) <= set(last)
    # measured: seed 0 0.222 untrained -> 0.055 after 50 steps -> 0.038 after 100; seed 1 0.221 -> 0.051 -> 0.038
    assert last["test_recon_mse"] < 0.6 * float(before.mean()), (float(before.mean()), last)
    assert last["val_recon_mse"] < first["val_recon_mse"]


def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    # both optimizers, batch norm's running statistics and the z draws come back from the checkpoint
    spec = registry.get("dcgan")
    tiny = {"norm": "batch", "epochs": 2, "steps_per_epoch": 3, "width": 4, "recon_images": 8, "recon_steps": 2}
    straight = LocalContext()
    spec.train(spec.resolve(tiny), straight)
    spec.train(spec.resolve({**tiny, "epochs": 1}), LocalContext(checkpoint_root=str(tmp_path)))
    resumed = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve(tiny), resumed)
    (again,) = resumed.results
    for key in ("epoch", "step", "train_d_loss", "train_g_loss", "val_recon_mse", "test_recon_mse"):
        assert again[key] == straight.results[-1][key], key


@pytest.mark.parametrize(("overrides", "message"), [
    ({"norm": "spectral"}, "norm='spectral' is not one of"),
    ({"recon_steps": 0}, "recon_steps=0 is out of range"),
    ({"recon_lr": 0.0}, "recon_lr=0.0 is out of range"),
    ({"width": 0}, "width=0 is out of range"),
])
def test_bad_config_values_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        registry.get("dcgan").resolve(overrides)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # one real sweep trial through Ray and MLflow: about 40 s after the session's Ray is up
def test_one_sweep_trial_logs_the_reconstruction_metrics_and_the_sample_grids(tmp_path: Path,
                                                                             ray_address: str) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    sweep = run_cli("orchestrator.sweep", ["dcgan_norm", "--seeds", "1", "--address", ray_address, "--set",
                                           "norm=weight", "lr=0.002", "epochs=2", "steps_per_epoch=3", "width=4",
                                           "recon_images=8", "recon_steps=2"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dcgan_norm").experiment_id])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FINISHED"
    history = client.get_metric_history(child.info.run_id, "val_recon_mse")
    assert len(history) == 2  # one point per epoch: the curve the paper compares
    assert 0 < child.data.metrics["test_recon_mse"] < 1
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "task")}
    assert {"task/samples.png", "task/reconstructions.png"} <= artifacts
    png = Path(client.download_artifacts(child.info.run_id, "task/samples.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
