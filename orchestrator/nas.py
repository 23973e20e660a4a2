"""``python -m orchestrator.nas``: architecture search with an RNN controller (Zoph & Le; MnasNet's reward) on Tune.

A searcher (``orchestrator.searchers``: PPO or REINFORCE on an LSTM controller, or the random / regularized
evolution baselines) proposes token sequences; every trial is the registered ``nas_child`` trainable, which builds
the child, measures its latency on its own device and trains it on the common loop; the searcher turns accuracy and
latency into MnasNet's reward ``ACC * (LAT / T) ** w`` and learns. Every trial is a nested MLflow run (architecture,
accuracy, latency, reward); the end shows the best architectures, the accuracy/latency Pareto front and a plot of
the reward over trials (also on the parent run).

Examples::

    python -m orchestrator.nas                                          # MnasNet space, PPO, soft reward, MNIST-5k
    python -m orchestrator.nas --space zoph --controller reinforce --reward accuracy --trials 100
    python -m orchestrator.nas --controller random --seed 1 --target-ms 0.8 --reward hard
    python -m orchestrator.nas --resume                                 # continue the latest interrupted search
    python -m orchestrator.nas --address auto --storage s3://bucket/nas --gpus-per-trial 0.25 --epochs-per-child 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, cluster, runner, spaces, tracking
from orchestrator.searchers import REWARDS, SEARCHERS, make_searcher, reward
from trainables import registry
from trainables.nas_spaces import SPACES

TRAINABLE = "nas_child"
RECORD = "nas.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.nas",
        description="Neural architecture search with an RNN controller as a Ray Tune searcher; every child is a "
        "nested MLflow run with its architecture, accuracy, measured latency and reward.",
    )
    parser.add_argument("--space", choices=sorted(SPACES), default="mnasnet", help="search space (default mnasnet)")
    parser.add_argument("--blocks", type=int, default=0,
                        help="blocks (mnasnet, 1-7) or layers (zoph, 1-15); 0 = the space's default (7 / 6)")
    parser.add_argument("--controller", choices=sorted(SEARCHERS), default="ppo", help="searcher (default ppo)")
    parser.add_argument("--trials", type=int, default=48, help="children to train (default 48)")
    parser.add_argument("--epochs-per-child", type=int, default=1, help="training epochs of each child (default 1)")
    parser.add_argument("--target-ms", type=float, default=1.0, help="latency target T in ms (default 1.0)")
    parser.add_argument("--reward", choices=sorted(REWARDS), default="soft",
                        help="soft: alpha=beta=-0.07; hard: alpha=0, beta=-1; accuracy: w=0 (accuracy3: cubed)")
    parser.add_argument("--dataset", default="mnist5k", help="dataset of the children (default mnist5k)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the searcher (and of the children's training)")
    parser.add_argument("--lr", type=float, default=0.01, help="controller learning rate (Adam)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="child config overrides, e.g. --set limit_train_batches=20 latency_repeats=50")
    parser.add_argument("--scheduler", choices=("none", "asha"), default="none",
                        help="asha: stop weak children early (their reward uses their last reported accuracy)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="max children at once (0: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per child")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per child (> 0: Ray Train worker)")
    parser.add_argument("--address", help="join a running Ray cluster (default: RAY_ADDRESS or embedded local Ray)")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded local Ray (default: all)")
    parser.add_argument("--storage", help="Tune storage path (default ./ray_results)")
    parser.add_argument("--name", help="experiment name (default nas-SPACE-CONTROLLER-time); with --resume: which")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search (latest, or --name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="nas", help="MLflow experiment name (default nas)")
    parser.add_argument("--top", type=int, default=10, help="rows of the final table")
    return parser


def child_config(args: argparse.Namespace) -> dict[str, Any]:
    """The children's base config, validated by the trainable's own rules (before Ray or MLflow are touched)."""
    for flag, value in (("--trials", args.trials), ("--epochs-per-child", args.epochs_per_child)):
        if value < 1:
            raise cli.UserError(f"{flag} must be >= 1, got {value}")
    if not args.target_ms > 0:
        raise cli.UserError(f"--target-ms must be > 0, got {args.target_ms}")
    overrides = spaces.parse_overrides(args.set)
    reserved = {"space", "num_blocks", "tokens", "arch", "trial_index"} & set(overrides)
    if reserved:
        raise cli.UserError(f"--set cannot set {', '.join(sorted(reserved))}: the searcher chooses them")
    if overrides.get("data_dir"):
        overrides["data_dir"] = str(Path(overrides["data_dir"]).expanduser().resolve())
    overrides = {"dataset": args.dataset, "epochs": args.epochs_per_child, "seed": args.seed, "space": args.space,
                 "num_blocks": args.blocks, **overrides}
    return registry.get(TRAINABLE).resolve(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    storage = cluster.normalize_storage(args.storage)
    record = None
    if args.resume:  # the same search: its settings come from the record, not from this call
        name = args.name or latest_search(storage)
        record = cluster.read_record(f"{storage}/{name}/{RECORD}")
        original = build_parser().parse_args(record["argv"])
        tracking_uri = record["tracking_uri"]
    else:
        original = args
        name = args.name or f"nas-{args.space}-{args.controller}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri)
    base = child_config(original)
    # Children on one machine share one latency cache (keyed by architecture and device).
    if base["latency_cache"] is None and "://" not in storage:
        base["latency_cache"] = f"{storage}/{name}/latency_cache.json"
    resources = runner.TrialResources(cpus=original.cpus_per_trial, gpus=original.gpus_per_trial)
    tracking.check_reachable(tracking_uri)

    import torch

    torch.set_num_threads(1)  # the driver only steps the small controller; the cores belong to the children
    where = cluster.connect(args.address, num_cpus=args.num_cpus)
    if where == cluster.EMBEDDED:
        runner.check_fits_local(TRAINABLE, resources, base)
    print(f"nas: {original.trials} children of the {original.space} space, {original.controller} controller, "
          f"{original.reward} reward (T = {original.target_ms:g} ms) on {where}; {resources.describe()}; "
          f"MLflow {tracking_uri}; storage {storage}/{name}")

    tracker = tracking.SweepTracker(tracking_uri, record["mlflow_experiment"] if record else args.experiment)
    if record:
        tracker.reopen_parent(record["parent_run_id"])
    else:
        tags = {"trainable": TRAINABLE, "search_space": f"nas_{args.space}", "controller": args.controller,
                "ray.experiment": f"{storage}/{name}", "command": "python -m orchestrator.nas " + shlex.join(argv)}
        params = {"space": args.space, "controller": args.controller, "trials": args.trials, "reward": args.reward,
                  "metric": "reward", "mode": "max",  # what orchestrator.compare ranks by
                  "target_ms": args.target_ms, "search_seed": args.seed, "epochs_per_child": args.epochs_per_child}
        tracker.start_recorded_parent(name, params, tags, record_path=f"{storage}/{name}/{RECORD}", argv=argv)

    def report(results: Any) -> None:
        table = results_table(results, original)
        print_report(table, original, args.top)
        log_summary(tracker, table, original, f"{storage}/{name}" if "://" not in storage else None)

    def fit() -> Any:  # built inside run_tune, so a failed restore also closes the parent run
        return build_tuner(original, base, resources, tracker, storage, name, resume=bool(record)).fit()

    resume = f"python -m orchestrator.nas --resume --name {name}" + (f" --storage {storage}" if args.storage else "")
    return cli.run_tune(tracker, fit, report, original.trials, resume)


class NasTrialCallback(tracking.MlflowTrialCallback):
    """The platform's per-trial MLflow run, plus the child's reward (same formula as the searcher's) and a readable
    ``arch`` tag."""

    def __init__(self, tracker: tracking.SweepTracker, *, reward_kind: str, target_ms: float, **kwargs: Any) -> None:
        super().__init__(tracker, **kwargs)
        self.reward_kind, self.target_ms = reward_kind, target_ms

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.tracker.client.set_tag(run_id, "arch", str(trial.config.get("arch", "")))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "val_accuracy" in result and "latency_ms" in result:
            result = {**result, "reward": reward(result["val_accuracy"], result["latency_ms"], self.target_ms,
                                                 self.reward_kind)}
        super().on_trial_result(iteration, trials, trial, result, **info)


def build_tuner(args: argparse.Namespace, base: dict[str, Any], resources: runner.TrialResources,
                tracker: tracking.SweepTracker, storage: str, name: str, *, resume: bool) -> Any:
    from ray import tune

    trainable = runner.make_trainable(TRAINABLE, resources, storage_path=storage, experiment_name=name)
    if resume:  # searcher state (controller, baseline, optimizer, RNG, pending trials) comes back with it
        return tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    searcher = make_searcher(args.controller, args.space, base, trials=args.trials, reward_kind=args.reward,
                             target_ms=args.target_ms, seed=args.seed, num_blocks=args.blocks,
                             **({"lr": args.lr} if args.controller in ("ppo", "reinforce") else {}))
    scheduler = None
    if args.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base["epochs"], grace_period=1,
                                  reduction_factor=2)
    callback = NasTrialCallback(tracker, reward_kind=args.reward, target_ms=args.target_ms,
                                tags={"trainable": TRAINABLE, "controller": args.controller},
                                swept_keys=["trial_index"])
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=searcher, num_samples=-1,
                                    max_concurrent_trials=args.max_concurrent or None, scheduler=scheduler,
                                    reuse_actors=True),  # one process trains many children (see sweep.py)
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[callback],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def results_table(results: Any, args: argparse.Namespace) -> Any:
    """One row per child, in sampling order: architecture, size, accuracy, latency, reward."""
    import pandas as pd

    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        accuracy, latency = metrics.get("val_accuracy"), metrics.get("latency_ms")
        rows.append({
            "trial": config.get("trial_index"), "arch": config.get("arch"), "params": metrics.get("params"),
            "macs": metrics.get("macs"), "accuracy": accuracy, "latency_ms": latency,
            "latency_cv": metrics.get("latency_cv"),
            "reward": None if accuracy is None or latency is None else reward(accuracy, latency, args.target_ms,
                                                                              args.reward),
            "epochs": metrics.get("training_iteration"), "status": "ERROR" if result.error else "OK",
        })
    table = pd.DataFrame(rows)
    return table.sort_values("trial").reset_index(drop=True) if not table.empty else table


def pareto_front(table: Any) -> Any:
    """Children no other child beats on both accuracy (higher) and latency (lower), by latency."""
    done = table.dropna(subset=["accuracy", "latency_ms"]).sort_values(["latency_ms", "accuracy"],
                                                                        ascending=[True, False])
    keep, best = [], -1.0
    for index, row in done.iterrows():
        if row["accuracy"] > best:
            keep.append(index)
            best = row["accuracy"]
    return done.loc[keep]


def quarter_means(table: Any) -> tuple[float, float]:
    rewards = table["reward"].dropna().to_numpy()
    q = max(1, len(rewards) // 4)
    return float(rewards[:q].mean()), float(rewards[-q:].mean())


def print_report(table: Any, args: argparse.Namespace, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    columns = ["trial", "arch", "params", "macs", "accuracy", "latency_ms", "reward"]

    def render(title: str, frame: Any) -> Table:
        out = Table(title=title)
        for column in columns:
            out.add_column(column, justify="left" if column == "arch" else "right", overflow="fold")
        for _, row in frame.iterrows():
            out.add_row(*(_fmt(row[c]) for c in columns))
        return out

    if table.empty:
        console.print("no child finished")
        return
    best = table.dropna(subset=["reward"]).sort_values("reward", ascending=False).head(top)
    console.print(render(f"top {len(best)} architectures by {args.reward} reward (T = {args.target_ms:g} ms)", best))
    console.print(render("Pareto front: accuracy vs latency", pareto_front(table)))
    first, last = quarter_means(table)
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


def log_summary(tracker: tracking.SweepTracker, table: Any, args: argparse.Namespace, folder: str | None) -> None:
    """Best reward, quarter means, the table (CSV) and the reward plot (PNG) on the parent run."""
    if table.empty or tracker.parent_run_id is None or table["reward"].notna().sum() == 0:
        return
    client, run_id = tracker.client, tracker.parent_run_id
    first, last = quarter_means(table)
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
                            f"{args.controller} on {args.space}, {args.reward} reward, T = {args.target_ms:g} ms")
        client.log_artifact(run_id, str(out / "children.csv"))
        client.log_artifact(run_id, str(plot))
    print(f"reward plot: {plot if folder else 'logged to the parent run'}")


def latest_search(storage: str) -> str:
    root = Path(storage)
    candidates = sorted((p for p in root.glob("nas-*") if (p / RECORD).is_file()), key=lambda p: p.stat().st_mtime) \
        if "://" not in storage else []
    if not candidates:
        raise cli.UserError(f"nothing to resume: no nas-* search under {storage} (give --name)")
    return candidates[-1].name


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 1000 else f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(cli.run(main))
