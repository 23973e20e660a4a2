"""Fixed overhead per trial: our in-process path (runner + MLflow tracking + checkpoint) vs a bare Tune function trial.

Why: a sweep of many short trials is dominated by what a trial costs before and after its training. The issue's goal
is under 3 s a trial on 2 cores (a Ray Train worker group per trial costs ~30 s, see shared/NOTES.md). The trainable
used here does no training at all, so everything measured is overhead.

Variants, all in one process on one Ray instance, ``max_concurrent_trials=1``, N trials per experiment, interleaved
(bare, ours, ours+reuse, [group], bare, ours, ...):

- ``bare``: ``def f(config): tune.report({"x": 1})``, nothing else.
- ``ours``: ``orchestrator.runner.make_trainable`` of the no-op trainable ``bench_noop`` registered below (it writes a
  small checkpoint and reports once, like the loop's epoch end), with ``MlflowTrialCallback`` writing nested child
  runs to a temporary sqlite store: what ``python -m orchestrator.sweep`` does per trial, minus the training.
- ``bare+reuse`` / ``ours+reuse``: the same with ``TuneConfig(reuse_actors=True)``. ``ours+reuse`` is what
  ``python -m orchestrator.sweep`` and ``orchestrator.nas`` do since reuse was switched on; ``ours`` (a fresh trial
  process per trial: process start, ``import torch``) is Tune's default and what they did before.
- ``group`` (``--with-worker-group``): the same no-op through a Ray Train worker group of 2 workers.

Per-trial overhead = experiment wall time / N (Tuner construction and ``fit``). A driver-side callback also stamps
every trial start, so the steady per-trial cost (start to start) is separated from the experiment's fixed cost.
First-use costs that a sweep pays once (Ray start, MLflow store creation, the first experiment) are timed apart.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import time
from typing import Any

import _common
import torch
from ray import tune
from ray.tune import Callback

from orchestrator.runner import TrialResources, make_trainable
from orchestrator.tracking import MlflowTrialCallback, SweepTracker
from trainables.context import Context
from trainables.registry import register


@register("bench_noop", defaults={"payload_kb": 64}, description="No training: one checkpoint, one report.")
def bench_noop(config: dict[str, Any], ctx: Context) -> None:
    """No work, but the loop's epoch-end shape: save a small checkpoint into a temp dir and report it with metrics.

    Also reports when the train function started and when it called report (wall clock, same machine as the
    driver), so the driver can tell where a trial's time went.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ckpt_") as tmp:
        torch.save({"w": torch.zeros(int(config["payload_kb"]) * 256)}, os.path.join(tmp, "state.pt"))
        ctx.report({"loss": 0.0, "started_at": started, "body_s": time.time() - started,
                    "reported_at": time.time()}, checkpoint_dir=tmp)


def bare(config: dict[str, Any]) -> None:
    """The smallest Tune function trial: the baseline every trial pays anyway."""
    tune.report({"x": 1})


def bare_checkpoint(config: dict[str, Any]) -> None:
    """``bench_noop``'s trial without anything of ours: the same 64 KB ``torch.save`` checkpoint in a temp dir,
    reported with one result through plain ``tune.report(..., checkpoint=...)``. Against it, a ratio isolates our
    runner, callback and tracker from the cost of a trial that checkpoints (Tune persists and registers it too)."""
    started = time.time()
    torch.set_num_threads(1)  # as the runner does for a 1-CPU trial
    with tempfile.TemporaryDirectory(prefix="ckpt_") as tmp:
        torch.save({"w": torch.zeros(int(config.get("payload_kb", 64)) * 256)}, os.path.join(tmp, "state.pt"))
        tune.report({"loss": 0.0, "started_at": started, "body_s": time.time() - started, "reported_at": time.time()},
                    checkpoint=tune.Checkpoint.from_directory(tmp))


class TrialClock(Callback):
    """Driver-side timestamps of trial starts/ends, and (for the no-op) when its train function started and reported.

    Wall-clock ``time.time()`` throughout: the trial's process stamps its side with the same clock (same machine).
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.to_train_fn: list[float] = []
        self.report_latency: list[float] = []
        self.body: list[float] = []
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        now = time.time()
        self.starts.append(now)
        self._started[trial.trial_id] = now

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "reported_at" in result:
            self.to_train_fn.append(result["started_at"] - self._started[trial.trial_id])
            self.report_latency.append(time.time() - result["reported_at"])
            self.body.append(result["body_s"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ends.append(time.time())

    def steady_per_trial(self) -> float:
        """Start-to-start seconds between consecutive trials: the per-trial cost without the experiment's own."""
        if len(self.starts) < 2:
            return float("nan")
        return (self.starts[-1] - self.starts[0]) / (len(self.starts) - 1)

    def start_to_end(self) -> list[float]:
        """Per trial, driver's start to driver's completion: actor start, the run, the result, the stop."""
        return [end - start for start, end in zip(self.starts, self.ends, strict=False)]

    def end_to_next_start(self) -> list[float]:
        """Per gap, one trial's completion to the next one's start: teardown and scheduling between trials."""
        return [start - end for end, start in zip(self.ends, self.starts[1:], strict=False)]


