"""The common supervised loop: epochs, SGD with a step schedule, evaluation, one report and checkpoint per epoch.

Every supervised trainable is ``fit(ctx, config, data, build_model)``: the method supplies the model, the loop
supplies everything else, identically for the in-process path, a DDP worker group and a plain Python call.
The defaults are the optimizer of the stochastic-depth and ResNet papers: SGD, momentum 0.9, Nesterov,
weight decay 1e-4, lr 0.1 divided by 10 at 50% and 75% of the epoch budget, batch 128. Optional: the ResNet-110
warm-up (lr 0.01 until the training error is below 80%, He et al. 2015), ``warmup_lr``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainables.context import Context, unwrap
from trainables.data import DATASETS, BatchLoader, DatasetBundle, check_dataset, load_dataset
from trainables.registry import ConfigError, check_choice, check_range

LOOP_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",
    "data_dir": None,  # CIFAR / SVHN root in their standard formats; nothing is downloaded
    "val_size": None,  # count or fraction held out of train; None = the dataset's default
    "split_seed": 0,  # fixed across repeats so that seeds vary the training, not the split
    "augment": "auto",  # auto = the dataset's paper augmentation (CIFAR: 4-px pad + crop + flip)
    "epochs": 4,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "lr_milestones": [0.5, 0.75],  # fractions of `epochs` at which lr is multiplied by lr_gamma
    "lr_gamma": 0.1,
    # He et al. (2015), Sec. 4.2, for ResNet-110: "we use 0.01 to warm up the training until the training error is
    # below 80% (about 400 iterations), and then go back to 0.1". Decided per epoch (on CIFAR-10 one epoch is 391
    # iterations), so every DDP rank switches together. None = no warm-up.
    "warmup_lr": None,
    "warmup_until_error": 0.8,
    "seed": 0,
    "limit_train_batches": 0,  # > 0: at most this many training batches per epoch (smoke tests, benchmarks)
}

CHECKPOINT_FILE = "state.pt"


def validate_loop_config(config: Mapping[str, Any]) -> None:
    """Range checks for the loop's keys, and that the dataset is there (before any trial starts)."""
    check_choice(config, "dataset", DATASETS)
    check_choice(config, "augment", ("auto", "none", "crop", "crop_flip"))
    check_range(config, "epochs", 1)
    check_range(config, "batch_size", 1)
    check_range(config, "lr", 0.0, low_open=True)
    check_range(config, "momentum", 0.0, 1.0, high_open=True)
    check_range(config, "weight_decay", 0.0)
    check_range(config, "lr_gamma", 0.0, 1.0, low_open=True)
    check_range(config, "limit_train_batches", 0)
    if config["warmup_lr"] is not None:
        check_range(config, "warmup_lr", 0.0, low_open=True)
    check_range(config, "warmup_until_error", 0.0, 1.0, low_open=True)
    if not all(isinstance(m, (int, float)) and 0.0 < m < 1.0 for m in config["lr_milestones"]):
        raise ConfigError(f"lr_milestones={config['lr_milestones']!r} must be fractions of the epochs in (0, 1)")
    if config["nesterov"] and config["momentum"] == 0.0:
        raise ConfigError("nesterov=True needs momentum > 0")
    try:
        check_dataset(config["dataset"], config["data_dir"])
    except Exception as err:  # DatasetError: already one readable line
        raise ConfigError(str(err)) from None


def load_data(config: Mapping[str, Any]) -> DatasetBundle:
    """The dataset named in ``config`` with its seeded split."""
    return load_dataset(
        config["dataset"],
        data_dir=config["data_dir"],
        val_size=config["val_size"],
        split_seed=config["split_seed"],
        augment=config["augment"],
    )


