"""Scale of bookkeeping: many trivial trials through our runner + MLflow callback + tracker vs bare Tune, and MLflow
writes per second into sqlite and into a local ``mlflow server``.

Why: a sweep of a thousand short trials must not be dominated by our own bookkeeping. The issue's goal: at most 1.1x
bare Tune's per-trial overhead with actor reuse on 2 CPUs, and no growth as the MLflow store fills up.

Part 1, one Ray, blocks interleaved (bare, bare+ckpt, ours, ours, bare+ckpt, bare, ...), ``reuse_actors=True`` and
``max_concurrent_trials`` = CPUs / CPU per trial in all, the sweep CLI's failure and checkpoint config: ``ours`` is
``runner.make_trainable`` of trial_overhead's no-op ``bench_noop`` (64 KB checkpoint, one report) with our
``MlflowTrialCallback`` and a ``SweepTracker`` parent run per block, all blocks in one sqlite store; ``bare+ckpt``, the
baseline of the ratios, is the same trial in plain Tune (trial_overhead's ``bare_checkpoint``: the same checkpoint
through ``tune.report(..., checkpoint=...)``); ``bare`` (one report, no checkpoint) is a reference row.

Part 2: the real callback driven by stand-in trials (its write pattern per trial) and a plain ``log_batch`` loop, into
a fresh sqlite store and a local ``mlflow server`` (own fresh store) that the bench starts and stops, interleaved.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import shutil
import socket
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Any

import _common
from ray import tune
from trial_overhead import (  # importing it registers `bench_noop`
    TimedMlflowCallback,
    TrialClock,
    bare,
    bare_checkpoint,
)

from orchestrator.executor import DEFAULT_MAX_FAILURES, TuneSetup
from orchestrator.runner import TrialResources, make_trainable
from orchestrator.tracking import MlflowTrialCallback, SweepTracker

EXPERIMENT = "bench_bookkeeping"
RESOURCES = TrialResources()  # the sweep CLI's default: 1 CPU per trial, in the trial's own process
HOOKS = ("start", "result", "checkpoint", "complete")  # our callback's hooks, timed by TimedMlflowCallback
GOAL = 1.1  # the goal for ours / bare per trial
# The "bare Tune with the same trials": the same 64 KB checkpoint reported through plain Tune, the baseline of
# every ratio. ``bare`` (one report, no checkpoint) stays as a reference row: what Tune's checkpoint handling costs.
BASELINE = "bare+ckpt"
BARE = {"bare": bare, BASELINE: bare_checkpoint}
VARIANTS = ("bare", BASELINE, "ours")
WINDOW = 0.1  # "first vs last 10% of trials": does a trial get dearer as the store fills up?


@dataclass
class Block:
    """One Tuner.fit of one variant."""

    variant: str
    trials: int
    wall: float
    clock: TrialClock
    foreign: float
    hooks: dict[str, float] = field(default_factory=dict)
    runs_before: int = 0  # child runs already in the store when the block started (ours only)

    def steady_gaps(self, skip: int) -> list[float]:
        """Start-to-start gaps after the first ``skip`` trials (the block's fresh actors are up by then)."""
        starts = self.clock.starts[skip:]
        return [b - a for a, b in zip(starts, starts[1:], strict=False)]


class TrialBench:
    """Runs the blocks of part 1 in one storage folder and one MLflow store."""

    def __init__(self, root: str, concurrency: int) -> None:
        self.root = root
        self.storage = os.path.join(root, "ray_results")
        self.uri = f"sqlite:///{os.path.join(root, 'mlflow.db')}"
        self.concurrency = concurrency
        self.count = 0
        self.children = 0

    def _tracker(self) -> SweepTracker:
        tracker = SweepTracker(self.uri, EXPERIMENT)
        if tracker.client.get_experiment_by_name(EXPERIMENT) is None:
            # Artifacts under our temp dir, not ./mlruns in the working directory.
            tracker.client.create_experiment(EXPERIMENT, artifact_location=os.path.join(self.root, "artifacts"))
        tracker.start_parent(f"block-{self.count}", {"trials": "block"}, {"trainable": "bench_noop"})
        return tracker

    def run(self, variant: str, trials: int) -> Block:
        """One experiment; for ``ours`` the parent run is made before and closed after the timed part, as the
        sweep CLI makes one per sweep."""
        self.count += 1
        name = f"{variant}-{self.count}"
        clock = TrialClock()
        callbacks: list[Any] = [clock]
        tracker, hooks = None, {}
        if variant in BARE:
            trainable: Any = BARE[variant]
            param_space: dict[str, Any] = {"payload_kb": 64} if variant == BASELINE else {}
        else:
            trainable = make_trainable("bench_noop", RESOURCES, storage_path=self.storage, experiment_name=name)
            param_space = {"payload_kb": 64}
            tracker = self._tracker()
            callback = TimedMlflowCallback(tracker, tags={"trainable": "bench_noop"})
            hooks = callback.seconds
            callbacks.append(callback)
        runs_before = self.children
        with _common.ForeignLoad() as load, _common.timed() as wall:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=self.concurrency,
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.storage, callbacks=callbacks, verbose=0,
                    # The same retry and checkpoint settings as the sweep CLI's Tuner (executor.build_tuner).
                    failure_config=tune.FailureConfig(max_failures=DEFAULT_MAX_FAILURES),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=TuneSetup.keep_checkpoints),
                ),
            )
            results = tuner.fit()
        if tracker is not None:
            tracker.end_parent("FINISHED")
            self.children += trials
        if results.errors:
            raise RuntimeError(f"{variant}: {len(results.errors)} trial(s) failed: {results.errors[0]}")
        return Block(variant, trials, wall[0], clock, load.value, dict(hooks), runs_before)


