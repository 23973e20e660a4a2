"""Normalization as a switch (issue 15): weight norm and its data-dependent init, mean-only batch norm, apply_norm
on the networks, the ``norm`` key, and a weight-normed ResNet that learns through the loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from orchestrator import spaces
from trainables import registry
from trainables.normalization import (
    NORMS,
    MeanOnlyBatchNorm1d,
    MeanOnlyBatchNorm2d,
    apply_norm,
    has_weight_norm,
    init_weight_norm,
    weight_norm,
    weight_norm_of,
)
from trainables.registry import ConfigError
from trainables.resnet import build_resnet


def _resnet(norm: str, depth: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return apply_norm(build_resnet(depth=depth, num_classes=10, in_channels=1), norm)


def _capture(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> dict[str, torch.Tensor]:
    """Outputs of the modules of ``kinds`` in one training-mode forward pass."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o.detach().clone()))
               for name, m in model.named_modules() if isinstance(m, kinds)]
    model.train()
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


def _per_unit(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0, *range(2, y.dim())]
    return y.mean(dims), y.var(dims, unbiased=False)


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 8, 3, padding=1), nn.Linear(12, 5), nn.Conv2d(4, 4, 3, groups=4)])
def test_weight_norm_keeps_the_function_at_wrap(layer: nn.Module) -> None:
    x = torch.randn(6, 12) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 9, 9)
    before, weight = layer(x), layer.weight.detach().clone()
    weight_norm(layer)
    wn = weight_norm_of(layer)
    assert wn is not None and torch.allclose(wn.g, weight.flatten(1).norm(dim=1))  # g = ||v||
    torch.testing.assert_close(layer(x), before)
    # w = g v / ||v||: scaling v changes nothing, g sets the norm of each output unit's weights
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(7.0)
        wn.g.fill_(2.0)
    assert torch.allclose(layer.weight.flatten(1).norm(dim=1), torch.full_like(wn.g, 2.0))


def test_data_dependent_init_gives_unit_preactivations_on_its_batch() -> None:
    model = _resnet("weight", depth=20)
    x = torch.randn(32, 1, 16, 16) * 3 + 1
    rng = torch.get_rng_state()
    assert init_weight_norm(model, x) == 20  # 19 convs and the classifier
    assert torch.equal(torch.get_rng_state(), rng)  # the init batch is not a training step: no RNG drawn
    outputs = _capture(model, x, (nn.Conv2d, nn.Linear))
    assert len(outputs) == 20
    names = list(outputs)
    for name in (names[0], names[5], names[10], names[-2], names[-1]):  # first, middle, last conv, classifier
        mean, var = _per_unit(outputs[name])
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)


def test_init_with_mean_only_batch_norm_scales_and_leaves_running_means() -> None:
    model = _resnet("weight+mean_only_batch", depth=20)
    running = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(32, 1, 16, 16)
    init_weight_norm(model, x)
    assert all(torch.equal(b, running[n]) for n, b in model.named_buffers())
    centred = _capture(model, x, (MeanOnlyBatchNorm2d,))  # conv (no bias) -> mean-only BN: mean 0, variance 1
    assert len(centred) == 19
    for y in list(centred.values())[::6]:
        mean, var = _per_unit(y)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)


def test_mean_only_batch_norm_centres_keeps_scale_and_uses_running_mean_at_eval() -> None:
    bn = MeanOnlyBatchNorm2d(3, momentum=0.25)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(8, 3, 5, 5) * 4 + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    mu = x.mean((0, 2, 3))
    y = bn(x)
    torch.testing.assert_close(y, x - mu.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1))
    torch.testing.assert_close(bn(3 * x) - bn.bias.view(1, 3, 1, 1), 3 * (y - bn.bias.view(1, 3, 1, 1)))  # no /std
    torch.testing.assert_close(bn.running_mean, 0.25 * 3 * mu + 0.75 * 0.25 * mu)  # momentum as BatchNorm
    bn.eval()
    torch.testing.assert_close(bn(x), x - bn.running_mean.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1))
    flat = MeanOnlyBatchNorm1d(4)
    z = torch.randn(16, 4) + 5
    torch.testing.assert_close(flat(z).mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expects"):
        flat(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("norm", NORMS)
def test_apply_norm_converts_every_layer_and_gradients_flow(norm: str) -> None:
    model = _resnet(norm)
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]
    count = {kind: sum(isinstance(m, kind) for m in modules) for kind in (nn.BatchNorm2d, MeanOnlyBatchNorm2d)}
    assert count[nn.BatchNorm2d] == (7 if norm == "batch" else 0)
    assert count[MeanOnlyBatchNorm2d] == (7 if "mean_only" in norm else 0)
    assert has_weight_norm(model) == norm.startswith("weight")
    assert all((weight_norm_of(m) is not None) == norm.startswith("weight") for m in convs)
    if norm in ("none", "weight"):  # batch norm's shift is gone: every conv gets a bias
        assert all(m.bias is not None for m in convs)
    x = torch.randn(4, 1, 12, 12)
    if has_weight_norm(model):
        init_weight_norm(model, x)
    model.train()
    model(x).logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), norm
    assert sum(float(g.abs().sum()) > 0 for g in grads.values()) >= len(grads) - 1  # (a last zero bias may cancel)


