"""The common loop: ``fit(ctx, config, task)`` runs any :class:`trainables.task.Task` to its budget.

The method writes its task (models, data, step, evaluation); the loop does the rest, identically in a Tune trial's
process, in a DDP worker group and without Ray:

- the budget: ``epochs`` report rounds; a round is one pass over the task's batches (at most
  ``limit_train_batches``), or exactly ``task.steps_per_epoch`` optimizer steps for methods budgeted in steps;
- the global seed before the models are built (the same initial weights on every rank; DDP also broadcasts
  rank 0's), then a per-rank seed so dropout masks differ between ranks as they would within one large batch;
- every model moved to the device and wrapped for DDP; optimizers and per-epoch schedules from the config
  (:mod:`trainables.optim`), warm-up by steps or by training error;
- without ``manual_optimization``: zero gradients, backward of the step's ``loss``, optimizer step;
- one report per epoch: training means, the task's evaluation, ``lr``, timing, and in a group whether all ranks
  hold bit-identical weights; with a checkpoint of everything a resume needs (:mod:`trainables.checkpoint`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from trainables.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainables.context import TASK_ARTIFACTS, Context, unwrap
from trainables.data import DatasetBundle, DatasetError, check_dataset, dataset_names, load_dataset
from trainables.optim import OPTIM_DEFAULTS, Warmup, build_schedule, validate_optim_config
from trainables.registry import as_config_error, check_choice, check_range
from trainables.task import Task, Total

LOOP_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",
    "data_dir": None,  # CIFAR / SVHN root in their standard formats; nothing is downloaded
    "val_size": None,  # count or fraction held out of train; None = the dataset's default
    "split_seed": 0,  # fixed across repeats so that seeds vary the training, not the split
    "augment": "auto",  # auto = the dataset's paper augmentation (CIFAR: 4-px pad + crop + flip)
    "epochs": 4,
    "batch_size": 128,
    **OPTIM_DEFAULTS,
    "seed": 0,
    "limit_train_batches": 0,  # > 0: at most this many training batches per epoch (smoke tests, benchmarks)
}

# Config keys of the loop that hold local paths (declared by every trainable on the loop, made absolute by the driver).
LOOP_PATHS: tuple[str, ...] = ("data_dir",)
# Exceptions of the loop that mean the user's input is wrong (declared by every trainable on the loop).
LOOP_USER_ERRORS: tuple[type[BaseException], ...] = (DatasetError, CheckpointError)


def validate_loop_config(config: Mapping[str, Any]) -> None:
    """Range checks for the loop's keys, and that the dataset is there (before any trial starts)."""
    check_choice(config, "dataset", dataset_names())
    check_choice(config, "augment", ("auto", "none", "crop", "crop_flip"))
    check_range(config, "epochs", 1)
    check_range(config, "batch_size", 1)
    check_range(config, "limit_train_batches", 0)
    validate_optim_config(config)
    with as_config_error(DatasetError):
        check_dataset(config["dataset"], config["data_dir"])


def load_data(config: Mapping[str, Any]) -> Any:
    """The dataset named in ``config`` with its seeded split (a :class:`DatasetBundle` for image datasets)."""
    return load_dataset(config["dataset"], data_dir=config["data_dir"], val_size=config["val_size"],
                        split_seed=config["split_seed"], augment=config["augment"])