class TimedMlflowCallback(MlflowTrialCallback):
    """Our MLflow callback, timing each hook: they run synchronously in the Tune driver loop, so they add up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def _time(self, hook: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        fn(*args, **kwargs)
        self.seconds[hook] += time.perf_counter() - started

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._time("start", super().on_trial_start, iteration, trials, trial, **info)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._time("result", super().on_trial_result, iteration, trials, trial, result, **info)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._time("checkpoint", super().on_checkpoint, iteration, trials, trial, checkpoint, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._time("complete", super().on_trial_complete, iteration, trials, trial, **info)


class Bench:
    """Runs experiments of one variant each, in one storage folder and one MLflow store."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.storage = os.path.join(root, "ray_results")
        self.tracking_uri = f"sqlite:///{os.path.join(root, 'mlflow.db')}"
        self.count = 0

    def tracker(self) -> SweepTracker:
        """A parent run per experiment, as the sweep CLI makes one per sweep (created outside the timed part)."""
        tracker = SweepTracker(self.tracking_uri, "bench_trial_overhead")
        if tracker.client.get_experiment_by_name(tracker.experiment_name) is None:
            # Artifacts under our temp dir, not ./mlruns in the working directory.
            tracker.client.create_experiment(tracker.experiment_name,
                                             artifact_location=os.path.join(self.root, "artifacts"))
        tracker.start_parent(f"experiment-{self.count}", {}, {})
        return tracker

    def run(self, variant: str, trials: int) -> tuple[float, TrialClock, dict[str, float]]:
        """One experiment of ``trials`` trials: (wall seconds of Tuner + fit, its clock, MLflow hook seconds)."""
        self.count += 1
        clock = TrialClock()
        callbacks: list[Callback] = [clock]
        mlflow_seconds: dict[str, float] = {}
        kind, _, reuse_flag = variant.partition("+")
        reuse = reuse_flag == "reuse"
        if kind == "bare":
            trainable: Any = bare
            param_space: dict[str, Any] = {}
        else:
            # The runner takes the group driver's 0.25 CPU out of `cpus`: 2 workers x 0.875 + 0.25 = the 2 logical CPUs.
            resources = TrialResources(num_workers=2, cpus=2) if kind == "group" else TrialResources()
            name = f"{variant}-{self.count}"
            trainable = make_trainable("bench_noop", resources, storage_path=self.storage, experiment_name=name)
            param_space = {"payload_kb": 64}
            callback = TimedMlflowCallback(self.tracker(), tags={"trainable": "bench_noop"})
            mlflow_seconds = callback.seconds
            callbacks.append(callback)
        with _common.timed() as wall:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1, reuse_actors=reuse),
                run_config=tune.RunConfig(
                    name=f"{variant}-{self.count}", storage_path=self.storage, callbacks=callbacks, verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )
            results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"{variant}: {len(results.errors)} trial(s) failed: {results.errors[0]}")
        return wall[0], clock, dict(mlflow_seconds)


