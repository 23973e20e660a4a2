"""``python -m orchestrator.nas``: architecture search with an RNN controller (Zoph & Le; MnasNet's reward) on Tune.

A searcher (``orchestrator.searchers``: PPO or REINFORCE on an LSTM controller, or the random / regularized
evolution baselines) proposes token sequences; every trial is the child trainable (the one that registers the
``architecture_search`` declaration, :class:`trainables.registry.ArchitectureSearch`: ``nas_child``), which builds
the child, measures its latency on its own device and trains it on the common loop; the searcher turns accuracy and
latency into MnasNet's reward ``ACC * (LAT / T) ** w`` and learns. This module knows the child only through that
declaration: its spaces, the config keys the searcher writes, the accuracy and latency metrics it reports. Every
trial is a nested MLflow run (architecture, accuracy, latency, reward); the end shows the best architectures, the
accuracy/latency Pareto front and a plot of the reward over trials (also on the parent run). The executor under
it (parent run, Tune, resume record, exit status) is ``orchestrator.sweep``'s: :mod:`orchestrator.executor`.

Examples::

    python -m orchestrator.nas                                          # MnasNet space, PPO, soft reward, MNIST-5k
    python -m orchestrator.nas --space zoph --controller reinforce --reward accuracy --trials 100
    python -m orchestrator.nas --controller random --seed 1 --target-ms 0.8 --reward hard
    python -m orchestrator.nas --resume                                 # continue the latest interrupted search
    python -m orchestrator.nas --address auto --storage s3://bucket/nas --gpus-per-trial 0.25 --epochs-per-child 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, executor, runner, spaces, stats, tracking
from orchestrator.searchers import REWARDS, SEARCHERS, make_searcher, reward
from orchestrator.searchers.base import SEARCH_TOOL
from orchestrator.tables import fmt_number
from trainables import registry


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.nas",
        description="Neural architecture search with an RNN controller as a Ray Tune searcher; every child is a "
        "nested MLflow run with its architecture, accuracy, measured latency and reward.",
    )
    parser.add_argument("--trainable", help=f"child trainable (default: the one that provides '{SEARCH_TOOL}')")
    parser.add_argument("--space", help="search space of the child trainable (default: its first, mnasnet)")
    parser.add_argument("--blocks", type=int, default=0,
                        help="blocks (mnasnet, 1-7) or layers (zoph, 1-15); 0 = the space's default (7 / 6)")
    parser.add_argument("--controller", choices=sorted(SEARCHERS), default="ppo", help="searcher (default ppo)")
    parser.add_argument("--trials", type=int, default=48, help="children to train (default 48)")
    parser.add_argument("--epochs-per-child", type=int, default=1,
                        help="training budget of each child in the trainable's budget unit (epochs; default 1)")
    parser.add_argument("--target-ms", type=float, default=1.0, help="latency target T in ms (default 1.0)")
    parser.add_argument("--reward", choices=sorted(REWARDS), default="soft",
                        help="soft: alpha=beta=-0.07; hard: alpha=0, beta=-1; accuracy: w=0 (accuracy3: cubed)")
    parser.add_argument("--dataset", help="dataset of the children (shorthand of --set dataset=...; default: the "
                        "trainable's, mnist5k)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the searcher (and of the children's training)")
    parser.add_argument("--lr", type=float, default=0.01, help="controller learning rate (Adam)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="child config overrides, e.g. --set limit_train_batches=20 latency_repeats=50")
    parser.add_argument("--scheduler", choices=("none", "asha"), default="none",
                        help="asha: stop weak children early (their reward uses their last reported accuracy)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="max children at once (0: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per child")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per child (0.5: two per GPU)")
    parser.add_argument("--address", help="join a running Ray cluster (default: RAY_ADDRESS or embedded local Ray)")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded local Ray (default: all)")
    parser.add_argument("--storage", help="Tune storage path (default ./ray_results)")
    parser.add_argument("--name", help="experiment name (default nas-SPACE-CONTROLLER-time); with --resume: which")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search (latest, or --name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="nas", help="MLflow experiment name (default nas)")
    parser.add_argument("--top", type=int, default=10, help="rows of the final table")
    return parser


def child_trainable(args: argparse.Namespace) -> tuple[registry.TrainableSpec, registry.ArchitectureSearch]:
    """The child trainable and its architecture-search declaration."""
    spec = registry.get(args.trainable) if args.trainable else registry.provider(SEARCH_TOOL)
    if SEARCH_TOOL not in spec.tools:
        raise cli.UserError(f"trainable '{spec.name}' is not an architecture-search child (no '{SEARCH_TOOL}')")
    return spec, spec.tools[SEARCH_TOOL]


def child_config(args: argparse.Namespace, spec: registry.TrainableSpec,
                 search: registry.ArchitectureSearch) -> dict[str, Any]:
    """The children's base config, validated by the trainable's own rules (before Ray or MLflow are touched)."""
    for flag, value in (("--trials", args.trials), ("--epochs-per-child", args.epochs_per_child)):
        if value < 1:
            raise cli.UserError(f"{flag} must be >= 1, got {value}")
    if not args.target_ms > 0:
        raise cli.UserError(f"--target-ms must be > 0, got {args.target_ms}")
    overrides = spaces.absolute_paths(spaces.parse_overrides(args.set), spec)
    reserved = set(search.reserved()) & set(overrides)
    if reserved:
        raise cli.UserError(f"--set cannot set {', '.join(sorted(reserved))}: the searcher chooses them")
    flags = {spec.budget[0]: args.epochs_per_child, "seed": args.seed, search.space_key: space_of(args, search),
             search.blocks_key: args.blocks, **({"dataset": args.dataset} if args.dataset else {})}
    return spec.resolve({**{k: v for k, v in flags.items() if k in spec.defaults}, **overrides})


def space_of(args: argparse.Namespace, search: registry.ArchitectureSearch) -> str:
    return args.space or search.spaces[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the driver only steps the small controller; the cores belong to the children
    return executor.execute(args, argv, parse=build_parser().parse_args, plan=plan, prog="python -m orchestrator.nas",
                            label="", stem="nas")


def plan(args: argparse.Namespace) -> executor.Plan:
    """The search ``args`` describe, validated: its children's base config, the searcher, the report."""
    spec, search = child_trainable(args)
    base = child_config(args, spec, search)
    space = space_of(args, search)
    resources = runner.TrialResources(cpus=args.cpus_per_trial, gpus=args.gpus_per_trial)

    def setup(tracker: tracking.SweepTracker, folder: str) -> executor.TuneSetup:
        from ray import tune

        children = dict(base)
        # Children on one machine share one file the trainable may cache per-architecture results in (latency).
        if search.cache_key and children.get(search.cache_key) is None and "://" not in folder:
            children[search.cache_key] = f"{folder}/{search.cache_key}.json"
        searcher = make_searcher(args.controller, space, children, trials=args.trials, reward_kind=args.reward,
                                 target_ms=args.target_ms, seed=args.seed, num_blocks=args.blocks, search=search,
                                 **({"lr": args.lr} if args.controller in ("ppo", "reinforce") else {}))
        scheduler = None
        if args.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            budget_key, reached = spec.budget
            scheduler = ASHAScheduler(time_attr=reached, max_t=base[budget_key], grace_period=1, reduction_factor=2)
        callback = NasTrialCallback(tracker, search=search, reward_kind=args.reward, target_ms=args.target_ms,
                                    tags={"trainable": spec.name, "controller": args.controller},
                                    swept_keys=[search.index_key])
        return executor.TuneSetup(
            tune_config=tune.TuneConfig(metric=search.accuracy, mode="max", search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=args.max_concurrent or None, scheduler=scheduler,
                                        reuse_actors=True),  # one process trains many children (see sweep.py)
            callback=callback, keep_checkpoints=1,
        )

    def report(results: Any, tracker: tracking.SweepTracker, folder: str) -> None:
        table = results_table(results, args, spec, search)
        print_report(table, args, args.top, search)
        log_summary(tracker, table, args, folder if "://" not in folder else None, space)

    return executor.Plan(
        name_prefix=f"nas-{space}-{args.controller}", spec=spec, base_config=base, resources=resources,
        num_trials=args.trials, mlflow_experiment=args.experiment,
        headline=f"nas: {args.trials} children of the {space} space, {args.controller} controller, {args.reward} "
                 f"reward (T = {args.target_ms:g} ms)",
        params={"space": space, "controller": args.controller, "trials": args.trials, "reward": args.reward,
                "metric": "reward", "mode": "max",  # what orchestrator.compare ranks by
                "target_ms": args.target_ms, "search_seed": args.seed, "epochs_per_child": args.epochs_per_child},
        tags={"search_space": f"nas_{space}", "controller": args.controller}, setup=setup, report=report,
        search={"architecture space": space, "blocks": args.blocks or "the space's default",
                "controller": args.controller, "trials": args.trials, "reward": args.reward,
                "target_ms": args.target_ms, "budget per child": f"{args.epochs_per_child} {spec.budget[0]}"},
        # The parent run gets the accuracy/latency Pareto front and the reward over trials drawn by compare.
        compare_flags=["--pareto", f"{search.accuracy}:max,{search.latency}:min", "--reward", "reward:max"],
    )


