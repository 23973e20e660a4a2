"""The Deep Compression pipeline as one trial: dense -> pruned (+ retrained) -> quantised (+ fine-tuned) -> Huffman.

The source is any registered classification trainable that offers ``tools={"model": build(config, data)}``: its net
is rebuilt with that builder and loaded from ``source_checkpoint``, or first trained for ``base_epochs`` by the
source's own registered train function. Every training phase (base, retraining, fine-tuning) runs on the common loop
(:func:`trainables.loop.fit`); the masks and the shared centroids are parametrisations of the model itself
(:mod:`trainables.deep_compression`), so the plain :class:`ClassificationTask` trains them correctly.

Reports: each phase's epochs (``base_epoch``, ``retrain_epoch``, ``finetune_epoch`` and the loop's metrics), then
one report per stage with ``stage`` (0 dense, 1 pruned, 2 quantised, 3 huffman), parameters, non-zeros, dense and
compressed bytes, compression ratio and the val/test metrics; every stage's numbers are also added to all later
reports as ``{stage}_{metric}`` (the last result, and MLflow's last values, hold the whole table). The final report
carries a checkpoint of the compressed net, baked into plain weights and saved with the source's config (so the
source's ``model`` tool and :func:`trainables.checkpoint.load_weights` read it).

A retried trial runs the pipeline again from its start (same seed, same result); the phases' own checkpoints stay
inside the trial, since a phase resumed from another phase's checkpoint would load the wrong model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from trainables.checkpoint import CheckpointError, load_weights, read_checkpoint, rng_state, save_checkpoint
from trainables.classification import ClassificationTask
from trainables.context import Context
from trainables.data import DatasetBundle
from trainables.deep_compression import STAGES, bake, model_storage, prune_model, quantise_model
from trainables.loop import fit, load_data
from trainables.registry import ConfigError, get

_STAGE_KEYS = ("parameters", "nonzeros", "dense_bytes", "compressed_bytes", "compression_ratio", "val_error",
               "val_accuracy", "val_loss", "test_error", "test_accuracy", "test_loss")


class PhaseContext(Context):
    """The trial's context as one training phase sees it: same rank, device and collectives; each report goes to
    the trial with ``epoch`` renamed ``{phase}_epoch`` and the pipeline's ``stage``; no checkpoint to resume from.

    With ``keep_checkpoint`` the phase's latest checkpoint is kept in :attr:`checkpoint` (the base training's net).
    """

    def __init__(self, parent: Context, phase: str, stage: int, keep_checkpoint: str | None = None) -> None:
        self.parent, self.phase, self.stage = parent, phase, stage
        self.rank, self.world_size, self.device = parent.rank, parent.world_size, parent.device
        self.checkpoint = keep_checkpoint

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self.checkpoint is not None and checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.checkpoint)
        renamed = {(f"{self.phase}_epoch" if key == "epoch" else key): value for key, value in metrics.items()}
        self.parent.report({**renamed, "stage": self.stage})

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        yield None

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return self.parent.wrap_model(model)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.parent.all_reduce_mean(values)

    def all_gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        return self.parent.all_gather(value)

    def all_gather_object(self, value: Any) -> list[Any]:
        return self.parent.all_gather_object(value)


def source_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The source trainable's resolved config: the checkpoint's own config (or the trial's ``seed`` and
    ``limit_train_batches`` and ``epochs = base_epochs``), then ``source_config``, then ``data_dir``."""
    spec = get(config["source"])
    overrides = config["source_config"]
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"source_config={overrides!r} should be a mapping of the source's config keys")
    if "epochs" in overrides:
        raise ConfigError("set the source's training epochs with base_epochs, not source_config.epochs")
    if config["source_checkpoint"]:
        try:
            base = dict(read_checkpoint(config["source_checkpoint"], for_resume=False).get("config", {}))
        except CheckpointError as err:
            raise ConfigError(f"source_checkpoint: {err}") from None
    else:
        trial = {"seed": config["seed"], "limit_train_batches": config["limit_train_batches"],
                 "epochs": config["base_epochs"]}
        base = {key: value for key, value in trial.items() if key in spec.defaults}  # loop keys, if it has them
    extra = {} if config["data_dir"] is None else {"data_dir": config["data_dir"]}
    try:
        return spec.resolve({**base, **overrides, **extra})
    except ConfigError as err:
        where = f"the config of checkpoint {config['source_checkpoint']}" if config["source_checkpoint"] else "source"
        raise ConfigError(f"{where} does not fit trainable '{config['source']}': {err}") from None


