"""Deep Compression (Han, Mao & Dally, ICLR 2016, arXiv:1510.00149): pruning, trained quantisation, Huffman coding.

The mathematics on any ``nn.Module``, conv and fully connected layers handled separately as in the paper:

1. **Pruning** (Sec. 2): per layer, the smallest-magnitude weights are set to zero until the layer reaches its target
   sparsity; a mask keeps them at exactly zero while the net retrains (:class:`PruneMask`).
2. **Trained quantisation** (Sec. 3): per layer, k-means over the surviving weights with k = 2^b clusters and linear
   initialisation between their min and max (Sec. 3.2, the best of the paper's three); every weight then reads its
   centroid (:class:`SharedWeights`), so fine-tuning updates the centroids with the sum of their members' gradients
   (eq. 3) and the weights of a cluster stay equal.
3. **Huffman coding** (Sec. 4) of the cluster indices and of the sparse relative indices: :func:`huffman_code_lengths`
   is a small heap-based Huffman construction (no Huffman package is installed here; ``heapq`` is the library).

Storage accounting (:func:`model_storage`), in bits, per compressible layer with n weights, of which ``nnz`` survive:
the layer is flattened and stored as the paper's CSR with relative indices (Sec. 2, Fig. 2): each stored entry holds
the gap to the previous one in ``w`` bits (w = 8 for conv, 5 for fc, as in the paper); a gap longer than 2^w is
bridged by filler entries of weight zero, each itself a stored entry. No row pointers are needed (one flat run).

- ``dense``:     32 n
- ``pruned``:    (32 + w) (nnz + fillers)
- ``quantised``: (ceil(log2 K) + w) (nnz + fillers) + 32 K, K = codebook entries (centroids, plus 0 if fillers exist)
- ``huffman``:   Huffman bits of the index stream + Huffman bits of the gap stream + 32 K (the code tables are not
  counted, as in the paper's Table 1)

Every other parameter (biases, BatchNorm scales and shifts) is stored dense at 32 bits in every stage; buffers (BN
running statistics, which fold into the conv at inference) are not counted.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor, nn
from torch.nn.utils import parametrize

from trainables.loop import LOOP_USER_ERRORS
from trainables.registry import ConfigError, check_range, get, register

STAGES = ("dense", "pruned", "quantised", "huffman")
INDEX_BITS = {"conv": 8, "fc": 5}  # Sec. 2: "8 bits for conv layer and 5 bits for fc layer" of relative index
FLOAT_BITS = 32


# ---- layers ------------------------------------------------------------------------------------------------------


def compressible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` of every conv (kind ``"conv"``) and linear (``"fc"``) layer, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            yield name, module, "conv"
        elif isinstance(module, nn.Linear):
            yield name, module, "fc"


def _per_kind(value: float | Mapping[str, Any], kind: str) -> Any:
    return value[kind] if isinstance(value, Mapping) else value


def bake(model: nn.Module) -> nn.Module:
    """Remove every parametrisation, keeping the weights it computes (a plain module again, e.g. to save it)."""
    for _, module, _ in compressible_layers(model):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


# ---- 1. pruning --------------------------------------------------------------------------------------------------


class PruneMask(nn.Module):
    """weight = W * M. Pruned connections are exactly zero in every forward pass, and dL/dW = dL/dweight * M, so
    retraining cannot revive them, whatever momentum or weight decay do to the stored W behind the mask."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask.to(weight.dtype)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """True for the round((1 - sparsity) n) largest-|w| weights, False for the rest (exactly that many kept)."""
    flat = weight.detach().abs().flatten()
    keep = flat.numel() - round(sparsity * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True  # ties broken by topk, so the count is exact
    return mask.view_as(weight)


def prune_model(model: nn.Module, sparsity: float | Mapping[str, float]) -> dict[str, Tensor]:
    """Prune every conv/fc layer to its target sparsity (one float, or ``{"conv": s, "fc": s}``) by magnitude and
    register the mask as a parametrisation (retraining keeps the zeros). Returns the masks by layer name."""
    masks: dict[str, Tensor] = {}
    for name, module, kind in list(compressible_layers(model)):
        if parametrize.is_parametrized(module, "weight"):  # pruning a pruned layer again: start from its weights
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        mask = magnitude_mask(module.weight, float(_per_kind(sparsity, kind)))
        parametrize.register_parametrization(module, "weight", PruneMask(mask))
        masks[name] = mask
    return masks


# ---- 2. trained quantisation -------------------------------------------------------------------------------------


class SharedWeights(nn.Module):
    """weight = C[I] (0 where pruned, I = -1). The layer's only parameter is its codebook C, so autograd gives
    dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k), the paper's eq. 3, and every weight of a cluster stays equal to C_k."""

    def __init__(self, index: Tensor, clusters: int) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.long))
        self.clusters = clusters

    def forward(self, centroids: Tensor) -> Tensor:
        shared = centroids[self.index.clamp(min=0)]
        return torch.where(self.index >= 0, shared, torch.zeros((), dtype=centroids.dtype, device=centroids.device))

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The codebook of ``weight``: each cluster's mean (its centroid, when the weights are already shared)."""
        keep = self.index >= 0
        members = self.index[keep]
        sums = torch.zeros(self.clusters, dtype=torch.float64, device=weight.device)
        sums.index_add_(0, members, weight.detach()[keep].double())
        counts = torch.bincount(members, minlength=self.clusters).clamp(min=1)
        return (sums / counts).to(weight.dtype)