def window_cost(blocks: list[Block], skip: int, first: bool) -> float:
    """Mean start-to-start seconds over the first (or last) WINDOW of a variant's steady gaps, in run order."""
    gaps = [g for block in blocks for g in block.steady_gaps(skip)]
    n = max(1, round(len(gaps) * WINDOW))
    part = gaps[:n] if first else gaps[-n:]
    return sum(part) / len(part) if part else float("nan")


# Driver functions whose cumulative time says where a trial's driver time goes (nested: a row includes those under it).
_TUNE = "tune/execution/tune_controller.py"
_PROFILED = {
    (_TUNE, "step"): "Tune driver loop, all (TuneController.step)",
    (_TUNE, "_actor_started"): "  trial (re)start: _actor_started (calls on_trial_start)",
    (_TUNE, "_process_trial_results"): "  results: _process_trial_results (calls on_trial_result)",
    (_TUNE, "_process_trial_save"): "  checkpoint registration: _process_trial_save (calls on_checkpoint)",
    (_TUNE, "_maybe_cache_trial_actor"): "  actor kept for reuse: _maybe_cache_trial_actor",
    (_TUNE, "checkpoint"): "  experiment-state save: TuneController.checkpoint",
}


def profile_blocks(bench: TrialBench, trials: int) -> _common.Table:
    """cProfile of the driver (Tune's loop and our callbacks run in its main thread) over one extra block of each
    variant: what Tune itself does per trial in both, what our hooks add, and which MLflow client calls they make."""
    per: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    for variant in (BASELINE, "ours"):
        profiler = cProfile.Profile()
        profiler.enable()
        walls[variant] = bench.run(variant, trials).wall
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
        cum: dict[str, float] = collections.defaultdict(float)
        for (path, _line, func), (_cc, _calls, _tt, seconds, _callers) in stats.items():
            for (suffix, name), label in _PROFILED.items():
                if path.endswith(suffix) and func == name:
                    cum[label] += seconds
            if path.endswith("orchestrator/tracking.py") and func.startswith("on_"):
                cum["    our MlflowTrialCallback hooks, all"] += seconds
                cum[f"      {func}"] += seconds
            elif path.endswith("mlflow/tracking/client.py") and not func.startswith("_") and func != "<listcomp>":
                cum[f"        MlflowClient.{func}"] += seconds
        per[variant] = cum
    table = _common.Table(f"Driver cProfile, one extra block of {trials} trials per variant (wall with the profiler "
                          f"on: {BASELINE} {walls[BASELINE]:.1f} s, ours {walls['ours']:.1f} s)",
                          ["where (ms per trial, cumulative)", BASELINE, "ours", f"ours - {BASELINE}"])
    ours = per["ours"]
    labels = list(_PROFILED.values()) + sorted((k for k in ours if k not in _PROFILED.values()),
                                               key=lambda k: (not k.startswith("    our"), "Client" in k, -ours[k]))
    for label in labels:
        bare_ms, ours_ms = (1000 * per[v].get(label, 0.0) / trials for v in (BASELINE, "ours"))
        table.add(label, bare_ms, ours_ms, ours_ms - bare_ms)
    table.notes.append("cumulative time: a row includes the rows indented under it; the profiler slows Python code, "
                       "so shares matter more than totals")
    return table


