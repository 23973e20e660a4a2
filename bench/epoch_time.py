"""Epoch time of the ``resnet`` trainable inside a Tune trial vs the same model and data in a plain PyTorch loop.

Why: the in-process runner exists so that a trial trains as fast as a hand-written script would; the issue's goal
is ours/plain <= 1.05. Four variants, interleaved per repeat (tune, tune-plain, local, plain, tune, ...), a 2x2 of
{in a Tune trial, in this driver process} x {our trainable, a plain loop}:

- ``tune``: the real trainable via ``make_trainable("resnet", TrialResources(), ...)`` in a Tuner (1 CPU, so the
  runner sets 1 torch thread); each epoch's ``epoch_seconds`` from the results (the loop's own timer around
  the training batches: training only, no evaluation, no checkpoint).
- ``tune-plain``: the plain loop below inside a bare Tune function trial (1 CPU, 1 thread, no runner).
- ``local``: the same trainable function in this (driver) process with a ``LocalContext``: our loop and
  ``BatchLoader`` without Ray.
- ``plain``: a hand-written loop in this process: ``build_resnet``, the same tensors (``load_data``), SGD with the
  same hyperparameters, ``torch.randperm`` shuffling, ``x[idx]`` indexing, normalisation, forward/backward/step,
  timed with ``time.perf_counter``.

tune/tune-plain and local/plain isolate our code's cost; tune-plain/plain isolates the cost of being a Tune trial.
Every run also records the foreign load (cores kept busy by other people's processes), since the machine is shared.

The driver runs with ``torch.set_num_threads(1)``, like the trial. The first epoch of each run is reported apart
(warm-up: allocator, first-touch of weights); the headline medians use epochs 2..E. ``--profile`` adds a table of
what the loop's extra pieces cost per epoch (loader vs plain batching, the per-step ``float()`` metrics, gradient
zeroing), measured in-process.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import shutil
import tempfile
import time
from typing import Any

import _common
import torch
import torch.nn.functional as F
from _loop import TrainOnly

from trainables import registry
from trainables.batching import BatchLoader
from trainables.context import LocalContext
from trainables.data import DatasetBundle
from trainables.loop import fit, load_data
from trainables.resnet import build_resnet

VARIANTS = ("tune", "tune-plain", "local", "plain")


def resnet_config(depth: int, epochs: int) -> dict[str, Any]:
    """The trainable's full config: MNIST-5k (the default dataset), batch 128, the papers' SGD settings."""
    return registry.get("resnet").resolve({"depth": depth, "epochs": epochs, "batch_size": 128})


def run_tune(config: dict[str, Any], storage: str, name: str) -> list[float]:
    """One Tune trial of the real trainable; its per-epoch ``epoch_seconds``."""
    from ray import tune

    from orchestrator.runner import TrialResources, make_trainable

    trainable = make_trainable("resnet", TrialResources(), storage_path=storage, experiment_name=name)
    tuner = tune.Tuner(trainable, param_space=config, tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"tune trial failed: {results.errors[0]}")
    return [float(s) for s in results[0].metrics_dataframe["epoch_seconds"]]


def plain_trial(config: dict[str, Any]) -> None:
    """A bare Tune function trial running the plain loop (pickled by value with this script: no bench imports)."""
    from ray import tune

    torch.set_num_threads(1)
    for seconds in run_plain(config, load_data(config)):
        tune.report({"epoch_seconds": seconds})


def run_tune_plain(config: dict[str, Any], storage: str, name: str) -> list[float]:
    """The plain loop in a bare 1-CPU Tune function trial; its per-epoch seconds."""
    from ray import tune

    tuner = tune.Tuner(tune.with_resources(plain_trial, {"CPU": 1}), param_space=config,
                       tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"tune-plain trial failed: {results.errors[0]}")
    return [float(s) for s in results[0].metrics_dataframe["epoch_seconds"]]


def run_local(config: dict[str, Any], root: str) -> list[float]:
    """The same trainable function in this process on a LocalContext (our loop, no Ray)."""
    ctx = LocalContext(checkpoint_root=tempfile.mkdtemp(dir=root))
    registry.get("resnet").train(config, ctx)
    return [float(r["epoch_seconds"]) for r in ctx.results]


def build_plain(config: dict[str, Any], data: DatasetBundle) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(config["seed"])
    model = build_resnet(depth=config["depth"], num_classes=data.num_classes, in_channels=data.input_shape[0],
                         p_L=1.0, seed=config["seed"])
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                                nesterov=config["nesterov"], weight_decay=config["weight_decay"])
    return model, optimizer


def run_plain(config: dict[str, Any], data: DatasetBundle) -> list[float]:
    """A minimal hand-written PyTorch loop over the same tensors; per-epoch seconds."""
    model, optimizer = build_plain(config, data)
    x_all, y_all = data.train.x, data.train.y
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    batch = int(config["batch_size"])
    seconds = []
    for _ in range(int(config["epochs"])):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(y_all))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = (x_all[idx].float() / 255.0 - mean) / std
            loss = F.cross_entropy(model(x), y_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def profile_pieces(config: dict[str, Any], data: DatasetBundle, repeats: int) -> _common.Table:
    """Per-epoch cost of each piece in which our loop differs from the plain loop, measured in this process.

    Every piece is timed over one whole epoch's batches (``repeats`` times, median), so the numbers compare directly
    with the epoch time.
    """
    batch = int(config["batch_size"])
    n = len(data.train.y)
    steps = -(-n // batch)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    loader = BatchLoader(data.train, batch_size=batch, mean=data.mean, std=data.std, augment=data.augment,
                         shuffle=True, seed=0)

    def our_batches() -> None:
        loader.set_epoch(0)
        for _x, _y in loader:
            pass

    def plain_batches() -> None:
        order = torch.randperm(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            _x = (data.train.x[idx].float() / 255.0 - mean) / std
            _y = data.train.y[idx]

    def sampler_only() -> None:
        loader.set_epoch(0)
        for b in loader.batch_sampler:
            torch.as_tensor(b, dtype=torch.long)

    model, optimizer = build_plain(config, data)
    x, y = next(iter(loader))
    logits = model(x).detach()
    loss = F.cross_entropy(logits, y)

    def metric_syncs() -> None:
        for _ in range(steps):
            float(loss.detach()) * len(y)
            float((logits.argmax(1) != y).sum())

    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def zero_keep() -> None:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=False)

    def step_only() -> None:
        for _ in range(steps):
            optimizer.step()

    def timed_median(fn: Any) -> float:
        fn()  # warm-up
        values = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            values.append(time.perf_counter() - started)
        return _common.median(values)

    table = _common.Table(f"Per-epoch cost of the loop's pieces, ResNet-{config['depth']}, {steps} steps "
                          f"(1 thread, in-process, median of {repeats})", ["piece", "s / epoch"])
    table.add("our BatchLoader: all batches of an epoch (sampler + index + addcmul)", timed_median(our_batches))
    table.add("  of which DistributedSampler/BatchSampler + list->tensor", timed_median(sampler_only))
    table.add("plain: randperm + (x[idx].float() / 255 - mean) / std", timed_median(plain_batches))
    table.add("our per-step metrics: float(loss) + float(argmax != y).sum()", timed_median(metric_syncs))
    table.add("our zero_grad(set_to_none=False) (plain: set_to_none=True, ~free)", timed_median(zero_keep))
    table.add("for scale: optimizer.step() alone", timed_median(step_only))
    return table


def cprofile_epoch(config: dict[str, Any], data: DatasetBundle, top: int = 12) -> _common.Table:
    """cProfile of one training epoch of the common loop (``fit`` without evaluation) in this process: where the
    epoch's time goes, by function (the checkpoint at the epoch's end included)."""
    model, _ = build_plain(config, data)
    loader = BatchLoader(data.train, batch_size=int(config["batch_size"]), mean=data.mean, std=data.std,
                         augment=data.augment, shuffle=True, seed=0)
    one_epoch = {**config, "epochs": 1}
    fit(LocalContext(checkpoint_root=tempfile.mkdtemp()), one_epoch, TrainOnly(model, loader))  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    fit(LocalContext(checkpoint_root=tempfile.mkdtemp()), one_epoch, TrainOnly(model, loader))
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    table = _common.Table(f"cProfile of one training epoch of the loop (ResNet-{config['depth']}), total "
                          f"{total:.2f} s, top by own time", ["function", "own s", "calls"])
    for (filename, line, name), (_cc, calls, tottime, _cum, _callers) in rows:
        where = filename.rsplit("/", 2)[-2:] if "/" in filename else [filename]
        table.add(f"{name} ({'/'.join(where)}:{line})", tottime, calls)
    return table


def steady_epochs(runs: list[list[float]]) -> list[float]:
    """All epochs but each run's first (warm-up), pooled over runs; the first too when a run has one epoch."""
    return [s for run in runs for s in (run[1:] if len(run) > 1 else run)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=3)
    parser.add_argument("--depths", type=int, nargs="+", default=[20], help="ResNet depths (default 20; e.g. 20 56)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2; the first is warm-up)")
    parser.add_argument("--profile", action="store_true",
                        help="add the per-piece and cProfile tables (also done when tune / plain > 1.05)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which variants to run (default all four; plain is the reference and always runs)")
    args = parser.parse_args()

    import ray

    torch.set_num_threads(1)  # as the runner does in a 1-CPU trial
    root = tempfile.mkdtemp(prefix="bench_epoch_time_")
    load_before = _common.load1()
    # seconds[depth][variant] = per-run lists of per-epoch seconds
    seconds: dict[int, dict[str, list[list[float]]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    foreign: dict[int, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    variants = [v for v in VARIANTS if v in args.variants or v == "plain"]
    extra_tables: list[_common.Table] = []
    try:
        _common.start_ray()
        for depth in args.depths:
            config = resnet_config(depth, args.epochs)
            data = load_data(config)
            for repeat in range(args.repeats):
                for variant in variants:
                    with _common.ForeignLoad() as load:
                        if variant == "tune":
                            epochs = run_tune(config, f"{root}/ray_results", f"resnet{depth}-{repeat}")
                        elif variant == "tune-plain":
                            epochs = run_tune_plain(config, f"{root}/ray_results", f"plain{depth}-{repeat}")
                        elif variant == "local":
                            epochs = run_local(config, root)
                        else:
                            epochs = run_plain(config, data)
                    seconds[depth][variant].append(epochs)
                    foreign[depth][variant].append(load.value)
                    print(f"depth {depth} repeat {repeat + 1}/{args.repeats} {variant:>10}: epochs "
                          f"{', '.join(f'{s:.2f}' for s in epochs)} s (foreign load {load.value:.2f} cores)")
            ratio = _common.median(steady_epochs(seconds[depth]["tune"])) / _common.median(
                steady_epochs(seconds[depth]["plain"])) if "tune" in variants else 1.0
            if args.profile or ratio > 1.05:
                extra_tables.append(profile_pieces(config, data, args.repeats))
                extra_tables.append(cprofile_epoch(config, data))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    steps = -(-len(data.train.y) // 128)
    table = _common.Table(
        f"Epoch time, MNIST-5k ({len(data.train.y)} train images, {steps} steps of 128), 1 torch thread, "
        f"{args.epochs} epochs x {args.repeats} interleaved repeats",
        ["depth", "variant", "median s/epoch (2..E)", "min", "max", "median epoch 1", "ratio to plain",
         "min-based ratio", "foreign load"],
    )
    for depth in args.depths:
        plain = steady_epochs(seconds[depth]["plain"])
        for variant in variants:
            values = steady_epochs(seconds[depth][variant])
            firsts = [run[0] for run in seconds[depth][variant]]
            table.add(depth, variant, _common.median(values), min(values), max(values), _common.median(firsts),
                      _common.median(values) / _common.median(plain), min(values) / min(plain),
                      _common.median(foreign[depth][variant]))
    table.notes.append("tune = the resnet trainable in a Tune trial (epoch_seconds from its results); tune-plain = "
                       "the plain loop in a bare Tune trial; local = our trainable on a LocalContext in the driver; "
                       "plain = a hand-written loop in the driver. Goal: tune / plain <= 1.05. min/max over all "
                       "epochs 2..E of all repeats.")
    table.notes.append("foreign load = median over runs of the cores other people's processes kept busy during the "
                       "run (machine busy time minus ours, / wall); 0 = quiet machine.")
    table.notes.append(f"load1 before {load_before:.2f}; {_common.environment('1 (trial and driver)')}")
    _common.emit([table, *extra_tables], args.markdown, "## epoch_time")


if __name__ == "__main__":
    main()