def kmeans_codebook(values: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of 1-D k-means with k = min(2^b, distinct values), linear initialisation: the centroids
    start evenly spaced between min and max (Sec. 3.2, which keeps the few large weights their own centroids)."""
    k = min(2**bits, len(np.unique(values)))
    if k <= 1:
        return np.array([values[0] if len(values) else 0.0]), np.zeros(len(values), dtype=np.int64)
    init = np.linspace(values.min(), values.max(), k).reshape(-1, 1)  # linear init between [min, max]
    km = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(values.reshape(-1, 1).astype(np.float64))
    return km.cluster_centers_.ravel(), km.labels_.astype(np.int64)


def quantise_model(model: nn.Module, bits: int | Mapping[str, int]) -> dict[str, int]:
    """Share the surviving weights of every conv/fc layer among 2^b centroids (``bits``: one int or ``{"conv": b,
    "fc": b}``) and register :class:`SharedWeights`, so later training fine-tunes the centroids. Zero weights (the
    pruned ones) stay zero. Returns the codebook size by layer name."""
    sizes: dict[str, int] = {}
    for name, module, kind in list(compressible_layers(model)):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        weight = module.weight.detach()
        nonzero = weight != 0
        centroids, labels = kmeans_codebook(weight[nonzero].cpu().double().numpy(), int(_per_kind(bits, kind)))
        index = torch.full(weight.shape, -1, dtype=torch.long, device=weight.device)
        index[nonzero] = torch.as_tensor(labels, device=weight.device)
        codebook = torch.as_tensor(centroids, dtype=weight.dtype, device=weight.device)
        shared = SharedWeights(index, len(centroids))
        with torch.no_grad():
            module.weight.copy_(shared(codebook))
        parametrize.register_parametrization(module, "weight", shared)
        sizes[name] = len(centroids)
    return sizes


# ---- 3. Huffman coding and the storage accounting ----------------------------------------------------------------


def huffman_code_lengths(counts: Mapping[Hashable, int]) -> dict[Hashable, int]:
    """Code length of each symbol in a Huffman code for these counts (merge the two rarest subtrees until one is
    left; each merge adds one bit to every symbol below it). A lone symbol still needs 1 bit."""
    symbols = [s for s, c in counts.items() if c > 0]
    if len(symbols) <= 1:
        return {s: 1 for s in symbols}
    lengths = dict.fromkeys(symbols, 0)
    # (count, tie-breaker, symbols of the subtree): the tie-breaker keeps the heap from comparing symbol lists
    heap = [(counts[s], i, [s]) for i, s in enumerate(symbols)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def huffman_bits(symbols: np.ndarray) -> int:
    """Total bits of ``symbols`` Huffman-coded with a code built for their own frequencies: sum_s count_s len_s."""
    values, counts = np.unique(np.asarray(symbols), return_counts=True)
    lengths = huffman_code_lengths(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    return int(sum(int(c) * lengths[v] for v, c in zip(values.tolist(), counts.tolist(), strict=True)))


def relative_index_streams(weight: Tensor, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR-with-relative-index layout of one flattened layer (Sec. 2, Fig. 2): ``(gaps, values)``, one entry
    per stored weight. A gap d > 2^w (w = ``index_bits``) is bridged by filler zeros at gap 2^w each; a filler's
    value is 0.0. ``gaps`` holds 1..2^w (stored as d - 1 in w bits)."""
    flat = weight.detach().flatten().cpu().double().numpy()
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=-1)  # the first entry's gap counts from before position 0
    span = 2**index_bits
    fillers = (gaps - 1) // span  # filler zeros needed before each stored weight
    remainders = gaps - fillers * span
    total_fillers = int(fillers.sum())
    gap_stream = np.concatenate([np.full(total_fillers, span), remainders]).astype(np.int64)
    value_stream = np.concatenate([np.zeros(total_fillers), flat[positions]])
    return gap_stream, value_stream


