"""Test-only tasks of the common loop (importable by spawned worker processes): a tiny GAN with two models and two
optimizers, and a dropout probe that fingerprints each rank's dropout masks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainables.context import Context, DistributedContext, LocalContext
from trainables.loop import LOOP_DEFAULTS, fit
from trainables.optim import build_optimizer
from trainables.task import Task

GAN_CONFIG = {**LOOP_DEFAULTS, "epochs": 4, "lr": 0.01, "optimizer": "adam", "lr_schedule": "constant",
              "d_lr": 0.02, "seed": 5}


class TinyGan(Task):
    """A GAN on a 2-D Gaussian: k discriminator steps per generator step, each optimizer stepped by the task."""

    manual_optimization = True
    steps_per_epoch = 6

    def __init__(self, k: int = 2) -> None:
        self.k = k

    def build_models(self) -> dict[str, nn.Module]:
        return {"generator": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)),
                "discriminator": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))}

    def build_optimizers(self, models: Mapping[str, nn.Module], config: Mapping[str, Any]) -> dict[str, Any]:
        return {"generator": build_optimizer(models["generator"].parameters(), config, prefix="g_"),
                "discriminator": build_optimizer(models["discriminator"].parameters(), config, prefix="d_")}

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[torch.Tensor]:
        g = torch.Generator().manual_seed(1_000 * epoch + ctx.rank)
        return [torch.randn(16, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0]) for _ in range(4)]

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, Any]:
        gen, disc = self.models["generator"], self.models["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        bce = nn.functional.binary_cross_entropy_with_logits
        for _ in range(self.k):
            fake = gen(torch.randn_like(batch)).detach()
            d_loss = bce(disc(batch), torch.ones(len(batch), 1)) + bce(disc(fake), torch.zeros(len(batch), 1))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        g_loss = bce(disc(gen(torch.randn_like(batch))), torch.ones(len(batch), 1))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        with torch.no_grad():
            fake = self.models["generator"](torch.randn(256, 2, generator=torch.Generator().manual_seed(0)))
        return {"val_mean_distance": float((fake.mean(0) - torch.tensor([2.0, -1.0])).norm())}


def fit_gan(ctx: LocalContext) -> TinyGan:
    task = TinyGan()
    fit(ctx, GAN_CONFIG, task)
    return task


class KillAfter(LocalContext):
    """A process that dies by SIGKILL right after its n-th checkpoint is stored (no clean shutdown)."""

    def __init__(self, n: int, checkpoint_root: str) -> None:
        super().__init__(checkpoint_root=checkpoint_root)
        self.n = n

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        super()._emit(metrics, checkpoint_dir)
        if len(self.results) == self.n:
            os.kill(os.getpid(), signal.SIGKILL)


class DropoutProbe(Task):
    """A model with dropout on rank-local data; each epoch reports a fingerprint of this rank's dropout masks."""

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.Linear(32, 1))}

    def train_batches(self, ctx: Context, epoch: int) -> Iterable[torch.Tensor]:
        self.digest = hashlib.blake2b(digest_size=6)
        dropout = self.models["model"].module[1] if hasattr(self.models["model"], "module") else \
            self.models["model"][1]
        if not getattr(self, "hooked", False):
            dropout.register_forward_hook(lambda m, i, out: self.digest.update((out == 0).numpy().tobytes()))
            self.hooked = True
        g = torch.Generator().manual_seed(100 * epoch + ctx.rank)
        return [torch.randn(8, 4, generator=g) for _ in range(3)]

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, Any]:
        return {"loss": self.models["model"](batch).pow(2).mean()}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        return {}

    def epoch_metrics(self) -> dict[str, Any]:
        return {"mask_digest": int.from_bytes(self.digest.digest(), "little")}


def dropout_worker(rank: int, world_size: int, port: int, root: str, epochs: int, out: str) -> None:
    """One gloo rank training :class:`DropoutProbe` for ``epochs`` (resuming from ``root`` if it has a checkpoint);
    writes this rank's per-epoch mask digests to ``out.RANK``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ctx = DistributedContext(checkpoint_root=root)
        fit(ctx, {**LOOP_DEFAULTS, "epochs": epochs, "lr": 0.01, "seed": 1}, DropoutProbe())
        Path(f"{out}.{rank}").write_text(json.dumps([r["mask_digest"] for r in ctx.results]))
    finally:
        dist.destroy_process_group()
