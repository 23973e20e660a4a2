"""The common RL loop: an RLlib ``Algorithm`` driven through the same :class:`~trainables.context.Context` as every
supervised trainable, so an RL trial is a Tune trial like any other (MLflow child run, checkpoints, resume, ASHA).

An RL method registers a train function that turns its flat config into an RLlib ``AlgorithmConfig`` and calls
:func:`run_algorithm`. One ``Algorithm.train()`` call is one reported result. The reported names are the same for
every algorithm, so sweeps and ``orchestrator.compare`` read DQN, CRR and BC runs alike:

========================  ===================================================================================
``episode_return_mean``   mean return of the training episodes that finished in this iteration (RLlib's window)
``eval_return_mean``      mean return of the latest evaluation episodes (NaN before the first evaluation)
``eval_age``              iterations since that evaluation (0: this iteration evaluated)
``env_steps``             agent steps sampled so far (lifetime; offline algorithms: rows read from the dataset)
``env_frames``            emulator frames so far: ``env_steps * frames_per_step`` (4 for Atari with frame skip 4)
``frames_per_second``     ``env_frames`` gained this iteration over its wall time
``learner/<name>``        the learner's scalars (``learner/qf_loss``, ``learner/policy_loss``, ...)
========================  ===================================================================================
"""

from __future__ import annotations

import gc
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from trainables.registry import ConfigError

if TYPE_CHECKING:
    from ray.rllib.algorithms import Algorithm, AlgorithmConfig

    from trainables.context import Context

# Written into every checkpoint so ``python -m orchestrator.rl play CHECKPOINT`` knows what produced it.
TRAINABLE_FILE = "trainable.json"
ALGORITHM_SUBDIR = "algorithm"

ExtraMetrics = Callable[["Algorithm", Mapping[str, Any]], Mapping[str, float]]
# Sees every result and its checkpoint directory just before it is reported (the directory is gone afterwards).
OnReport = Callable[[Mapping[str, float], str], None]


def run_algorithm(
    name: str,
    config: Mapping[str, Any],
    ctx: Context,
    algo_config: AlgorithmConfig,
    *,
    budget_steps: int,
    frames_per_step: int = 1,
    extra_metrics: ExtraMetrics | None = None,
    steps_key: str = "env_steps",
    on_report: OnReport | None = None,
) -> None:
    """Build ``algo_config``, resume from the trial's checkpoint if there is one, and train until ``budget_steps``.

    ``extra_metrics(algo, result)`` adds method-specific scalars (DQN: epsilon, mean Q). ``steps_key`` names the
    reported counter the budget is measured in (``env_steps``: agent steps online, dataset rows trained offline).
    ``on_report(metrics, checkpoint_dir)`` sees each result and its checkpoint before it is reported (DQN's
    ``keep_best`` keeps a copy of the best one).
    """
    algo = algo_config.build_algo()
    try:
        with ctx.restored_checkpoint() as path:
            if path is not None:
                restore(algo, path)
        steps_before = _lifetime_steps(algo)  # non-zero after a restore
        last_eval: dict[str, float] = {"eval_return_mean": math.nan}
        iteration, eval_iteration = 0, 0
        while True:
            started = time.perf_counter()
            result = algo.train()
            seconds = time.perf_counter() - started
            metrics = standard_metrics(result, frames_per_step=frames_per_step)
            steps = metrics.get(steps_key, 0.0)
            gained = (steps - steps_before) * frames_per_step
            metrics["frames_per_second"] = gained / seconds if seconds > 0 else 0.0
            steps_before = steps
            # Evaluation runs every few iterations; Tune's metric (and ASHA) needs it in every result, so the latest
            # evaluation is carried forward and ``eval_age`` says how many iterations old it is (NaN: none yet).
            # RLlib repeats its last evaluation in later results too, so whether this iteration evaluated is decided
            # by RLlib's own rule (every ``evaluation_interval`` finished iterations), not by the keys' presence.
            interval = algo.config.evaluation_interval
            evaluated = bool(interval) and algo.iteration % interval == 0
            fresh = {k: v for k, v in metrics.items() if k.startswith("eval_")} if evaluated else {}
            if "eval_return_mean" in fresh:
                last_eval, eval_iteration = fresh, iteration
            metrics.update(last_eval)
            metrics["eval_age"] = math.nan if math.isnan(last_eval["eval_return_mean"]) else float(
                iteration - eval_iteration)
            iteration += 1
            if extra_metrics is not None:
                metrics.update({k: float(v) for k, v in extra_metrics(algo, result).items()})
            with tempfile.TemporaryDirectory(prefix="rl_ckpt_") as tmp:
                algo.save_to_path(os.path.join(tmp, ALGORITHM_SUBDIR))
                with open(os.path.join(tmp, TRAINABLE_FILE), "w") as handle:
                    # normalize_actions: whether the policy's Box actions are in [-1, 1] (play and record map
                    # them back to the env's bounds) or already at the env's scale
                    produced = {"trainable": name, "config": dict(config),
                                "normalize_actions": bool(algo.config.normalize_actions)}
                    json.dump(produced, handle, default=str)
                if on_report is not None:
                    on_report(metrics, tmp)
                ctx.report(metrics, checkpoint_dir=tmp)
            if steps >= budget_steps:
                break
    finally:
        algo.stop()
        # Ray Data's iterator generators (offline input) must be finalized now, not at interpreter exit: left to
        # the end, they crashed CPython 3.11.7 in pytest's teardown ("AST constructor recursion depth mismatch").
        gc.collect()


