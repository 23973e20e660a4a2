"""Deep Compression (trainables/deep_compression.py, trainables/compression_pipeline.py); no Ray needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from trainables import registry
from trainables.checkpoint import load_weights
from trainables.compression_pipeline import evaluate_model, train_phase
from trainables.context import LocalContext
from trainables.deep_compression import (
    compressible_layers,
    huffman_bits,
    huffman_code_lengths,
    prune_model,
    quantise_model,
    relative_index_streams,
)
from trainables.loop import load_data
from trainables.resnet import build_resnet
from trainables.resnet import resnet_from_config as resnet_tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_data(registry.get("resnet").resolve({"dataset": "digits"}))


def _phase_config(**overrides: Any) -> dict[str, Any]:
    """A loop config for a training phase: a few large-lr steps with momentum and weight decay (what would move
    pruned weights off zero, or untie shared ones, if the masks or ties did not hold)."""
    return registry.get("resnet").resolve({"dataset": "digits", "batch_size": 32, "lr": 0.1, "weight_decay": 1e-3,
                                           "limit_train_batches": 4, "lr_schedule": "constant", **overrides})


def test_pruning_reaches_the_stated_sparsity_per_layer_by_magnitude() -> None:
    torch.manual_seed(0)
    model = build_resnet(depth=8, num_classes=10, in_channels=1)
    before = {name: m.weight.detach().clone() for name, m, _ in compressible_layers(model)}
    masks = prune_model(model, {"conv": 0.6, "fc": 0.3})
    assert len(masks) == 8  # 7 convs (stem + 3 blocks x 2) and the fc layer
    for name, module, kind in compressible_layers(model):
        n = module.weight.numel()
        assert int((module.weight == 0).sum()) == round((0.6 if kind == "conv" else 0.3) * n), name
        kept, pruned = before[name][masks[name]].abs(), before[name][~masks[name]].abs()
        assert kept.min() >= pruned.max()  # the smallest magnitudes went
        assert torch.equal(module.weight[masks[name]], before[name][masks[name]])  # the rest untouched


def test_retraining_keeps_pruned_weights_at_exactly_zero(digits: Any) -> None:
    torch.manual_seed(0)
    model = build_resnet(depth=8, num_classes=digits.num_classes, in_channels=digits.input_shape[0])
    masks = prune_model(model, 0.7)
    start = {name: m.weight.detach().clone() for name, m, _ in compressible_layers(model)}
    train_phase(LocalContext(), _phase_config(), digits, model, "retrain", 1, epochs=2)
    for name, module, _ in compressible_layers(model):
        weight = module.weight.detach()
        assert torch.count_nonzero(weight[~masks[name]]) == 0, name
        assert not torch.equal(weight[masks[name]], start[name][masks[name]]), f"{name} did not train"


def _distinct_nonzero(weight: torch.Tensor) -> int:
    return len(torch.unique(weight[weight != 0]))


def test_quantisation_leaves_at_most_2_to_the_b_values_and_fine_tuning_keeps_them_shared(digits: Any) -> None:
    torch.manual_seed(0)
    model = build_resnet(depth=8, num_classes=digits.num_classes, in_channels=digits.input_shape[0])
    masks = prune_model(model, 0.5)
    sizes = quantise_model(model, {"conv": 3, "fc": 2})
    codebooks = {}
    for name, module, kind in compressible_layers(model):
        limit = 8 if kind == "conv" else 4
        assert 2 <= _distinct_nonzero(module.weight.detach()) <= limit == sizes[name], name
        codebooks[name] = module.parametrizations.weight.original.detach().clone()
    train_phase(LocalContext(), _phase_config(), digits, model, "finetune", 2, epochs=2)
    for name, module, kind in compressible_layers(model):
        weight, index = module.weight.detach(), module.parametrizations.weight[0].index
        assert torch.count_nonzero(weight[~masks[name]]) == 0
        assert _distinct_nonzero(weight) <= (8 if kind == "conv" else 4)
        centroids = module.parametrizations.weight.original.detach()
        assert not torch.equal(centroids, codebooks[name]), f"{name}: the centroids did not train"
        for k in range(len(centroids)):  # every member of cluster k reads exactly its centroid
            assert torch.all(weight[index == k] == centroids[k]), (name, k)


def test_centroid_gradient_is_the_sum_of_its_members_gradients() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.5]]))
    quantise_model(layer, 1)  # 2 clusters: {-0.5} and {+0.5}; the zero stays pruned
    y = layer(torch.tensor([[1.0, 2.0, 3.0]]))
    (y[0, 0] - y[0, 1]).backward()
    # dL/dW = outer(dL/dy, x) = [[1, 2, 3], [-1, -2, -3]]; eq. 3 sums it over each cluster's members:
    # -0.5 at (0,1), (1,0): 2 - 1 = 1;  +0.5 at (0,0), (1,1), (1,2): 1 - 2 - 3 = -4
    centroids = layer.parametrizations.weight.original
    grads = {round(float(c), 6): float(g) for c, g in zip(centroids.detach(), centroids.grad, strict=True)}
    assert grads == {-0.5: 1.0, 0.5: -4.0}


def test_huffman_size_of_a_dyadic_distribution() -> None:
    counts = {"a": 4, "b": 2, "c": 1, "d": 1}  # p = 1/2, 1/4, 1/8, 1/8: entropy 1.75 bits, met by Huffman exactly
    assert huffman_code_lengths(counts) == {"a": 1, "b": 2, "c": 3, "d": 3}
    symbols = np.array(list("aaaabbcd") * 5)
    assert huffman_bits(symbols) / len(symbols) == 1.75
    assert huffman_bits(np.arange(4).repeat(3)) == 24  # uniform over 4 symbols: 2 bits each
    assert huffman_bits(np.zeros(7)) == 7  # a lone symbol still takes a bit


def test_relative_indices_insert_filler_zeros_past_the_largest_gap() -> None:
    weight = torch.zeros(50)
    weight[[0, 3, 40]] = torch.tensor([1.0, 2.0, 3.0])
    gaps, values = relative_index_streams(weight, index_bits=3)  # gaps of at most 2^3 = 8
    # gaps 1, 3, 37; 37 = 4 fillers of 8 + 5
    assert sorted(gaps.tolist()) == [1, 3, 5, 8, 8, 8, 8]
    assert sorted(values.tolist()) == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]


def test_the_trainable_compresses_a_resnet_by_a_large_factor_at_small_loss() -> None:
    spec = registry.get("deep_compression")
    config = spec.resolve({
        "source": "resnet", "source_config": {"depth": 8, "dataset": "digits", "batch_size": 64},
        "base_epochs": 4, "retrain_epochs": 1, "finetune_epochs": 1, "sparsity": 0.7, "bits_conv": 4, "bits_fc": 4,
    })
    ctx = LocalContext()
    spec.train(config, ctx)
    stages = [r for r in ctx.results if "dense_bytes" in r]  # one report per stage
    assert [r["stage"] for r in stages] == [0, 1, 2, 3]
    final, dense = ctx.results[-1], stages[0]
    assert dense["val_accuracy"] > 0.9 and dense["test_accuracy"] > 0.9  # the source learned
    assert final["compression_ratio"] > 10  # measured 14.4x: 30% of the weights, 4-bit indices, Huffman
    assert final["compression_ratio"] > stages[2]["compression_ratio"] > stages[1]["compression_ratio"] > 2
    assert final["test_accuracy"] > dense["test_accuracy"] - 0.05  # small loss (measured: 0.989 -> 0.975)
    assert final["nonzeros"] < 0.4 * final["parameters"]
    assert final["dense_test_error"] == dense["test_error"] and final["val_error_increase"] < 0.05
    assert spec.is_complete(config, final) and not spec.is_complete(config, ctx.results[-2])
    # The final checkpoint is the compressed net in plain weights: the source's model tool reads it back.
    source = registry.get("resnet").resolve({"depth": 8, "dataset": "digits", "batch_size": 64})
    data = load_data(source)
    model = resnet_tool(source, data)
    with ctx.restored_checkpoint() as path:  # the trial's last checkpoint
        load_weights(path, {"model": model})
    assert evaluate_model(ctx, data, model)["test_error"] == final["test_error"]
    assert max(_distinct_nonzero(m.weight.detach()) for _, m, _ in compressible_layers(model)) <= 16


def test_a_source_without_a_model_tool_or_with_unknown_keys_is_refused_before_training() -> None:
    spec = registry.get("deep_compression")
    with pytest.raises(registry.ConfigError, match="no config key"):
        spec.resolve({"source": "resnet", "source_config": {"depht": 8}})

    registry.register("toolless_classifier", defaults={"epochs": 1})(lambda config, ctx: None)
    try:
        with pytest.raises(registry.ConfigError, match="no 'model' tool"):
            spec.resolve({"source": "toolless_classifier"})
    finally:
        registry.unregister("toolless_classifier")
