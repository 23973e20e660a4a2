"""Evidence for the architecture search (issue 4), measured, never assumed.

1. The controller learns: mean reward of the last quarter of its samples vs the first quarter.
2. At equal trial budgets, best-found reward of PPO / REINFORCE vs random search and regularized evolution over
   several seeds (mean and std), whatever the outcome.
3. Soft vs hard reward on the same target T: where each search ends up on the accuracy/latency plane.
4. Latency measurement: coefficient of variation of repeated measurements (each a median of timed runs) of one child.

Every search goes through ``orchestrator.nas.main`` (the real CLI path: Tune, the searchers, MLflow) on one private
local Ray with 2 logical CPUs. Budgets are small on purpose (2 shared cores): see ``--trials``, ``--blocks``.

    python bench/nas_evidence.py --trials 16 --seeds 0 1 2 --markdown docs/nas_evidence.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import start_ray  # noqa: E402
from orchestrator.stats import group_summary, quarter_means  # noqa: E402
from orchestrator.tables import markdown_table  # noqa: E402


def run_search(root: Path, name: str, controller: str, seed: int, args: argparse.Namespace, reward: str) -> dict:
    from orchestrator import nas

    argv = ["--controller", controller, "--seed", str(seed), "--trials", str(args.trials), "--blocks",
            str(args.blocks), "--target-ms", str(args.target_ms), "--reward", reward, "--storage", str(root / "rr"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--name", name, "--experiment", "nas_evidence",
            "--max-concurrent", "2", "--set", f"limit_train_batches={args.batches}"]
    started = time.perf_counter()
    code = nas.main(argv)
    children = pd.read_csv(root / "rr" / name / "children.csv").sort_values("trial")
    rewards = children["reward"].dropna().to_numpy()
    q = max(1, len(rewards) // 4)  # the quarter of stats.quarter_means, also for the accuracy and latency below
    first_quarter, last_quarter = quarter_means(rewards)
    best = children.loc[children["reward"].idxmax()]
    return {"controller": controller, "seed": seed, "reward_kind": reward, "exit": code,
            "seconds": time.perf_counter() - started, "children": len(children),
            "best_reward": float(rewards.max()), "first_quarter": first_quarter,
            "last_quarter": last_quarter, "best_accuracy": float(best["accuracy"]),
            "best_latency_ms": float(best["latency_ms"]),
            "last_quarter_accuracy": float(children["accuracy"].tail(q).mean()),
            "last_quarter_latency_ms": float(children["latency_ms"].tail(q).median()),
            "last_quarter_under_T": float((children["latency_ms"].tail(q) <= args.target_ms).mean())}


def latency_cv(repeats: int, blocks: int) -> dict:
    """CV of ``repeats`` measurements of one fixed child, each as a NAS trial takes it (the child defaults:
    ``latency_warmup`` untimed runs, the median of ``latency_repeats`` timed ones, batch 1, 1 thread)."""
    import torch

    from trainables.latency import measure_latency
    from trainables.nas_child import NAS_CHILD_DEFAULTS
    from trainables.nas_spaces import get_space

    space = get_space("mnasnet", blocks)
    tokens = [(i * 7) % n for i, n in enumerate(space.sizes)]
    torch.manual_seed(0)
    model = space.build(tokens, (1, 28, 28), 10)
    medians, within = [], []
    for _ in range(repeats):
        m = measure_latency(model, (1, 28, 28), batch=1, warmup=NAS_CHILD_DEFAULTS["latency_warmup"],
                            repeats=NAS_CHILD_DEFAULTS["latency_repeats"], threads=1)
        medians.append(m["latency_ms"])
        within.append(m["latency_cv"])
    return {"arch": space.describe(tokens), "repeats": repeats, "median_ms": statistics.median(medians),
            # Population std (n), as the children's own latency_cv: a spread of measurements, not a std over seeds.
            "cv_of_medians": statistics.pstdev(medians) / statistics.fmean(medians),
            "median_within_cv": statistics.median(within)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--batches", type=int, default=0, help="limit_train_batches of the children (0: a full epoch)")
    parser.add_argument("--target-ms", type=float, default=0.6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--controllers", nargs="+", default=["ppo", "reinforce", "random", "evolution"])
    parser.add_argument("--parts", nargs="+", default=["latency", "compare", "softhard"])
    parser.add_argument("--out", default="bench/nas_evidence.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    out: dict = {"args": vars(args)}
    if "latency" in args.parts:
        out["latency"] = latency_cv(10, 7)
        print(json.dumps(out["latency"], indent=1), flush=True)
    start_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "compare" in args.parts:
            rows = []
            for seed in args.seeds:  # interleaved: seed-major, so load changes hit every controller alike
                for controller in args.controllers:
                    rows.append(run_search(root, f"cmp-{controller}-{seed}", controller, seed, args, "soft"))
                    print(json.dumps(rows[-1]), flush=True)
                    Path(args.out).write_text(json.dumps({**out, "compare": rows}, indent=1))
            out["compare"] = rows
            table = pd.DataFrame(rows)
            for value in ("best_reward", "first_quarter", "last_quarter"):  # over seeds, 95% t-intervals
                print(f"{value} over seeds\n{markdown_table(group_summary(table, ['controller'], value))}", flush=True)
        if "softhard" in args.parts:
            rows = [run_search(root, f"sh-{kind}", "ppo", 0, args, kind) for kind in ("soft", "hard")]
            out["softhard"] = rows
            print(markdown_table(pd.DataFrame(rows)), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
