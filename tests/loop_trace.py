"""The stored loop trace (tests/data/loop_trace.json): resnet's per-epoch metrics at a fixed seed, recorded with the
single-model loop before tasks existed, in one process and with two gloo ranks. ``python -m tests.loop_trace``
prints today's trace next to the stored one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

TRACE = Path(__file__).parent / "data" / "loop_trace.json"
KEYS = ("epoch", "train_loss", "train_error", "lr", "val_loss", "val_error", "test_loss", "test_error")


def stored() -> dict[str, Any]:
    return json.loads(TRACE.read_text())


def run_resnet(ctx: Any) -> list[dict[str, Any]]:
    """Train the trace's resnet config on ``ctx`` through the registered trainable; the trace's keys per epoch."""
    from trainables import registry

    torch.set_num_threads(1)
    spec = registry.get("resnet")
    spec.train(spec.resolve(stored()["config"]), ctx)
    return [{k: r[k] for k in KEYS} for r in ctx.results]


def ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One gloo rank of :func:`run_resnet` (torch.multiprocessing.spawn target); rank 0 writes the trace."""
    from trainables.context import DistributedContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = run_resnet(DistributedContext())
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def same_platform() -> bool:
    """Bit-for-bit equality is promised on the platform the trace was recorded on (CPU kernels differ by ISA)."""
    trace = stored()
    return trace["torch"] == torch.__version__ and (trace["cpu"] == torch.backends.cpu.get_cpu_capability()
                                                     or torch.backends.cpu.get_cpu_capability() in trace["by_cpu"])


def expected(kind: str) -> list[dict[str, Any]]:
    """The stored trace ``kind`` (in_process, ddp_gloo_2) for this CPU: the original recording (AVX2), or the same
    code's trace recorded on another ISA (``by_cpu``: AVX512 rounds differently, and two epochs of SGD turn that into
    a flipped prediction or two; recorded from the unchanged loop, so it still detects any change bit for bit)."""
    trace = stored()
    return trace.get("by_cpu", {}).get(torch.backends.cpu.get_cpu_capability(), trace)[kind]


if __name__ == "__main__":
    from trainables.context import LocalContext

    print(json.dumps({"now": run_resnet(LocalContext()), "stored": expected("in_process")}, indent=1))
    sys.exit(0)