def restore(algo: Algorithm, checkpoint_dir: str) -> None:
    """Restore ``algo`` from one of :func:`run_algorithm`'s checkpoints; a checkpoint RLlib cannot read (truncated,
    overwritten, or of another algorithm or network) is one :class:`CheckpointError` line naming it."""
    from trainables.checkpoint import CheckpointError

    folder = os.path.join(checkpoint_dir, ALGORITHM_SUBDIR)
    if not os.path.isdir(folder):
        raise CheckpointError(f"corrupt checkpoint {checkpoint_dir}: it has no {ALGORITHM_SUBDIR}/ folder")
    try:
        algo.restore_from_path(folder)
    except Exception as err:  # noqa: BLE001 (unpickling and set_state raise whatever a corrupt file provokes)
        message = " ".join(str(err).split())[:300]
        raise CheckpointError(f"corrupt checkpoint {folder}: RLlib cannot restore from it "
                              f"({type(err).__name__}: {message})") from err


def standard_metrics(result: Mapping[str, Any], *, frames_per_step: int = 1) -> dict[str, float]:
    """RLlib's nested result -> the flat names documented at the top of this module (NaNs left out)."""
    runners = result.get("env_runners", {}) or {}
    evaluation = (result.get("evaluation", {}) or {}).get("env_runners", {}) or {}
    metrics: dict[str, float] = {}
    _put(metrics, "episode_return_mean", runners.get("episode_return_mean"))
    _put(metrics, "episode_len_mean", runners.get("episode_len_mean"))
    _put(metrics, "eval_return_mean", evaluation.get("episode_return_mean"))
    _put(metrics, "eval_return_min", evaluation.get("episode_return_min"))
    _put(metrics, "eval_return_max", evaluation.get("episode_return_max"))
    _put(metrics, "eval_episodes", evaluation.get("num_episodes"))
    steps = runners.get("num_env_steps_sampled_lifetime")
    if steps is None:  # offline algorithms sample no environment; RLlib counts the rows its learners read
        steps = (result.get("learners", {}) or {}).get("__all_modules__", {}).get("num_env_steps_trained_lifetime")
    _put(metrics, "env_steps", steps if steps is not None else 0)
    metrics["env_frames"] = metrics["env_steps"] * frames_per_step
    for module, values in (result.get("learners", {}) or {}).items():
        if module == "__all_modules__" or not isinstance(values, Mapping):
            continue
        prefix = "learner/" if module == "default_policy" else f"learner/{module}/"
        for key, value in values.items():
            _put(metrics, prefix + key, value)
    return metrics


def placement(algo_config: AlgorithmConfig) -> list[dict[str, float]]:
    """The trial's resource bundles: the main process (the Tune trial) first, then env runners and learners.

    Tune reserves them as one placement group and RLlib's actors start inside it, so K env runners on a cluster are
    scheduled with the trial instead of competing with other trials for CPUs.
    """
    factory = algo_config.algo_class.default_resource_request(algo_config)
    bundles = [dict(b) for b in factory.bundles]
    return [{k: float(v) for k, v in b.items() if v} or {"CPU": 0.0} for b in bundles]


def check_env_id(env_id: str) -> None:
    """One readable line for an environment id gymnasium does not know (Atari ids need ``ale_py`` registered)."""
    import gymnasium as gym

    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"unknown environment '{env_id}': {err}") from None


def _lifetime_steps(algo: Algorithm) -> float:
    """The step counter a restored algorithm continues from: sampled env steps, or (offline) rows trained on."""
    counters = getattr(algo, "metrics", None)
    if counters is None:
        return 0.0
    for key in (("env_runners", "num_env_steps_sampled_lifetime"),
                ("learners", "__all_modules__", "num_env_steps_trained_lifetime")):
        try:
            value = counters.peek(key, default=0)
        except Exception:  # noqa: BLE001 (a fresh MetricsLogger lacks some keys on some algorithms)
            value = 0
        if value:
            return float(value)
    return 0.0


def _put(metrics: dict[str, float], key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        return
    if not math.isnan(number):
        metrics[key] = number
