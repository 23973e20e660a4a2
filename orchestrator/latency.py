"""Latency on the orchestrator's side: the measurement itself runs in the trial (``trainables.latency``, since
trainables never import the orchestrator); this module re-exports it for scripts and benchmarks, and reads the
per-machine cache a search leaves under its storage folder."""

from __future__ import annotations

import json
from pathlib import Path

from trainables.latency import LatencyCache, cached_latency, device_fingerprint, measure_latency

__all__ = ["LatencyCache", "cached_latency", "device_fingerprint", "measure_latency", "read_cache"]


def read_cache(path: str | Path) -> dict[str, dict[str, float]]:
    """All cached measurements of a search: ``{"arch|device|batchN": {"latency_ms": ...}}``."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