# -- part 2: MLflow writes per second ---------------------------------------------------------------------------


class Store:
    """One tracking store of part 2 with a counted client and a parent run."""

    def __init__(self, label: str, uri: str, artifact_location: str | None) -> None:
        from orchestrator.tracking import open_client

        self.label = label
        self.tracker = SweepTracker(uri, EXPERIMENT)
        self.client = _common.Counting(open_client(uri))
        self.tracker._client = self.client
        if self.client.get_experiment_by_name(EXPERIMENT) is None:
            self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        self.tracker.start_parent(label, {}, {})
        self.trials = 0
        self.callback_calls: collections.Counter[str] = collections.Counter()  # made by the callback's hooks

    def callback_round(self, trials: int, checkpoint: Any) -> tuple[float, int]:
        """``trials`` stand-in trials through the real callback's hooks: (seconds, store calls)."""
        callback = MlflowTrialCallback(self.tracker, tags={"trainable": "bench_noop"})
        before = collections.Counter(self.client.calls)
        started = time.perf_counter()
        for _ in range(trials):
            self.trials += 1
            now = time.time()
            result = {"loss": 0.0, "started_at": now, "body_s": 0.001, "reported_at": now, "time_total_s": 0.01,
                      "training_iteration": 1, "timestamp": int(now), "done": False, "time_this_iter_s": 0.01,
                      "trial_id": f"t{self.trials:05d}", "hostname": socket.gethostname(),
                      # As Tune's result of a report with a checkpoint: its folder in the trial's storage.
                      "checkpoint_dir_name": os.path.basename(checkpoint.path), "should_checkpoint": True}
            storage = types.SimpleNamespace(trial_fs_path=os.path.dirname(checkpoint.path))
            trial = _common.StandInTrial(f"t{self.trials:05d}", {"payload_kb": 64}, checkpoint, result, storage=storage)
            callback.on_trial_start(0, [], trial)
            callback.on_trial_result(0, [], trial, result)
            callback.on_checkpoint(0, [], trial, checkpoint)
            callback.on_trial_complete(0, [], trial)
        seconds = time.perf_counter() - started
        made = self.client.calls - before
        self.callback_calls += made
        return seconds, sum(made.values())

    def batch_round(self, batches: int, metrics: int) -> float:
        """``batches`` log_batch calls of ``metrics`` metrics each into one run: seconds."""
        from mlflow.entities import Metric

        run_id = self.client.create_run(self.tracker.experiment_id(), run_name="log_batch").info.run_id
        started = time.perf_counter()
        for step in range(batches):
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(f"m{i}", float(step), now, step) for i in range(metrics)])
        seconds = time.perf_counter() - started
        self.client.set_terminated(run_id)
        return seconds


