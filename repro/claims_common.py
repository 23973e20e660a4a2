"""What the claim modules of ``repro/`` share: the GPU flag, and how a claim's variant pins config values.

A variant is extra command-line flags (``orchestrator.claims.Claim.variants``). Where a repro script runs one space
twice with different pins (the stochastic-depth baseline at p_L = 1, FMP with and without dropout), the claim's
variants are those pins as ``("--set", "key=value", ...)``. The command that runs a claim merges a variant's
``--set`` items with the budget's overrides into one ``--set`` (argparse keeps only the last ``--set`` flag), the
variant's pins last, as the scripts put their pins after the budget.
"""

from __future__ import annotations

import json
from typing import Any

GPU = ("--gpus-per-trial", "1")


def pin(**values: Any) -> tuple[str, ...]:
    """``pin(p_L=1.0, sd_schedule="linear")`` -> ``("--set", "p_L=1.0", "sd_schedule=linear")``: values written as
    the YAML scalars ``--set`` parses back (``nesterov=false``, ``lr=0.1``)."""
    return ("--set", *(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                       for key, value in values.items()))