def layer_bits(weight: Tensor, kind: str, stage: str) -> int:
    """Bits of one conv/fc layer's weights in ``stage`` (see the module docstring for the accounting)."""
    if stage == "dense":
        return FLOAT_BITS * weight.numel()
    w = INDEX_BITS[kind]
    gaps, values = relative_index_streams(weight, w)
    if stage == "pruned":
        return (FLOAT_BITS + w) * len(values)  # fp32 value + w-bit relative index per stored entry
    codebook, symbols = np.unique(values, return_inverse=True)  # K entries (0.0 among them if there are fillers)
    if stage == "quantised":
        index_bits = max(1, math.ceil(math.log2(max(len(codebook), 2))))
        return (index_bits + w) * len(values) + FLOAT_BITS * len(codebook)
    if stage == "huffman":
        return huffman_bits(symbols) + huffman_bits(gaps) + FLOAT_BITS * len(codebook)
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def model_storage(model: nn.Module, stage: str) -> dict[str, float]:
    """Parameters, non-zeros, dense and compressed bytes and their ratio for ``model`` stored as in ``stage``."""
    compressible = {id(p) for _, m, _ in compressible_layers(model)  # the stored tensors behind each layer's weight
                    for p in (m.parametrizations.weight.parameters() if parametrize.is_parametrized(m, "weight")
                              else [m.weight])}
    weights = [(m.weight.detach(), kind) for _, m, kind in compressible_layers(model)]
    others = [p for p in model.parameters() if id(p) not in compressible]
    params = sum(w.numel() for w, _ in weights) + sum(p.numel() for p in others)
    nonzeros = sum(int((w != 0).sum()) for w, _ in weights) + sum(int((p != 0).sum()) for p in others)
    other_bits = FLOAT_BITS * sum(p.numel() for p in others)
    dense_bits = FLOAT_BITS * params
    compressed_bits = sum(layer_bits(w, kind, stage) for w, kind in weights) + other_bits
    return {"parameters": float(params), "nonzeros": float(nonzeros), "dense_bytes": dense_bits / 8,
            "compressed_bytes": compressed_bits / 8, "compression_ratio": dense_bits / compressed_bits}


# ---- the registered trainable (its pipeline is trainables/compression_pipeline.py) --------------------------------