def phase_config(config: Mapping[str, Any], source: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """The loop config of a retraining / fine-tuning phase: the source's optimizer, batch size and schedule at
    ``lr * retrain_lr_scale`` without warm-up, for ``epochs``, with this trial's seed and batch limit."""
    return {**source, "lr": source["lr"] * config["retrain_lr_scale"], "warmup_lr": None, "epochs": epochs,
            "seed": config["seed"], "limit_train_batches": config["limit_train_batches"]}


def evaluate_model(ctx: Context, data: DatasetBundle, model: nn.Module) -> dict[str, float]:
    """Val and test loss, error and accuracy of ``model`` (the classification task's own evaluation)."""
    task = ClassificationTask(data, lambda: model, batch_size=512)
    task.models = {"model": model}
    return task.evaluate(ctx)


def train_phase(ctx: Context, config: Mapping[str, Any], data: DatasetBundle, model: nn.Module, phase: str,
                stage: int, epochs: int) -> None:
    """Train ``model`` in place (masks / shared centroids included) for ``epochs`` on the common loop with the
    loop ``config`` (see :func:`phase_config`)."""
    if epochs <= 0:
        return
    task = ClassificationTask(data, lambda: model, int(config["batch_size"]), seed=int(config["seed"]))
    fit(PhaseContext(ctx, phase, stage), {**config, "epochs": epochs}, task)


def report_stage(ctx: Context, stage: str, model: nn.Module, data: DatasetBundle, rows: list[dict[str, Any]],
                 extra: Mapping[str, float] | None = None, checkpoint_dir: str | None = None) -> dict[str, float]:
    """Measure ``model`` as stored in ``stage``, add ``{stage}_{metric}`` to every later report, report it."""
    metrics = {**model_storage(model, stage), **evaluate_model(ctx, data, model)}
    ctx.add_to_reports({f"{stage}_{key}": metrics[key] for key in _STAGE_KEYS if key in metrics})
    ctx.report({**metrics, **(extra or {}), "stage": STAGES.index(stage)}, checkpoint_dir=checkpoint_dir)
    rows.append({"stage": stage, **metrics})
    return metrics


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Deep Compression (Han et al. 2016), stage by stage")
    for column in ("stage", "parameters", "non-zeros", "dense KB", "compressed KB", "ratio", "val err", "test err"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in rows:
        table.add_row(r["stage"], f"{r['parameters']:,.0f}", f"{r['nonzeros']:,.0f}", f"{r['dense_bytes'] / 1e3:,.1f}",
                      f"{r['compressed_bytes'] / 1e3:,.1f}", f"{r['compression_ratio']:.1f}x",
                      f"{r.get('val_error', float('nan')):.4f}", f"{r.get('test_error', float('nan')):.4f}")
    Console(width=120).print(table)


def run_pipeline(config: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    """The whole pipeline in one trial; returns the stage table's rows (also printed by the chief)."""
    spec = get(config["source"])
    build = spec.tools["model"]
    src = source_config(config)
    data = load_data(src)
    sparsity = {"conv": config["sparsity"],
                "fc": config["sparsity"] if config["sparsity_fc"] == -1.0 else config["sparsity_fc"]}
    bits = {"conv": config["bits_conv"], "fc": config["bits_fc"]}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deep_compression_") as tmp:
        checkpoint = config["source_checkpoint"]
        if not checkpoint:  # dense: the source trains itself, through its own registered train function
            checkpoint = os.path.join(tmp, "base")
            spec.train(src, PhaseContext(ctx, "base", 0, keep_checkpoint=checkpoint))
        model = build(src, data)
        load_weights(checkpoint, {"model": model})
        model.to(ctx.device)
        dense = report_stage(ctx, "dense", model, data, rows)

        # 1. prune to the target sparsity per layer, then retrain with the masks fixed (Sec. 2)
        prune_model(model, sparsity)
        before = evaluate_model(ctx, data, model).get("val_error", float("nan"))
        ctx.add_to_reports({"pruned_val_error_before_retrain": before})
        epochs = int(config["retrain_epochs"])
        train_phase(ctx, phase_config(config, src, epochs), data, model, "retrain", 1, epochs)
        report_stage(ctx, "pruned", model, data, rows)

        # 2. share weights by k-means per layer, then fine-tune the centroids (Sec. 3, eq. 3)
        quantise_model(model, bits)
        before = evaluate_model(ctx, data, model).get("val_error", float("nan"))
        ctx.add_to_reports({"quantised_val_error_before_finetune": before})
        epochs = int(config["finetune_epochs"])
        train_phase(ctx, phase_config(config, src, epochs), data, model, "finetune", 2, epochs)
        quantised = report_stage(ctx, "quantised", model, data, rows)

        # 3. Huffman-code the cluster indices and the relative indices (Sec. 4); the weights do not change
        bake(model)
        final_dir = os.path.join(tmp, "final")
        os.makedirs(final_dir)
        if ctx.is_chief:
            save_checkpoint(final_dir, models={"model": model}, optimizers={}, schedules={}, epoch=0, step=0,
                            rank_rng=[rng_state(ctx.device)], config=src, loop_state={}, task_state={})
        report_stage(ctx, "huffman", model, data, rows, checkpoint_dir=final_dir if ctx.is_chief else None, extra={
            "finetune_epoch": int(config["finetune_epochs"]),  # the budget: the trial has finished every stage
            # the same weights as the quantised stage: only their coding changes
            "val_error_increase": quantised.get("val_error", float("nan")) - dense.get("val_error", float("nan")),
        })
    if ctx.is_chief:
        print_table(rows)
    return rows
