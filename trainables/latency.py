"""On-device inference latency of a model, measured the way MnasNet does it (on the device, batch 1), and its cache.

The trial runs this (trainables never import the orchestrator), on the trial's own device: ``warmup`` untimed
forward passes, then ``repeats`` timed ones with ``threads`` intra-op threads; the latency is their median (robust
to the odd preempted run on a shared machine), the spread is their IQR and coefficient of variation. CUDA is
synchronized around every timed pass.

The cache is a JSON file keyed by architecture + device fingerprint + batch + threads, locked with ``fcntl`` so the
concurrent trials of one machine share it. A file per node is right for a cluster too: the key has the device, and
a latency measured on another node's device must not be reused anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def device_fingerprint(device: torch.device | str, threads: int) -> str:
    """What a latency depends on besides the architecture: the device model and the thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_model()}:threads{threads}"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def measure_latency(model: nn.Module, input_shape: Sequence[int], *, batch: int = 1, warmup: int = 30,
                    repeats: int = 100, threads: int = 1, device: torch.device | str = "cpu") -> dict[str, float]:
    """Median latency (ms) of ``model`` on ``batch`` inputs of ``input_shape``, with its spread."""
    device = torch.device(device)
    x = torch.randn(batch, *input_shape, device=device)
    was_training = model.training
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with _threads(threads):
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    model.train(was_training)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    mean = statistics.fmean(times)
    return {
        "latency_ms": statistics.median(times),
        "latency_iqr_ms": q[2] - q[0],
        "latency_cv": (statistics.pstdev(times) / mean) if mean > 0 else 0.0,
        "latency_min_ms": min(times),
    }


class LatencyCache:
    """``{key: measurement}`` in a JSON file shared by the trials of one machine (``path=None``: no cache)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None

    @staticmethod
    def key(arch: str, device: str, batch: int) -> str:
        return f"{arch}|{device}|batch{batch}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
            except ValueError:  # a half-written file from a killed process: start over rather than fail a trial
                entries = {}
            yield entries

    def get(self, key: str) -> dict[str, float] | None:
        if self.path is None:
            return None
        with self._locked() as entries:
            return entries.get(key)

    def put(self, key: str, measurement: dict[str, float]) -> None:
        if self.path is None:
            return
        with self._locked() as entries:
            entries[key] = measurement
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


def cached_latency(cache: LatencyCache, arch: str, model: nn.Module, input_shape: Sequence[int], *, batch: int,
                   warmup: int, repeats: int, threads: int, device: torch.device | str) -> dict[str, float]:
    """The cached measurement of ``arch`` on this device, else a fresh one (then cached); ``latency_cached`` 0/1."""
    key = cache.key(arch, device_fingerprint(device, threads), batch)
    hit = cache.get(key)
    if hit is not None:
        return {**hit, "latency_cached": 1.0}
    measured = measure_latency(model, input_shape, batch=batch, warmup=warmup, repeats=repeats, threads=threads,
                               device=device)
    cache.put(key, measured)
    return {**measured, "latency_cached": 0.0}
