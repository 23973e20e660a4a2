"""Looking inside trained nets: FGSM, saliency, adversarial training (trainables/adversarial.py), the inspect tool
(trainables/inspection.py) and ``python -m orchestrator.inspect`` on a real sweep's run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from orchestrator import cli
from orchestrator.inspect import main as inspect_main
from orchestrator.inspect import metric_name
from tests.conftest import cli_env, run_cli
from tests.test_compare import assert_non_blank_png
from trainables import registry
from trainables.adversarial import fgsm, fgsm_accuracy, fgsm_mixed_batch, saliency, to_normalised, to_pixels
from trainables.batching import BatchLoader
from trainables.context import LocalContext
from trainables.inspection import rebuild
from trainables.layers import SeededDraws

# A depth-8 ResNet on sklearn's 8x8 digits: 3 epochs take about 2 s here and reach ~98% test accuracy.
TINY = {"dataset": "digits", "depth": 8, "epochs": 3, "batch_size": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(overrides: dict[str, Any]) -> tuple[LocalContext, dict[str, Any]]:
    spec = registry.get("resnet")
    config = spec.resolve({**TINY, **overrides})
    ctx = LocalContext()
    spec.train(config, ctx)
    return ctx, config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plain net trained in-process, rebuilt from its checkpoint by the inspect tool's own path."""
    ctx, config = _train({})
    folder = tmp_path_factory.mktemp("plain") / "checkpoint"
    with ctx.restored_checkpoint() as path:
        shutil.copytree(path, folder)
    model, data = rebuild(registry.get("resnet").tools["model"], config, str(folder))
    x, y = next(iter(BatchLoader(data.test, batch_size=128, mean=data.mean, std=data.std)))
    return {"ctx": ctx, "config": config, "checkpoint": str(folder), "model": model, "data": data, "x": x, "y": y}


def test_fgsm_moves_every_pixel_by_exactly_eps_in_the_gradient_sign_direction(trained: dict) -> None:
    model, data, x, y = trained["model"], trained["data"], trained["x"], trained["y"]
    eps = 0.1
    # The gradient w.r.t. the PIXELS, computed independently of fgsm()'s own shortcut (normalised-input gradient)
    pixels = to_pixels(x, data.mean, data.std).requires_grad_(True)
    F.cross_entropy(model(to_normalised(pixels, data.mean, data.std)), y).backward()
    sign = torch.sign(pixels.grad)
    pixels = pixels.detach()
    moved = to_pixels(fgsm(model, F.cross_entropy, x, y, eps, data.mean, data.std), data.mean, data.std) - pixels
    target = pixels + eps * sign
    free = (target >= 0) & (target <= 1) & (sign != 0)  # not clamped
    assert free.float().mean() > 0.3  # most background pixels are 0 and clamp when pushed down; the rest move
    assert torch.allclose(moved[free], eps * sign[free], atol=1e-5)
    clamped = (target < 0) | (target > 1)
    assert torch.allclose((pixels + moved)[clamped], target[clamped].clamp(0, 1), atol=1e-5)  # stays a valid image
    assert torch.allclose(moved[sign == 0], torch.zeros(()), atol=1e-6)
    assert fgsm(model, F.cross_entropy, x, y, 0.0, data.mean, data.std) is x


def test_fgsm_lowers_the_accuracy_of_a_trained_net_far_more_than_random_signs(trained: dict) -> None:
    model, data = trained["model"], trained["data"]
    loader = BatchLoader(data.test, batch_size=256, mean=data.mean, std=data.std)
    accuracy = fgsm_accuracy(model, loader, [0.0, 0.05, 0.1, 0.2], mean=data.mean, std=data.std)
    assert accuracy[0.0] == pytest.approx(trained["ctx"].results[-1]["test_accuracy"])  # eps 0: the clean net
    assert accuracy[0.0] > 0.9  # measured 0.989
    assert accuracy[0.0] > accuracy[0.05] > accuracy[0.1] > accuracy[0.2]  # measured 0.99, 0.90, 0.64, 0.12
    # The direction matters: the same size of step with random signs barely hurts (measured 0.98 at 0.1)
    torch.manual_seed(0)
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            pixels = to_pixels(x, data.mean, data.std)
            noisy = (pixels + 0.1 * torch.sign(torch.randn_like(pixels))).clamp(0, 1)
            correct += int((model(to_normalised(noisy, data.mean, data.std)).argmax(1) == y).sum())
            seen += len(y)
    assert accuracy[0.1] < correct / seen - 0.15