class NasTrialCallback(tracking.MlflowTrialCallback):
    """The platform's per-trial MLflow run, plus the child's reward (same formula as the searcher's) and a readable
    architecture tag."""

    def __init__(self, tracker: tracking.SweepTracker, *, search: registry.ArchitectureSearch, reward_kind: str,
                 target_ms: float, **kwargs: Any) -> None:
        super().__init__(tracker, **kwargs)
        self.search, self.reward_kind, self.target_ms = search, reward_kind, target_ms

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.tracker.client.set_tag(run_id, "arch", str(trial.config.get(self.search.arch_key, "")))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        accuracy, latency = self.search.accuracy, self.search.latency
        if accuracy in result and latency in result:
            result = {**result, "reward": reward(result[accuracy], result[latency], self.target_ms, self.reward_kind)}
        super().on_trial_result(iteration, trials, trial, result, **info)


def results_table(results: Any, args: argparse.Namespace, spec: registry.TrainableSpec,
                  search: registry.ArchitectureSearch) -> Any:
    """One row per child, in sampling order: architecture, size, accuracy, latency, reward, budget reached."""
    import pandas as pd

    reached = spec.budget[1]
    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        accuracy, latency = metrics.get(search.accuracy), metrics.get(search.latency)
        rows.append({
            "trial": config.get(search.index_key), "arch": config.get(search.arch_key),
            **{column: metrics.get(column) for column in search.columns},
            "accuracy": accuracy, "latency_ms": latency,
            "reward": None if accuracy is None or latency is None else reward(accuracy, latency, args.target_ms,
                                                                              args.reward),
            reached: metrics.get(reached), "status": executor.completion_status(spec, result),
        })
    table = pd.DataFrame(rows)
    return table.sort_values("trial").reset_index(drop=True) if not table.empty else table