def fit(
    ctx: Context,
    config: Mapping[str, Any],
    data: DatasetBundle,
    build_model: Callable[[], nn.Module],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    eval_modes: Mapping[str, Callable[[nn.Module], AbstractContextManager[Any]]] | None = None,
) -> dict[str, Any]:
    """Train ``build_model()`` on ``data`` for ``config['epochs']`` epochs; returns the last epoch's metrics.

    ``eval_modes`` (name -> context manager that puts the model in that mode) also scores the same weights in every
    named mode, reported as ``{split}_error_{name}`` / ``{split}_loss_{name}``: paired comparisons of inference
    rules (swapout: deterministic vs stochastic) without training two nets.

    Resumes from ``ctx``'s checkpoint when there is one (a retried or resumed trial continues, it does not
    restart). Reports once per epoch with a checkpoint of model, optimizer, schedule and RNG state.
    """
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config["lr"],
        momentum=config["momentum"],
        nesterov=config["nesterov"],
        weight_decay=config["weight_decay"],
    )
    epochs = int(config["epochs"])
    milestones = sorted({max(1, round(m * epochs)) for m in config["lr_milestones"]})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config["lr_gamma"])

    start_epoch = 0
    loop_state = {"warming_up": config["warmup_lr"] is not None}
    with ctx.restored_checkpoint() as checkpoint_dir:
        if checkpoint_dir is not None:
            start_epoch = load_checkpoint(checkpoint_dir, model, optimizer, schedule, loop_state) + 1
    if start_epoch == 0:
        torch.manual_seed(seed + 100_003 * ctx.rank)  # dropout masks differ between ranks, as they would in one batch

    model = ctx.wrap_model(model)
    # Zero gradients from the start (not None): a block that stochastic depth drops in this step still gets its
    # momentum and weight-decay update, as in the paper's Torch code, also in the first step after a resume.
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    train_loader = BatchLoader(
        data.train, batch_size=config["batch_size"], mean=data.mean, std=data.std, augment=data.augment,
        shuffle=True, seed=seed, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
    )
    eval_loaders = {
        name: BatchLoader(split, batch_size=512, mean=data.mean, std=data.std, device=ctx.device)
        for name, split in (("val", data.val), ("test", data.test))
        if len(split.y) > 0
    }
    limit = int(config["limit_train_batches"]) or None

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        scheduled_lrs = [group["lr"] for group in optimizer.param_groups]
        if loop_state["warming_up"]:
            for group in optimizer.param_groups:
                group["lr"] = config["warmup_lr"]
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_error, seen = train_one_epoch(model, train_loader, optimizer, loss_fn, epoch, limit)
        epoch_seconds = time.perf_counter() - started
        for group, scheduled in zip(optimizer.param_groups, scheduled_lrs, strict=True):
            group["lr"] = scheduled  # the step schedule continues from its own lr, as if there were no warm-up
        schedule.step()
        # The per-rank sums become global means (identity in one process).
        totals = ctx.all_reduce_mean(torch.tensor([train_loss, train_error, float(seen)], dtype=torch.float64))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0] / totals[2]),
            "train_error": float(totals[1] / totals[2]),
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "samples_per_second": float(totals[2]) * ctx.world_size / epoch_seconds,
        }
        if loop_state["warming_up"] and metrics["train_error"] < config["warmup_until_error"]:
            loop_state["warming_up"] = False  # the next epoch goes back to the scheduled lr
        for name, loader in eval_loaders.items():
            loss, error = evaluate(unwrap(model), loader, loss_fn)
            metrics.update({f"{name}_loss": loss, f"{name}_error": error, f"{name}_accuracy": 1.0 - error})
            for mode, entered in (eval_modes or {}).items():
                with entered(unwrap(model)):
                    loss, error = evaluate(unwrap(model), loader, loss_fn)
                metrics.update({f"{name}_loss_{mode}": loss, f"{name}_error_{mode}": error})
        if ctx.world_size > 1:
            metrics["replicas_in_sync"] = float(replicas_in_sync(ctx, unwrap(model)))
        with tempfile.TemporaryDirectory(prefix="ckpt_") as tmp:
            if ctx.is_chief:
                save_checkpoint(tmp, unwrap(model), optimizer, schedule, epoch, config, loop_state)
            ctx.report(metrics, checkpoint_dir=tmp if ctx.is_chief else None)
    return metrics


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epoch: int,
    limit: int | None = None,
) -> tuple[float, float, int]:
    """One pass over ``loader``; returns (summed loss, summed errors, samples seen) on this rank."""
    model.train()
    loader.set_epoch(epoch)
    loss_sum, error_sum, seen = 0.0, 0.0, 0
    for step, (x, y) in enumerate(loader):
        if limit is not None and step >= limit:
            break
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=False)  # keep zeros (see fit): dropped blocks still decay
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        error_sum += float((logits.argmax(1) != y).sum())
        seen += len(y)
    return loss_sum, error_sum, seen


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[float, float]:
    """Mean loss and error rate of ``model`` in eval mode (stochastic depth scales branches by p_l here)."""
    model.eval()
    loss_sum, errors, seen = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(y)
        errors += int((logits.argmax(1) != y).sum())
        seen += len(y)
    return loss_sum / seen, errors / seen


def save_checkpoint(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    config: Mapping[str, Any],
    loop_state: Mapping[str, Any] | None = None,
) -> None:
    """Everything a resumed run needs to continue exactly: weights, optimizer moments, schedule, RNG, epoch, and the
    loop's own state (``loop_state``: whether the warm-up is still on)."""
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "config": dict(config),
            "loop_state": dict(loop_state or {}),
        },
        os.path.join(directory, CHECKPOINT_FILE),
    )


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing file, truncated, or written by a different model)."""


def load_checkpoint(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    loop_state: dict[str, Any] | None = None,
) -> int:
    """Load a :func:`save_checkpoint` directory into the given objects (``loop_state`` is updated in place);
    returns the epoch it was saved after."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    except FileNotFoundError:
        raise CheckpointError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory}") from None
    except Exception as err:
        raise CheckpointError(f"corrupt or incompatible checkpoint {path}: {type(err).__name__}: {err}") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    if loop_state is not None:
        loop_state.update(state.get("loop_state", {}))
    return int(state["epoch"])


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
    mine = torch.tensor([parameter_digest(model)], dtype=torch.int64, device=ctx.device)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    return len({int(t) for t in gathered}) == 1