def test_batch_is_the_same_net_and_mean_only_needs_batch_norm() -> None:
    model = build_resnet(depth=8, num_classes=10, in_channels=1)
    tensors = {k: v.clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    assert apply_norm(model, "batch") is model
    assert all(torch.equal(v, tensors[k]) for k, v in [*model.named_parameters(), *model.named_buffers()])
    with pytest.raises(ValueError, match="no batch norm"):
        apply_norm(nn.Sequential(nn.Conv2d(1, 2, 3)), "mean_only_batch")
    with pytest.raises(ValueError, match="not one of"):
        apply_norm(model, "layer")


def test_norm_key_defaults_and_validation() -> None:
    for name in ("resnet", "preact_resnet", "swapout", "inception", "nas_child"):
        spec = registry.get(name)
        assert spec.defaults["norm"] == "batch"
        assert spec.resolve({"norm": "weight+mean_only_batch"})["norm"] == "weight+mean_only_batch"
        with pytest.raises(ConfigError, match="norm='bogus' is not one of"):
            spec.resolve({"norm": "bogus"})
    squeeze = registry.get("squeezenet")
    assert squeeze.defaults["norm"] == "none" and squeeze.resolve({"norm": "weight"})["norm"] == "weight"
    with pytest.raises(ConfigError, match="norm="):
        squeeze.resolve({"norm": "mean_only_batch"})  # no batch norm to make mean-only
    assert "norm" not in registry.get("fmp_net").defaults  # no normalisation in the paper's nets
    # Deep Compression rebuilds its source with the model tool: the key travels in source_config and is validated
    with pytest.raises(ConfigError, match="norm="):
        registry.get("deep_compression").resolve({"source": "resnet", "source_config": {"norm": "bogus"}})


def test_model_tool_builds_the_normed_net() -> None:
    from trainables.data import load_dataset

    data = load_dataset("digits")
    for name, norm in (("resnet", "weight"), ("swapout", "weight+mean_only_batch"), ("squeezenet", "weight"),
                       ("preact_resnet", "mean_only_batch")):
        spec = registry.get(name)
        config = spec.resolve({"dataset": "digits", "depth": 20, "norm": norm} if name != "squeezenet"
                              else {"dataset": "digits", "norm": norm, "input_size": "small"})
        model = spec.tools["model"](config, data)
        assert has_weight_norm(model) == norm.startswith("weight"), name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name


def _train(tmp_path, overrides: dict) -> list[dict]:  # noqa: ANN001
    from trainables.context import LocalContext

    spec = registry.get("resnet")
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(spec.resolve({"dataset": "digits", "depth": 8, "optimizer": "adam", "lr": 0.003, **overrides}), ctx)
    return ctx.results


def test_weight_plus_mean_only_resnet_learns_through_the_loop(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """ResNet-8 with the paper's best norm, 2 epochs of digits (8x8, chance 0.9; ~5 s). Measured: val_error 0.07."""
    import trainables.classification as classification

    torch.set_num_threads(1)
    calls: list[int] = []
    real = classification.init_weight_norm
    monkeypatch.setattr(classification, "init_weight_norm", lambda m, x: calls.append(len(x)) or real(m, x))
    results = _train(tmp_path, {"norm": "weight+mean_only_batch", "epochs": 2})
    assert calls == [128]  # one init, on one training batch of the config's batch size
    assert len(results) == 2 and results[-1]["val_error"] < 0.3 and results[-1]["test_error"] < 0.3
    assert results[-1]["train_loss"] < results[0]["train_loss"]
    # A resumed run continues from its checkpoint and does not initialise again
    resumed = _train(tmp_path, {"norm": "weight+mean_only_batch", "epochs": 3})
    assert calls == [128] and [r["epoch"] for r in resumed] == [3]


def test_the_normalization_space_parses_and_validates() -> None:
    space = spaces.load_space("normalization")
    assert space.trainable == "resnet" and space.seeds == 3
    assert space.searched == {"norm": {"grid": list(NORMS)}}
    base = space.validate(registry.get("resnet"))
    assert base["depth"] == 20 and base["dataset"] == "mnist5k"
    assert space.num_trials() == len(NORMS) * 3


@pytest.mark.slow
def test_the_normalization_sweep_starts_and_every_norm_reports(tmp_path, ray_address: str) -> None:  # noqa: ANN001
    """The space end to end through the sweep CLI at a smoke budget: one finished MLflow child run per norm."""
    from mlflow.tracking import MlflowClient

    from orchestrator import sweep

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["normalization", "--seeds", "1", "--address", ray_address, "--storage", str(tmp_path / "rr"),
            "--tracking-uri", store, "--set", "epochs=1", "limit_train_batches=1", "batch_size=16", "val_size=64",
            "depth=8"]
    assert sweep.main(args) == 0
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("normalization").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["norm"] for r in children) == sorted(NORMS)
    assert all(r.info.status == "FINISHED" and 0 < r.data.metrics["train_loss"] < 50 for r in children)