def import_seconds(repeats: int) -> tuple[float, float]:
    """Median seconds of ``import torch``, then of ``import trainables.resnet`` on top, in fresh interpreters.

    What a fresh trial process pays before training: the no-op pays the first; a real ``resnet`` trial pays both
    (its function is pickled by reference, so the worker imports trainables.resnet -> loop -> data -> sklearn).
    """
    import subprocess
    import sys

    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
            "import trainables.resnet; print(t1 - t0, time.perf_counter() - t1)")
    torch_s, resnet_s = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        first, second = (float(v) for v in out.stdout.split())
        torch_s.append(first)
        resnet_s.append(second)
    return _common.median(torch_s), _common.median(resnet_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, repeats=3)
    parser.add_argument("--trials", type=int, default=6, help="trials per experiment (default 6)")
    parser.add_argument("--with-worker-group", action="store_true",
                        help="also time the Ray Train worker-group path (2 workers, ~30 s a trial)")
    parser.add_argument("--group-trials", type=int, default=2, help="trials per worker-group experiment")
    parser.add_argument("--no-reuse-variants", action="store_true",
                        help="skip the bare+reuse and ours+reuse variants")
    args = parser.parse_args()

    variants = ["bare", "ours"] + ([] if args.no_reuse_variants else ["bare+reuse", "ours+reuse"])
    if args.with_worker_group:
        variants.append("group")
    trials_of = {v: (args.group_trials if v == "group" else args.trials) for v in variants}

    import ray

    root = tempfile.mkdtemp(prefix="bench_trial_overhead_")
    load_before = _common.load1()
    try:
        ray_start = _common.start_ray()
        bench = Bench(root)
        with _common.timed() as store_init:
            bench.tracker()  # a fresh sqlite store: MLflow creates its schema (once per store)
        first = {v: bench.run(v, 1)[0] for v in ("bare", "ours")}  # first use of Tune / of our path: not timed below
        torch_import, resnet_import = import_seconds(min(args.repeats, 3))

        walls: dict[str, list[float]] = collections.defaultdict(list)
        steady: dict[str, list[float]] = collections.defaultdict(list)
        fixed: dict[str, list[float]] = collections.defaultdict(list)
        foreign: dict[str, list[float]] = collections.defaultdict(list)
        clocks: dict[str, list[TrialClock]] = collections.defaultdict(list)
        hooks: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
        for repeat in range(args.repeats):
            for variant in variants:
                with _common.ForeignLoad() as load:
                    wall, clock, mlflow_seconds = bench.run(variant, trials_of[variant])
                foreign[variant].append(load.value)
                walls[variant].append(wall / trials_of[variant])
                steady[variant].append(clock.steady_per_trial())
                fixed[variant].append(wall - (trials_of[variant] - 1) * clock.steady_per_trial())
                clocks[variant].append(clock)
                hooks[variant].append(mlflow_seconds)
                print(f"repeat {repeat + 1}/{args.repeats} {variant:>10}: {wall:6.2f} s for {trials_of[variant]} "
                      f"trial(s) = {wall / trials_of[variant]:.2f} s/trial (foreign load {load.value:.2f} cores)")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    def over_trials(variant: str, attribute: str) -> float:
        """Median over every trial of every repeat of a TrialClock list (or method returning one)."""
        values = [getattr(c, attribute) for c in clocks[variant]]
        return _common.median([x for v in values for x in (v() if callable(v) else v)])

    bare_per_trial = _common.median(walls["bare"])
    main_table = _common.Table(
        f"Per-trial overhead, {args.trials} trials per experiment (group: {args.group_trials}), "
        f"median of {args.repeats} interleaved repeats",
        ["variant", "wall / trial (s)", "min (s)", "max (s)", "start-to-start (s)", "running (s)",
         "between (s)", "setup+1st+teardown (s)", "beyond bare (s)", "x bare", "foreign load"],
    )
    for variant in variants:
        per_trial = _common.median(walls[variant])
        main_table.add(variant, per_trial, min(walls[variant]), max(walls[variant]), _common.median(steady[variant]),
                       over_trials(variant, "start_to_end"), over_trials(variant, "end_to_next_start"),
                       _common.median(fixed[variant]), per_trial - bare_per_trial, per_trial / bare_per_trial,
                       _common.median(foreign[variant]))
    main_table.notes.append(
        "wall / trial = (Tuner construction + fit) / trials, the goal's measure; min/max are over repeats. "
        "start-to-start = driver-side gap between consecutive on_trial_start callbacks (no experiment setup or "
        "teardown), split into running (on_trial_start to on_trial_complete: Tune calls on_trial_start once the "
        "trial's actor runs) and between (on_trial_complete to the next on_trial_start: actor stop, new actor "
        "process start, unpickling and imports). setup+1st+teardown = wall - (trials - 1) x start-to-start. "
        "foreign load = cores other people's processes kept busy during the experiment (0 = quiet machine).")
    main_table.notes.append(f"load1 before {load_before:.2f}; {_common.environment('1 per trial (runner default)')}")

    breakdown = _common.Table("Where a trial of our path goes (medians per trial over all repeats)",
                              ["item", *[v for v in variants if not v.startswith("bare")]])

    def per_trial_hook(variant: str, hook: str) -> float:
        return _common.median([h.get(hook, 0.0) / trials_of[variant] for h in hooks[variant]])

    ours = [v for v in variants if not v.startswith("bare")]
    breakdown.add("MLflow on_trial_start (driver): create child run + params",
                  *[per_trial_hook(v, "start") for v in ours])
    breakdown.add("MLflow on_trial_result (driver): log_batch", *[per_trial_hook(v, "result") for v in ours])
    breakdown.add("MLflow on_trial_complete (driver): artifacts + end run",
                  *[per_trial_hook(v, "complete") for v in ours])
    breakdown.add("on_trial_start (driver) -> train fn starts (trial process)",
                  *[over_trials(v, "to_train_fn") for v in ours])
    breakdown.add("train fn body before report (torch.save 64 KB)", *[over_trials(v, "body") for v in ours])
    breakdown.add("report -> driver callback (checkpoint persist + queue)",
                  *[over_trials(v, "report_latency") for v in ours])
    breakdown.notes.append(f"In a fresh interpreter, `import torch` takes {torch_import:.2f} s and `import "
                           f"trainables.resnet` {resnet_import:.2f} s more (sklearn via trainables.data): every fresh "
                           "trial process pays the first (bare trials never import torch), a real resnet trial both.")

    once = _common.Table("First-use costs (paid once per sweep, not per trial)", ["item", "seconds"])
    once.add("ray.init(address='local', num_cpus=2)", ray_start)
    once.add("MLflow: new sqlite store (schema) + experiment + parent run", store_init[0])
    once.add("first bare experiment, 1 trial (Tune imports, first worker)", first["bare"])
    once.add("first ours experiment, 1 trial (first torch import in a worker)", first["ours"])

    _common.emit([main_table, breakdown, once], args.markdown, "## trial_overhead")


if __name__ == "__main__":
    main()