def pareto_front(table: Any) -> Any:
    """Children no other child beats on both accuracy (higher) and latency (lower), fastest first."""
    return stats.pareto_front(table, x="latency_ms", y="accuracy", x_mode="min", y_mode="max")


def print_report(table: Any, args: argparse.Namespace, top: int, search: registry.ArchitectureSearch) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    columns = ["trial", "arch", *search.columns, "accuracy", "latency_ms", "reward", "status"]

    def render(title: str, frame: Any) -> Table:
        out = Table(title=title)
        for column in columns:
            out.add_column(column, justify="left" if column in ("arch", "status") else "right", overflow="fold")
        for _, row in frame.iterrows():
            out.add_row(*(fmt_number(row[c]) for c in columns))
        return out

    if table.empty or table["reward"].notna().sum() == 0:
        console.print("no child reported an accuracy and a latency")
        return
    best = table.dropna(subset=["reward"]).sort_values("reward", ascending=False, kind="stable").head(top)
    console.print(render(f"top {len(best)} architectures by {args.reward} reward (T = {args.target_ms:g} ms)", best))
    console.print(render("Pareto front: accuracy vs latency", pareto_front(table)))
    first, last = stats.quarter_means(table["reward"])
    console.print(f"mean reward: first quarter {first:.4f}, last quarter {last:.4f}; best {best['reward'].max():.4f}")


def plot_rewards(table: Any, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table.dropna(subset=["reward"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["trial"], done["reward"], s=12, alpha=0.6, label="child")
    window = max(2, len(done) // 8)
    ax.plot(done["trial"], done["reward"].rolling(window, min_periods=1).mean(), label=f"mean of last {window}")
    ax.plot(done["trial"], done["reward"].cummax(), label="best so far")
    ax.set(xlabel="trial (sampling order)", ylabel="reward", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_summary(tracker: tracking.SweepTracker, table: Any, args: argparse.Namespace, folder: str | None,
                space: str) -> None:
    """Best reward, quarter means, the table (CSV) and the reward plot (PNG) on the parent run."""
    if table.empty or tracker.parent_run_id is None or table["reward"].notna().sum() == 0:
        return
    client, run_id = tracker.client, tracker.parent_run_id
    first, last = stats.quarter_means(table["reward"])
    best = table.loc[table["reward"].idxmax()]
    for key, value in (("best_reward", best["reward"]), ("best_accuracy", best["accuracy"]),
                       ("best_latency_ms", best["latency_ms"]), ("reward_first_quarter", first),
                       ("reward_last_quarter", last)):
        client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "best_arch", str(best["arch"]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(folder) if folder else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "children.csv", index=False)
        plot = plot_rewards(table, out / "reward_over_trials.png",
                            f"{args.controller} on {space}, {args.reward} reward, T = {args.target_ms:g} ms")
        client.log_artifact(run_id, str(out / "children.csv"))
        client.log_artifact(run_id, str(plot))
    print(f"reward plot: {plot if folder else 'logged to the parent run'}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