def fit(ctx: Context, config: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """Train ``task`` for ``config['epochs']`` report rounds; returns the last round's metrics.

    Resumes from ``ctx``'s checkpoint when there is one (a retried or resumed trial continues, it does not restart).
    """
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the same initial weights on every rank
    models = task.build_models()
    optimizers = task.build_optimizers(models, config)
    epochs = int(config["epochs"])
    schedules = {name: build_schedule(opt, config, epochs) for name, opt in optimizers.items()}
    warmup = Warmup(config)

    start_epoch, step = 0, 0
    with ctx.restored_checkpoint() as checkpoint_dir:
        if checkpoint_dir is not None:
            state = read_checkpoint(checkpoint_dir)
            _restore(state, checkpoint_dir, models, optimizers, schedules)
            warmup.load_state_dict(state["loop_state"])
            task.load_state_dict(state["task_state"])
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
            ranks = state["rng"]
            if len(ranks) == ctx.world_size:
                set_rng_state(ranks[ctx.rank], ctx.device)  # each rank continues its own stream
            else:  # a different group size: a fresh stream per rank, still a function of (seed, rank, epoch)
                torch.manual_seed(seed + 100_003 * ctx.rank + 7_919 * start_epoch)
    if start_epoch == 0:
        task.initialize(models, ctx)  # data-dependent init on a fresh start only: a resumed run has its weights
        torch.manual_seed(seed + 100_003 * ctx.rank)  # dropout masks differ between ranks, as they would in one batch

    task.models = {name: ctx.wrap_model(model) for name, model in models.items()}
    task.optimizers = optimizers
    for model in task.models.values():
        # Zero gradients from the start (not None): a block that stochastic depth drops in this step still gets its
        # momentum and weight-decay update, as in the paper's Torch code, also in the first step after a resume.
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        set_draw_rank(model, ctx.rank if ctx.world_size > 1 else None)
    limit = int(config["limit_train_batches"]) or None
    first_optimizer = next(iter(optimizers.values()), None)  # None: a task without training steps (kNN)

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        scheduled = {name: [group["lr"] for group in opt.param_groups] for name, opt in optimizers.items()}
        lr = warmup.lr_for_step(step) or (first_optimizer.param_groups[0]["lr"] if first_optimizer else 0.0)
        for model in task.models.values():
            model.train()
        started = time.perf_counter()
        sums: dict[str, list[float]] = {}
        for batch in _batches(task, ctx, epoch, limit):
            _set_lr(optimizers, scheduled, warmup.lr_for_step(step))
            out = task.train_step(batch, step)
            if not task.manual_optimization:
                (optimizer,) = optimizers.values()
                optimizer.zero_grad(set_to_none=False)  # keep zeros (see above): dropped blocks still decay
                out["loss"].backward()
                optimizer.step()
            _accumulate(sums, out, task.batch_size(batch))
            step += 1
        epoch_seconds = time.perf_counter() - started
        _set_lr(optimizers, scheduled, None)  # the schedule continues from its own lr, as if there were no warm-up
        for schedule in schedules.values():
            schedule.step()
        means, samples = _epoch_means(ctx, sums)
        metrics = {"epoch": epoch + 1, **means, "lr": lr, "epoch_seconds": epoch_seconds,
                   "samples_per_second": samples / epoch_seconds if epoch_seconds > 0 else 0.0}
        warmup.end_of_epoch(metrics.get("train_error"))
        metrics.update(task.evaluate(ctx))
        metrics.update(task.epoch_metrics())
        if ctx.world_size > 1:
            metrics["replicas_in_sync"] = float(all(replicas_in_sync(ctx, unwrap(m)) for m in task.models.values()))
        metrics["step"] = step
        rank_rng = ctx.all_gather_object(rng_state(ctx.device))
        with tempfile.TemporaryDirectory(prefix="ckpt_") as tmp:
            if ctx.is_chief:
                task.write_artifacts(os.path.join(tmp, TASK_ARTIFACTS))
                save_checkpoint(tmp, models={n: unwrap(m) for n, m in task.models.items()}, optimizers=optimizers,
                                schedules=schedules, epoch=epoch, step=step, rank_rng=rank_rng, config=config,
                                loop_state=warmup.state_dict(), task_state=task.state_dict())
            ctx.report(metrics, checkpoint_dir=tmp if ctx.is_chief else None)
    return metrics


def _batches(task: Task, ctx: Context, epoch: int, limit: int | None) -> Iterator[Any]:
    """This epoch's batches: one pass (at most ``limit``), or ``task.steps_per_epoch`` steps that cycle through
    data epochs ``epoch * 1000 + i`` (a function of the epoch alone, so a resumed run draws the same batches)."""
    steps = task.steps_per_epoch
    if steps:
        passes = (task.train_batches(ctx, epoch * 1000 + i) for i in itertools.count())
        yield from itertools.islice(itertools.chain.from_iterable(passes), steps)
        return
    for index, batch in enumerate(task.train_batches(ctx, epoch)):
        if limit is not None and index >= limit:
            break
        yield batch


def _set_lr(optimizers: Mapping[str, torch.optim.Optimizer], scheduled: Mapping[str, list[float]],
            warmup_lr: float | None) -> None:
    for name, optimizer in optimizers.items():
        for group, lr in zip(optimizer.param_groups, scheduled[name], strict=True):
            group["lr"] = lr if warmup_lr is None else warmup_lr


def _accumulate(sums: dict[str, list[float]], out: Mapping[str, Any], n: int) -> None:
    """Add one step's scalars: [total, count] per name (a mean weighs by the batch's ``n`` samples)."""
    for name, value in out.items():
        if isinstance(value, Total):
            total, count = float(value.total), float(value.count)
        else:
            total, count = float(value.detach() if isinstance(value, torch.Tensor) else value) * n, float(n)
        entry = sums.setdefault(name, [0.0, 0.0])
        entry[0] += total
        entry[1] += count
    sums.setdefault("_samples", [0.0, 0.0])[0] += n


def _epoch_means(ctx: Context, sums: Mapping[str, list[float]]) -> tuple[dict[str, float], float]:
    """``train_{name}``: the epoch's totals over every rank divided by the counts; and the samples of all ranks."""
    names = [name for name in sums if name != "_samples"]
    # The per-rank sums become global means: [totals..., counts..., samples], reduced in one collective.
    flat = torch.tensor([sums[n][0] for n in names] + [sums[n][1] for n in names]
                        + [sums.get("_samples", [0.0])[0]], dtype=torch.float64)
    reduced = ctx.all_reduce_mean(flat)
    means = {f"train_{name}": float(reduced[i] / reduced[len(names) + i]) for i, name in enumerate(names)}
    return means, float(reduced[-1]) * ctx.world_size


def _restore(state: Mapping[str, Any], directory: str, models: Mapping[str, nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             schedules: Mapping[str, torch.optim.lr_scheduler.LRScheduler]) -> None:
    try:
        for name, model in models.items():
            model.load_state_dict(state["models"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, schedule in schedules.items():
            schedule.load_state_dict(state["schedules"][name])
    except Exception as err:
        raise CheckpointError(f"checkpoint {directory}/{CHECKPOINT_FILE} does not fit this trainable's models: "
                              f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None


def set_draw_rank(model: nn.Module, rank: int | None) -> None:
    """Tell modules that draw their own randomness (``trainables.layers.SeededDraws``) which rank of a group they
    run on (None: one process)."""
    for module in model.modules():
        if hasattr(module, "draw_rank"):
            module.draw_rank = rank


def parameter_digest(model: nn.Module) -> int:
    """A 63-bit hash of every parameter, bit for bit.

    Buffers are left out on purpose: BatchNorm running statistics are rank-local between DDP's broadcasts.
    """
    digest = hashlib.blake2b(digest_size=8)
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def replicas_in_sync(ctx: Context, model: nn.Module) -> bool:
    """Whether every rank holds bit-identical weights: the invariant DDP promises, checked once per epoch."""
    mine = torch.tensor([parameter_digest(model)], dtype=torch.int64)
    return len({int(t) for t in ctx.all_gather(mine)}) == 1


__all__ = ["LOOP_DEFAULTS", "LOOP_PATHS", "LOOP_USER_ERRORS", "DatasetBundle", "fit", "load_data",
           "validate_loop_config"]
