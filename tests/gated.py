"""Test-only trainables whose trials can be held at a known point, so interrupt tests need no timing.

A held trial reports its first round (with a checkpoint), writes its process id to ``GATE.pid`` and then blocks until
the file ``config["gate"]`` exists.
An interrupt test waits until that report is in MLflow, sends Ctrl-C while the trial is certainly blocked, creates
the gate, and resumes. Nothing here registers on import: :func:`register_all` does (a fixture in-process, or
``python -m tests.gated MODULE ARGS...``, which registers them and then runs ``MODULE``'s CLI, for a subprocess).

- ``gated``: a supervised-like trainable (budget ``epochs``/``epoch``, ranks by ``val_error``, lower is better);
  the trial whose ``x`` equals ``hold_x`` is held after epoch 1.
- ``gated_rl``: an RL-like trainable with its own placement (so ``orchestrator.rl`` offers it), budget
  ``frames``/``env_frames``, a ``--frames`` flag; held after its first report when ``hold`` is true.
- ``gated_nas_child``: an architecture-search child with ``nas_child``'s declaration and keys; it trains nothing
  (accuracy and latency are functions of the tokens); the child whose ``trial_index`` equals ``hold_at`` is held
  (after epoch 1), and the one whose ``trial_index`` equals ``hold_new_at`` before its first report.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from trainables import registry
from trainables.context import Context

GATED_DEFAULTS: dict[str, Any] = {"epochs": 2, "seed": 0, "x": 0, "hold_x": -1, "gate": ""}
GATED_RL_DEFAULTS: dict[str, Any] = {"frames": 300, "frames_per_report": 100, "seed": 0, "lr": 0.001, "hold": False,
                                     "gate": ""}


def wait_for_gate(path: str) -> None:
    """Block the trial until ``path`` exists (the test creates it; Ctrl-C kills the trial while it waits)."""
    while not os.path.exists(path):
        time.sleep(0.05)


def _rounds(ctx: Context, total: int, report: Callable[[int], dict[str, float]],
            hold: Callable[[int], bool], gate: str) -> None:
    """Report rounds 1..total, each with a checkpoint of the round; resume after the restored round. ``hold(0)``
    holds the trial before its first report (a new trial, as Tune's saved experiment state may not know it yet)."""
    start = 0
    with ctx.restored_checkpoint() as path:
        if path:
            with open(os.path.join(path, "round.json")) as handle:
                start = json.load(handle)["round"]
    if start == 0 and hold(0):
        _hold(gate)
    for done in range(start + 1, total + 1):
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "round.json"), "w") as handle:
                json.dump({"round": done}, handle)
            ctx.report(report(done), checkpoint_dir=folder)
        if hold(done):
            _hold(gate)


def _hold(gate: str) -> None:
    with open(f"{gate}.pid", "w") as handle:  # who to kill, for a test of a trial process killed from outside
        handle.write(str(os.getpid()))
    wait_for_gate(gate)


def train_gated(config: dict[str, Any], ctx: Context) -> None:
    """Epochs 1..epochs; val_error = x / 10 + 1 / epoch (a trial's rank follows x); held as the module says."""
    def report(epoch: int) -> dict[str, float]:
        return {"epoch": epoch, "val_error": config["x"] / 10 + 1 / epoch, "train_loss": 1 / epoch}

    _rounds(ctx, config["epochs"], report, lambda epoch: epoch == 1 and config["x"] == config["hold_x"],
            config["gate"])


def train_gated_rl(config: dict[str, Any], ctx: Context) -> None:
    """Reports every ``frames_per_report`` frames up to ``frames``; held after the first report if ``hold``."""
    step = config["frames_per_report"]
    total = -(-config["frames"] // step)  # ceil: the last report reaches the budget

    def report(done: int) -> dict[str, float]:
        return {"env_frames": done * step, "eval_return_mean": 10.0 * done}

    _rounds(ctx, total, report, lambda done: done == 1 and config["hold"], config["gate"])


def gated_rl_placement(config: Mapping[str, Any]) -> list[dict[str, float]]:
    return [{"CPU": 1.0}]


def train_gated_nas_child(config: dict[str, Any], ctx: Context) -> None:
    """Epochs 1..epochs of a child that trains nothing: accuracy and latency are functions of its tokens."""
    tokens = list(config["tokens"])
    latency = 0.5 + 0.1 * sum(tokens)
    size = {"latency_ms": latency, "params": 1000.0 + sum(tokens), "macs": 2000.0 + sum(tokens), "latency_cv": 0.0}

    def report(epoch: int) -> dict[str, float]:
        return {"epoch": epoch, "val_accuracy": min(0.99, 0.5 + 0.05 * sum(tokens) + 0.01 * epoch), **size}

    def hold(epoch: int) -> bool:
        index = config["trial_index"]
        return (epoch == 1 and index == config["hold_at"]) or (epoch == 0 and index == config["hold_new_at"])

    _rounds(ctx, config["epochs"], report, hold, config["gate"])


def register_all() -> list[str]:
    """Register the three test trainables; returns their names (for :func:`trainables.registry.unregister`)."""
    registry.register("gated", defaults=GATED_DEFAULTS, metrics={"val_error": "min", "train_loss": "min"},
                      primary="val_error")(train_gated)
    registry.register("gated_rl", defaults=GATED_RL_DEFAULTS, placement=gated_rl_placement,
                      metrics={"eval_return_mean": "max"}, primary="eval_return_mean", budget=("frames", "env_frames"),
                      flags={"--frames": "frames"})(train_gated_rl)
    child = registry.get("nas_child")
    registry.register("gated_nas_child", defaults={**child.defaults, "hold_at": -1, "hold_new_at": -1, "gate": ""},
                      metrics=child.metrics, primary=child.primary,
                      tools={"architecture_search": child.tools["architecture_search"]})(train_gated_nas_child)
    return ["gated", "gated_rl", "gated_nas_child"]


def register_probe_claim(space: str) -> None:
    """A claim on ``gated`` trials of the space file ``space`` (``x`` 0 against 1, 3 seeds at every budget), so that
    ``orchestrator.repro`` can be interrupted while a trial of it is held."""
    from orchestrator.claims import BUDGETS, Budget, Claim, better, register_claim

    register_claim(Claim(name="gated_probe", paper="a test", sentence="x = 0 has the lower val_error", space=space,
                         budgets={name: Budget({}) for name in BUDGETS}, select_metric="val_error",
                         comparison=better("val_error", "min", a={"x": 0}, b={"x": 1})))


if __name__ == "__main__":  # python -m tests.gated orchestrator.sweep ARGS...: the CLI with these registered
    from orchestrator import cli

    register_all()
    if os.environ.get("GATED_CLAIM_SPACE"):  # and orchestrator.repro's probe claim on that space file
        register_probe_claim(os.environ["GATED_CLAIM_SPACE"])
    module = importlib.import_module(sys.argv[1])
    sys.exit(cli.run(module.main, sys.argv[2:]))