def writes_part(root: str, rounds: int, trials: int, batches: int, metrics: int) -> list[_common.Table]:
    import torch

    # MLflow prints a "View run at URL" line per run it ends on an HTTP store: 2 lines per trial of noise here.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    checkpoint_dir = os.path.join(root, "checkpoint")
    os.makedirs(checkpoint_dir)
    torch.save({"w": torch.zeros(64 * 256)}, os.path.join(checkpoint_dir, "state.pt"))  # as bench_noop's
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir)
    with _common.mlflow_server(root) as (server_uri, server_start):
        stores = [Store("sqlite", f"sqlite:///{os.path.join(root, 'writes.db')}", os.path.join(root, "writes_art")),
                  Store("mlflow server", server_uri, None)]
        per: dict[str, dict[str, list[float]]] = {s.label: collections.defaultdict(list) for s in stores}
        for r in range(rounds):
            for store in stores if r % 2 == 0 else stores[::-1]:
                with _common.ForeignLoad() as load:
                    seconds, calls = store.callback_round(trials, checkpoint)
                    batch_seconds = store.batch_round(batches, metrics)
                per[store.label]["trials/s"].append(trials / seconds)
                per[store.label]["calls/s"].append(calls / seconds)
                per[store.label]["calls/trial"].append(calls / trials)
                per[store.label]["batches/s"].append(batches / batch_seconds)
                per[store.label]["foreign"].append(load.value)
                print(f"writes round {r + 1}/{rounds} {store.label:>13}: {trials / seconds:6.1f} trials/s, "
                      f"{batches / batch_seconds:6.1f} log_batch/s (foreign load {load.value:.2f})")
        calls_by_name = {s.label: dict(s.callback_calls) for s in stores}
    table = _common.Table(
        f"MLflow writes per second, median of {rounds} interleaved rounds ({trials} callback trials + {batches} "
        f"log_batch calls of {metrics} metrics per store and round)",
        ["store", "callback trials/s", "store calls/s", "calls / trial", "log_batch/s", "metric values/s",
         "ms / trial", "foreign load"])
    for label, values in per.items():
        med = {k: _common.median(v) for k, v in values.items()}
        table.add(label, med["trials/s"], med["calls/s"], med["calls/trial"], med["batches/s"],
                  med["batches/s"] * metrics, 1000 / med["trials/s"], med["foreign"])
    names = sorted(calls_by_name["sqlite"])
    table.notes.append("calls per trial of the callback, by client method: " + ", ".join(
        f"{n} {calls_by_name['sqlite'][n] / (rounds * trials):.2g}" for n in names))
    table.notes.append(f"mlflow server: `python -m mlflow server --backend-store-uri sqlite:///... "
                       f"--artifacts-destination ... --host 127.0.0.1` (default workers), /health after "
                       f"{server_start:.1f} s; both stores start empty and grow alike")
    return [table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials of each variant (default 1000)")
    parser.add_argument("--blocks", type=int, default=4, help="interleaved blocks per variant (default 4)")
    parser.add_argument("--parts", nargs="+", choices=["main", "writes"], default=["main", "writes"])
    parser.add_argument("--profile", action="store_true",
                        help=f"cProfile the driver over an extra block per variant (automatic if ours / bare > {GOAL})")
    parser.add_argument("--write-rounds", type=int, default=6, help="interleaved rounds of part 2 (default 6)")
    parser.add_argument("--write-trials", type=int, default=50, help="callback trials per round (default 50)")
    parser.add_argument("--write-batches", type=int, default=200, help="log_batch calls per round (default 200)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables as markdown to PATH")
    args = parser.parse_args()

    import ray

    root = tempfile.mkdtemp(prefix="bench_bookkeeping_")
    load_before = _common.load1()
    tables: list[_common.Table] = []
    try:
        if "main" in args.parts:
            _common.start_ray()
            concurrency = max(1, int(ray.cluster_resources()["CPU"] // RESOURCES.cpus))
            tables += main_part(TrialBench(root, concurrency), args)
            ray.shutdown()
        if "writes" in args.parts:
            tables += writes_part(root, args.write_rounds, args.write_trials, args.write_batches, metrics=5)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    tables[-1].notes.append(f"load1 before {load_before:.2f}; {_common.environment('1 per trial (runner default)')}")
    _common.emit(tables, args.markdown, "## bookkeeping")


def main_part(bench: TrialBench, args: argparse.Namespace) -> list[_common.Table]:
    per_block = [args.trials // args.blocks + (1 if i < args.trials % args.blocks else 0) for i in range(args.blocks)]
    for variant in VARIANTS:  # first use (Tune imports, torch in fresh workers, the store's schema)
        bench.run(variant, 2 * bench.concurrency)
    blocks: dict[str, list[Block]] = {variant: [] for variant in VARIANTS}
    for i, trials in enumerate(per_block):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            block = bench.run(variant, trials)
            blocks[variant].append(block)
            print(f"block {i + 1}/{args.blocks} {variant}: {block.wall:7.2f} s for {trials} trials = "
                  f"{block.wall / trials:.3f} s/trial (foreign load {block.foreign:.2f})")
    skip = bench.concurrency

    def per_trial(variant: str) -> float:
        return sum(b.wall for b in blocks[variant]) / sum(b.trials for b in blocks[variant])

    def weighted_foreign(variant: str) -> float:
        return sum(b.foreign * b.wall for b in blocks[variant]) / sum(b.wall for b in blocks[variant])

    def steady(variant: str) -> float:
        gaps = [g for b in blocks[variant] for g in b.steady_gaps(skip)]
        return sum(gaps) / len(gaps)

    bare_cost = per_trial(BASELINE)
    block_ratios = {v: [o.wall / b.wall for o, b in zip(blocks[v], blocks[BASELINE], strict=True)]
                    for v in VARIANTS}
    summary = _common.Table(
        f"Per-trial overhead, {args.trials} trials per variant in {args.blocks} interleaved blocks, "
        f"reuse_actors=True, max_concurrent_trials={bench.concurrency}",
        ["variant", "wall / trial (s)", f"x {BASELINE}", f"x {BASELINE} per block (median, min-max)",
         "steady (s/trial)", f"steady x {BASELINE}", "first 10% (s/trial)", "last 10% (s/trial)", "last / first",
         "MLflow hooks (s/trial)", "foreign load"])
    hooks = sum(sum(b.hooks.values()) for b in blocks["ours"]) / args.trials
    for variant in VARIANTS:
        first = window_cost(blocks[variant], skip, first=True)
        last = window_cost(blocks[variant], skip, first=False)
        ratios = block_ratios[variant]
        spread = (f"{_common.median(ratios):.3g} ({min(ratios):.3g}-{max(ratios):.3g})"
                  if variant != BASELINE else "")
        summary.add(variant, per_trial(variant), per_trial(variant) / bare_cost, spread, steady(variant),
                    steady(variant) / steady(BASELINE), first, last, last / first,
                    hooks if variant == "ours" else None, weighted_foreign(variant))
    extra = per_trial("ours") - bare_cost
    summary.notes.append(
        f"ours - {BASELINE} = {1000 * extra:.1f} ms a trial (wall), "
        f"{1000 * (steady('ours') - steady(BASELINE)):.1f} ms steady; our MLflow hooks take {1000 * hooks:.1f} ms "
        "a trial in the driver's loop.")
    summary.notes.append(
        f"wall / trial = sum of the blocks' (Tuner construction + fit) / trials; goal ours / {BASELINE} <= {GOAL} "
        f"({BASELINE}: the same 64 KB checkpoint and one report through plain tune.report, the same Tune configs; "
        "bare: one report, no checkpoint). steady = "
        f"mean start-to-start gap (driver's on_trial_start) leaving out each block's first {skip} starts (its fresh "
        f"actors), i.e. without the blocks' setup and teardown; first / last 10% = the same over the first / last "
        f"{WINDOW:.0%} of a variant's trials in run order. MLflow hooks = our callback's driver-side time in "
        "on_trial_start/result/checkpoint/complete. foreign load = cores other processes kept busy (0 = quiet), "
        "weighted by block wall time.")
    detail = _common.Table("Per block (run order within a block: see the log)",
                           ["block", "variant", "trials", "wall / trial (s)", f"x {BASELINE}", "steady (s/trial)",
                            "child runs in store before", f"MLflow {' / '.join(HOOKS)} (ms/trial)",
                            "foreign load"])
    for i in range(args.blocks):
        for variant in VARIANTS:
            b = blocks[variant][i]
            gaps = b.steady_gaps(skip)
            hooks = " / ".join(f"{1000 * b.hooks.get(h, 0.0) / b.trials:.1f}" for h in HOOKS)
            ratio = b.wall / b.trials / (blocks[BASELINE][i].wall / blocks[BASELINE][i].trials)
            detail.add(i + 1, variant, b.trials, b.wall / b.trials, ratio, sum(gaps) / len(gaps) if gaps else None,
                       b.runs_before if variant == "ours" else None, hooks if variant == "ours" else "",
                       b.foreign)
    tables = [summary, detail]
    if args.profile or per_trial("ours") / bare_cost > GOAL:
        tables.append(profile_blocks(bench, per_block[0]))
    return tables


if __name__ == "__main__":
    main()
