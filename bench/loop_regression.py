"""The task loop against the single-model loop it replaced: epoch time and per-trial cost, interleaved in one run.

Why: issue 12 made the common loop general (tasks, several models and optimizers, per-rank RNG in checkpoints); the
promise was that nothing that works today gets slower. Both revisions run the same commands as subprocesses, taking
turns (old, new, old, new, ...), so slow drifts in the shared machine's load hit both alike:

- ``epoch``: the ``resnet`` trainable (depth 20, batch 128, MNIST-5k, 1 torch thread) for ``--epochs`` epochs on a
  ``LocalContext``; its own ``epoch_seconds`` of epochs 2..E (training only), median per run.
- ``trial``: ``python -m orchestrator.sweep`` of ``--trials`` tiny resnet trials (depth 8, one batch, one epoch) on an
  embedded 1-CPU Ray, as a user runs it; wall time of the whole command divided by the trials.

The baseline revision is checked out into a temporary git worktree (default: the last commit before the task loop).
Prints a table of medians and new/old ratios (a ratio of 1.02 is 2% slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

REPO = Path(__file__).resolve().parents[1]
BASELINE = "20e212d"  # the single-model loop, before issue 12

EPOCH_SNIPPET = """
import json, sys, tempfile, torch
torch.set_num_threads(1)
from trainables import registry
from trainables.context import LocalContext
spec = registry.get("resnet")
ctx = LocalContext(checkpoint_root=tempfile.mkdtemp())
spec.train(spec.resolve({"depth": 20, "epochs": int(sys.argv[1]), "batch_size": 128}), ctx)
print(json.dumps([r["epoch_seconds"] for r in ctx.results]))
"""

SPACE = """trainable: resnet
metric: val_error
mode: min
seeds: {trials}
config: {{depth: 8, epochs: 1, limit_train_batches: 1, batch_size: 32}}
"""


def run_epoch(tree: Path, epochs: int) -> float:
    out = subprocess.run([sys.executable, "-c", EPOCH_SNIPPET, str(epochs)], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    return _common.median(json.loads(out.stdout.strip().splitlines()[-1])[1:])


def run_trials(tree: Path, trials: int, workdir: Path) -> float:
    space = workdir / "space.yaml"
    space.write_text(SPACE.format(trials=trials))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator.sweep", str(space), "--num-cpus", "1", "--storage",
                    str(workdir / "rr"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"], cwd=tree,
                   capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    return (time.perf_counter() - started) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=4)
    parser.add_argument("--base", default=BASELINE, help=f"baseline git revision (default {BASELINE})")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per epoch-time run (first one is warm-up)")
    parser.add_argument("--trials", type=int, default=6, help="trials per sweep in the per-trial part")
    parser.add_argument("--parts", nargs="+", default=["epoch", "trial"], choices=["epoch", "trial"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loop_regression_") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.base], cwd=REPO, check=True)
        try:
            trees = {"old": old, "new": REPO}
            timings: dict[tuple[str, str], list[float]] = {(p, t): [] for p in args.parts for t in trees}
            with _common.ForeignLoad() as foreign:
                run_all(args, trees, timings, Path(tmp))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False)

    table = _common.Table(f"task loop vs single-model loop ({args.base}), {args.repeats} interleaved repeats",
                          ["measure", "old (median s)", "new (median s)", "new / old", "per-repeat ratios"])
    names = {"epoch": "resnet-20 epoch (training)", "trial": f"sweep wall per trial ({args.trials} trials)"}
    for part in args.parts:
        olds, news = timings[(part, "old")], timings[(part, "new")]
        ratios = [n / o for n, o in zip(news, olds, strict=True)]
        table.add(names[part], _common.median(olds), _common.median(news), _common.median(ratios),
                  " ".join(f"{r:.3f}" for r in ratios))
    table.notes.append(f"foreign load during the run: {foreign.value:.2f} cores (0 = quiet)")
    _common.emit([table], args.markdown, _common.environment("1"))


def run_all(args: argparse.Namespace, trees: dict[str, Path], timings: dict[tuple[str, str], list[float]],
            tmp: Path) -> None:
    """Every (repeat, part, revision), revisions taking turns."""
    for repeat in range(args.repeats):
        for part in args.parts:
            for label, tree in trees.items():
                if part == "epoch":
                    timings[(part, label)].append(run_epoch(tree, args.epochs))
                else:
                    workdir = tmp / f"{label}{repeat}"
                    workdir.mkdir()
                    timings[(part, label)].append(run_trials(tree, args.trials, workdir))
                print(f"repeat {repeat + 1} {part} {label}: {timings[(part, label)][-1]:.3f} s", flush=True)


if __name__ == "__main__":
    main()