def test_saliency_is_the_max_over_channels_of_the_class_score_gradient(trained: dict) -> None:
    model, data, x, y = trained["model"], trained["data"], trained["x"][:8], trained["y"][:8]
    maps = saliency(model, x, y, data.std)
    assert maps.shape == (8, *data.input_shape[1:]) and bool((maps >= 0).all()) and float(maps.sum()) > 0
    pixels = to_pixels(x, data.mean, data.std).requires_grad_(True)
    model(to_normalised(pixels, data.mean, data.std))[torch.arange(8), y].sum().backward()
    assert torch.allclose(maps, pixels.grad.abs().amax(1), rtol=1e-4, atol=1e-7)


def test_mixed_batch_replaces_the_stated_fraction_without_side_effects_on_the_model(trained: dict) -> None:
    data, x, y = trained["data"], trained["x"][:64], trained["y"][:64]
    config = registry.get("resnet").resolve({**TINY, "p_L": 0.5, "dropout": 0.2})  # BN, dropout and SD draws
    model = registry.get("resnet").tools["model"](config, data).train()
    buffers = [b.clone() for b in model.buffers()]
    draws = [m.generator.get_state() for m in model.modules() if isinstance(m, SeededDraws)]
    assert draws and buffers
    rng = torch.get_rng_state()
    mixed = fgsm_mixed_batch(model, F.cross_entropy, x, y, 0.1, 0.25, data.mean, data.std)
    assert torch.equal(mixed[16:], x[16:])  # 48 of 64 untouched
    changed = (mixed[:16] != x[:16]).flatten(1).any(1)
    assert bool(changed.all())  # 16 = 0.25 * 64 replaced
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))  # BN running stats kept
    assert all(torch.equal(s, m.generator.get_state())
               for s, m in zip(draws, [m for m in model.modules() if isinstance(m, SeededDraws)], strict=True))
    assert torch.equal(rng, torch.get_rng_state())  # the training forward gets the same dropout masks
    # the replaced rows are FGSM examples of this very model (same draws, so the same net)
    expected = fgsm(model, F.cross_entropy, x[:16], y[:16], 0.1, data.mean, data.std)
    assert torch.allclose(mixed[:16], expected, atol=1e-5)
    assert fgsm_mixed_batch(model, F.cross_entropy, x, y, 0.0, 0.5, data.mean, data.std) is x
    assert fgsm_mixed_batch(model, F.cross_entropy, x, y, 0.1, 0.0, data.mean, data.std) is x


def test_adversarial_training_through_the_loop_learns_and_bad_values_are_refused(trained: dict) -> None:
    spec = registry.get("resnet")
    for bad, message in (({"adversarial_eps": -0.1}, "adversarial_eps"), ({"adversarial_eps": 1.5}, "adversarial_eps"),
                         ({"adversarial_fraction": 1.2}, "adversarial_fraction"),
                         ({"adversarial_eps": "big"}, "adversarial_eps")):
        with pytest.raises(registry.ConfigError, match=message):
            spec.resolve(bad)
    # eps = 0 ignores the fraction: a sweep over it collapses to one run
    assert (spec.canonical_form(spec.resolve({"adversarial_fraction": 0.9}))
            == spec.canonical_form(spec.resolve({})))
    ctx, _ = _train({"adversarial_eps": 0.1})
    plain = trained["ctx"].results
    assert ctx.results[0]["train_loss"] != plain[0]["train_loss"]  # the option is on: other batches were trained
    assert ctx.results[-1]["val_error"] < 0.2  # chance is 0.9; measured 0.017 after 3 epochs
    # and the net it trained is more robust than the plain one (measured 0.83 vs 0.64 at eps 0.1)
    with ctx.restored_checkpoint() as path:
        robust, data = rebuild(spec.tools["model"], {**trained["config"], "adversarial_eps": 0.1}, path)
    loader = BatchLoader(data.test, batch_size=256, mean=data.mean, std=data.std)
    kwargs = {"mean": data.mean, "std": data.std}
    assert (fgsm_accuracy(robust, loader, [0.1], **kwargs)[0.1]
            > fgsm_accuracy(trained["model"], loader, [0.1], **kwargs)[0.1])


