"""A child network of an architecture search: tokens -> network (``trainables.nas_spaces``), trained on the loop.

The trial builds the child from ``config['tokens']``, measures its inference latency on its own device
(``trainables.latency``: batch ``latency_batch``, warm-up, median of ``latency_repeats`` runs, ``latency_threads``
threads, cached per architecture and device), counts its parameters and MACs, and then trains it with
:func:`trainables.loop.fit`. Latency is measured *before* training, on the freshly built child: the forward pass of
a dense network costs the same whatever its weights, and measuring first puts ``latency_ms`` into every epoch's
report, so a child that ASHA stops early still has its latency (and the searcher can score it with its last
reported accuracy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from trainables.adversarial import ADVERSARIAL_DEFAULTS, canonical_adversarial, validate_adversarial
from trainables.classification import CLASSIFICATION_METRICS, CLASSIFICATION_PRIMARY, fit_classifier, inspect_tool
from trainables.context import Context
from trainables.data import DatasetBundle
from trainables.latency import LatencyCache, cached_latency
from trainables.loop import LOOP_DEFAULTS, LOOP_PATHS, LOOP_USER_ERRORS, load_data, validate_loop_config
from trainables.nas_spaces import SPACES, count_macs, count_params, get_space
from trainables.normalization import apply_norm, validate_norm
from trainables.registry import ArchitectureSearch, ConfigError, check_choice, check_range, register

NAS_CHILD_DEFAULTS: dict[str, Any] = {
    **LOOP_DEFAULTS,
    # Children are trained briefly (a search ranks many of them): one short epoch on MNIST-5k by default.
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
    "space": "mnasnet",
    "num_blocks": 0,  # blocks (MnasNet) or layers (Zoph & Le); 0 = the space's default (7 / 6)
    "tokens": [],  # one value index per decision; [] = all first values (a small baseline child)
    "arch": "",  # the readable form of the tokens (written by the searcher, for people and MLflow; not used)
    "trial_index": 0,  # the searcher's sample counter (orders trials in plots)
    "latency_batch": 1,
    # 30 warm-up + median of 100 runs: CV of repeated measurements of one child 1.8% vs 3.5% with 10 + 30 (quiet,
    # interleaved, docs/RESULTS.md Part II); ~0.4 s a child.
    "latency_warmup": 30,
    "latency_repeats": 100,
    "latency_threads": 1,
    "latency_cache": None,  # JSON file shared by the trials of a machine; None = always measure
    "norm": "batch",  # none | batch | weight | mean_only_batch | weight+mean_only_batch (trainables/normalization)
    **ADVERSARIAL_DEFAULTS,  # FGSM training, as for every classifier
}


def validate_nas_child(config: dict[str, Any]) -> None:
    check_choice(config, "space", tuple(SPACES))
    check_range(config, "num_blocks", 0)
    space = get_space(config["space"], config["num_blocks"])
    if config["tokens"]:
        space.check(config["tokens"])
    for key in ("latency_batch", "latency_repeats", "latency_threads"):
        check_range(config, key, 1)
    check_range(config, "latency_warmup", 0)
    validate_norm(config)


@contextlib.contextmanager
def _fixed_seed(seed: int) -> Iterator[None]:
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def build_nas_child(config: dict[str, Any], data: DatasetBundle) -> nn.Module:
    """The child network ``config['tokens']`` name, for ``data``'s images (also the ``model`` tool: inspect and
    Deep Compression rebuild a checkpoint's net with it)."""
    space = get_space(config["space"], config["num_blocks"])
    tokens = list(config["tokens"]) or [0] * len(space.decisions)
    return apply_norm(space.build(tokens, data.input_shape, data.num_classes), config["norm"])


def child_stats(config: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int,
                device: torch.device | str = "cpu") -> dict[str, float]:
    """Latency (cached), params and MACs of the child ``config`` names, on ``device``."""
    space = get_space(config["space"], config["num_blocks"])
    tokens = list(config["tokens"]) or [0] * len(space.decisions)
    with _fixed_seed(int(config["seed"])):
        model = apply_norm(space.build(tokens, input_shape, num_classes), config["norm"]).to(device)
    arch = f"{space.name}{len(space.groups)}:{','.join(map(str, tokens))}"
    arch += "" if config["norm"] == "batch" else f"/{config['norm']}"  # a cache key per measured net
    stats = cached_latency(
        LatencyCache(config["latency_cache"]), arch, model, input_shape, batch=config["latency_batch"],
        warmup=config["latency_warmup"], repeats=config["latency_repeats"], threads=config["latency_threads"],
        device=device,
    )
    return {**stats, "params": float(count_params(model)), "macs": float(count_macs(model, input_shape))}


@register("nas_child", defaults=NAS_CHILD_DEFAULTS,
          validate=(validate_loop_config, validate_adversarial, validate_nas_child), canonical=canonical_adversarial,
          metrics={**CLASSIFICATION_METRICS, "latency_ms": "min", "params": "min", "macs": "min"},
          primary=CLASSIFICATION_PRIMARY, user_errors=LOOP_USER_ERRORS, paths=(*LOOP_PATHS, "latency_cache"),
          tools={"model": build_nas_child, "inspect": inspect_tool(build_nas_child, None),
                 "architecture_search": ArchitectureSearch(
              spaces=tuple(SPACES), get_space=get_space, accuracy="val_accuracy", latency="latency_ms",
              space_key="space", blocks_key="num_blocks", tokens_key="tokens", arch_key="arch",
              index_key="trial_index", cache_key="latency_cache", columns=("params", "macs", "latency_cv"))})
def train_nas_child(config: dict[str, Any], ctx: Context) -> None:
    """A NAS child network (MnasNet or Zoph & Le space) from its tokens, with its measured latency."""
    data = load_data(config)
    space = get_space(config["space"], config["num_blocks"])
    tokens = list(config["tokens"]) or [0] * len(space.decisions)
    try:
        extras = child_stats(config, data.input_shape, data.num_classes, ctx.device)
    except RuntimeError as err:  # e.g. a kernel larger than a padded map on an unusual input size
        raise ConfigError(f"architecture {space.describe(tokens)} does not build for {data.input_shape}: "
                          f"{err}") from None
    del extras["params"]  # the classification task reports the same count every epoch
    ctx.add_to_reports(extras)
    fit_classifier(ctx, config, data, lambda: build_nas_child(config, data))
