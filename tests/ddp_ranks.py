"""Train a registered trainable on two (or more) gloo ranks through the loop's DDP path, as a Ray Train worker group
would, without Ray: each rank is a ``torch.multiprocessing`` process with a :class:`DistributedContext`.

Shared by the tests that check a task sends every parameter's gradient through DDP's wrapper (a task that calls the
bare network instead trains each rank on its own shard and silently stops averaging gradients; the loop's
``replicas_in_sync`` report catches it).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables import registry
from trainables.context import DistributedContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, trainable: str, overrides: dict[str, Any], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ctx = DistributedContext()
        registry.get(trainable).train(registry.get(trainable).resolve(overrides), ctx)
        Path(f"{out}.{rank}").write_text(json.dumps(ctx.results))
    finally:
        dist.destroy_process_group()


def train_on_gloo_ranks(trainable: str, overrides: dict[str, Any], tmp_path: Path,
                        world_size: int = 2) -> list[list[dict[str, Any]]]:
    """Each rank's reported results (one dict per epoch) after training ``trainable`` with ``overrides``."""
    out = str(tmp_path / f"{trainable}_results")
    mp.spawn(_rank, args=(world_size, _free_port(), trainable, overrides, out), nprocs=world_size)
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(world_size)]