def test_every_classifier_offers_inspect_and_the_adversarial_keys_without_importing_matplotlib() -> None:
    """A classifier is a trainable with a ``model`` tool (what Deep Compression and inspect rebuild nets with)."""
    code = ("import sys; from trainables import registry\n"
            "names = [n for n in registry.names() if not registry.TRAINABLE_MODULES.get(n, '').startswith("
            "'trainables.rl.')]\n"
            "classifiers = [n for n in names if 'model' in registry.get(n).tools]\n"
            "bad = [n for n in classifiers if 'inspect' not in registry.get(n).tools\n"
            "       or registry.get(n).defaults.get('adversarial_eps') != 0.0]\n"
            "assert not bad, bad\n"
            "assert 'matplotlib' not in sys.modules and 'trainables.inspection' not in sys.modules\n"
            "print(' '.join(classifiers))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=cli_env(Path.cwd()))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"resnet", "preact_resnet", "swapout", "fmp_net", "squeezenet", "inception", "nas_child", "linear", "mlp",
            "alexnet", "vgg", "googlenet"} <= set(result.stdout.split())


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture, expected: str) -> None:
    code = cli.run(inspect_main, argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR, err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


@pytest.mark.slow  # about 40 s for the sweep and 20-30 s for the inspection on the loaded 2-core machine
def test_cli_inspects_a_real_sweep_run_and_logs_into_it(tmp_path: Path, ray_address: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    sweep = run_cli("orchestrator.sweep", ["sd_rates", "--seeds", "1", "--address", ray_address, "--set", "p_L=1.0",
                                           *(f"{k}={v}" for k, v in TINY.items())], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sd_rates").experiment_id])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # p_L = 1: one schedule-free trial
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    run_id = child.info.run_id

    result = run_cli("orchestrator.inspect", [run_id, "--fgsm", "0.05", "0.1", "--saliency", "4"], tmp_path,
                     timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FGSM" in result.stdout and "epsilon" in result.stdout
    after = client.get_run(run_id)
    accuracy = {eps: after.data.metrics[metric_name("test", eps)] for eps in (0.0, 0.05, 0.1)}
    assert accuracy[0.0] == pytest.approx(child.data.metrics["test_accuracy"])  # the checkpoint's own net
    assert accuracy[0.0] > accuracy[0.1]
    assert f"{accuracy[0.1]:.4g}" in result.stdout  # the table shows what was logged
    assert {a.path for a in client.list_artifacts(run_id, "inspection")} == {
        "inspection/fgsm_accuracy.png", "inspection/saliency.png"}
    for png in ("fgsm_accuracy.png", "saliency.png"):
        assert_non_blank_png(Path(client.download_artifacts(run_id, f"inspection/{png}", str(tmp_path))))
    assert after.info.status == "FINISHED" and len(client.search_runs([child.info.experiment_id])) == len(runs)

    # Errors: one line, exit status 2, nothing logged
    _one_line_error([run_id, "--fgsm", "-0.1", "--tracking-uri", uri], capsys, "--fgsm")
    _one_line_error(["0123456789abcdef", "--tracking-uri", uri], capsys, "no MLflow run '0123456789abcdef'")
    _one_line_error([parent.info.run_id, "--tracking-uri", uri], capsys, "has no checkpoint artifact")
    other = client.create_run(child.info.experiment_id, tags={"trainable": "dqn"}).info.run_id
    _one_line_error([other, "--tracking-uri", uri], capsys, "not a classifier")
    _one_line_error([run_id, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], capsys, "no MLflow store")