DEEP_COMPRESSION_DEFAULTS: dict[str, Any] = {
    "source": "squeezenet",  # a classification trainable that registers tools={"model": build(config, data)}
    "source_config": {},  # the source's config overrides (its dataset, architecture, base-training optimizer)
    "source_checkpoint": "",  # a folder with the loop's state.pt; "" = train the source for base_epochs first
    "base_epochs": 4,
    "data_dir": None,  # overrides the source's data_dir (declared as a path, so the driver makes it absolute)
    "sparsity": 0.5,  # fraction of weights pruned in every conv/fc layer
    "sparsity_fc": -1.0,  # fc layers' own sparsity; -1 = same as `sparsity` (the paper prunes fc harder)
    "bits_conv": 8,  # 2^b shared weights per conv layer (the paper: 8 for AlexNet's conv layers)
    "bits_fc": 5,  # and per fc layer (the paper: 5)
    "retrain_epochs": 2,  # retraining after pruning (masks fixed)
    "finetune_epochs": 2,  # fine-tuning of the shared centroids after quantisation
    # Retraining and fine-tuning use the source's optimizer, batch size and schedule at a lower learning rate (the
    # paper retrains pruned nets at a fraction of the original rate): lr = source lr * retrain_lr_scale, no warm-up.
    "retrain_lr_scale": 0.1,
    "seed": 0, "limit_train_batches": 0,
}

_STAGE_METRICS = {"val_error": "min", "test_error": "min", "val_accuracy": "max", "test_accuracy": "max",
                  "compressed_bytes": "min", "compression_ratio": "max", "nonzeros": "min"}
DEEP_COMPRESSION_METRICS: dict[str, str] = {
    "val_error": "min", "val_accuracy": "max", "val_loss": "min", "test_error": "min", "test_accuracy": "max",
    "test_loss": "min", "train_loss": "min", "train_error": "min",
    "compression_ratio": "max", "compressed_bytes": "min", "nonzeros": "min", "val_error_increase": "min",
    "pruned_val_error_before_retrain": "min", "quantised_val_error_before_finetune": "min",
    **{f"{stage}_{m}": d for stage in STAGES for m, d in _STAGE_METRICS.items()},
}


def validate_deep_compression(config: dict[str, Any]) -> None:
    """The numbers' ranges, and that the source is a registered classifier with a ``model`` tool whose config
    (overrides, or the checkpoint's) resolves, before any trial starts."""
    check_range(config, "sparsity", 0.0, 1.0, high_open=True)
    if config["sparsity_fc"] != -1.0:
        check_range(config, "sparsity_fc", 0.0, 1.0, high_open=True)
    for key in ("bits_conv", "bits_fc"):
        check_range(config, key, 1, 16)
    check_range(config, "base_epochs", 1)
    for key in ("retrain_epochs", "finetune_epochs", "limit_train_batches"):
        check_range(config, key, 0)
    check_range(config, "retrain_lr_scale", 0.0, low_open=True)
    spec = get(config["source"])
    if "model" not in spec.tools:
        raise ConfigError(f"source trainable '{config['source']}' registers no 'model' tool to rebuild its net")
    from trainables.compression_pipeline import source_config

    source_config(config)  # raises ConfigError on unknown keys / an unreadable checkpoint


@register("deep_compression", defaults=DEEP_COMPRESSION_DEFAULTS, validate=validate_deep_compression,
          metrics=DEEP_COMPRESSION_METRICS, primary="val_error", budget=("finetune_epochs", "finetune_epoch"),
          paths=("source_checkpoint", "data_dir"), user_errors=LOOP_USER_ERRORS)
def train_deep_compression(config: dict[str, Any], ctx: Any) -> None:
    """Deep Compression (Han et al. 2016) of a classifier: prune + retrain, quantise + fine-tune, Huffman."""
    from trainables.compression_pipeline import run_pipeline  # the pipeline imports this module's mathematics

    run_pipeline(config, ctx)
