"""The registered ``dqn`` trainable: the train function, its extra metrics, ``keep_best`` and the declarations the
orchestrator reads (metrics, budget, flags, tools)."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from trainables.context import Context
from trainables.registry import register
from trainables.rl import atari
from trainables.rl.common import ExtraMetrics, placement, run_algorithm
from trainables.rl.dqn.config import DQN_DEFAULTS, agent_steps, build_algo_config, epsilon_at, validate_dqn
from trainables.rl.play import RL_TOOLS, RL_USER_ERRORS, play

HELD_OUT_STATES = 256
FRESH_EVAL_SEED = 10_000  # env seeds of keep_best's re-evaluation: none of training's or evaluation's

# What a sweep, compare or the final table may rank a DQN trial by, and in which direction.
DQN_METRICS = {
    "eval_return_mean": "max",  # the paper's evaluation: epsilon 0.05, the game's own score
    "episode_return_mean": "max",  # training episodes (clipped rewards on Atari)
    "learner/qf_loss": "min",
    "learner/td_error_mean": "min",
    "frames_per_second": "max",
}
# Command-line shorthands of `python -m orchestrator.rl dqn`.
DQN_FLAGS = {"--env": "env", "--frames": "frames", "--num-env-runners": "num_env_runners", "--gpus": "num_gpus"}


def held_out_states(config: Mapping[str, Any], n: int = HELD_OUT_STATES) -> np.ndarray:
    """The paper's fixed set of states for tracking Q (Sec. 5.1): ``n`` states a uniformly random policy visits,
    collected once before training."""
    env = atari.make_env(atari.env_config_from(config))
    env.action_space.seed(config["seed"])
    obs, _ = env.reset(seed=config["seed"])
    states = []
    for _ in range(n):
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(states)


def extra_metrics(config: Mapping[str, Any]) -> ExtraMetrics:
    """``epsilon`` (the schedule at the current step) and ``q_mean``: the paper's "average maximum predicted
    action-value" over a fixed held-out set of states (its Figure 2), mean_s max_a Q(s, a; theta), computed with the
    learner's current weights every iteration (also before learning starts). The learner's own ``qf_mean`` (mean
    Q(s_j, a_j) of the last minibatch) is reported as ``learner/qf_mean`` once updates run."""
    states: list[torch.Tensor] = []

    def metrics(algo: Any, result: Mapping[str, Any]) -> dict[str, float]:
        steps = (result.get("env_runners", {}) or {}).get("num_env_steps_sampled_lifetime", 0) or 0
        if not states:
            states.append(torch.as_tensor(held_out_states(config)))
        learner = getattr(algo.learner_group, "_learner", None)  # the local learner (num_learners=0)
        module = learner.module["default_policy"] if learner is not None else algo.get_module()
        device = next(module.q_net.parameters()).device
        with torch.no_grad():
            q_max = module.q_net(states[0].to(device)).max(dim=-1).values  # max_a Q(s, a) per held-out state
        return {"epsilon": epsilon_at(config, float(steps)), "q_mean": float(q_max.mean())}

    return metrics


class BestCheckpoint:
    """``keep_best``: sees every result before it is reported and keeps a copy of the checkpoint whose fresh
    evaluation scored best (of equal scores the later, longer-trained one)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dqn_best_")
        self.best: dict[str, float] | None = None
        self.last: dict[str, float] | None = None

    def __call__(self, metrics: Mapping[str, float], checkpoint_dir: str) -> None:
        fresh = metrics.get("eval_age") == 0.0 and math.isfinite(metrics.get("eval_return_mean", math.nan))
        if fresh and (self.best is None or metrics["eval_return_mean"] >= self.best["eval_return_mean"]):
            shutil.rmtree(self.dir)
            shutil.copytree(checkpoint_dir, self.dir)
            self.best = dict(metrics)
        self.last = dict(metrics)


def dqn_placement(config: dict[str, Any]) -> list[dict[str, float]]:
    """Resource bundles of a DQN trial: the trial process (local learner, its GPUs) plus one per env runner."""
    return placement(build_algo_config(config))


@register(
    "dqn",
    defaults=DQN_DEFAULTS,
    validate=validate_dqn,
    placement=dqn_placement,
    tools=RL_TOOLS,
    metrics=DQN_METRICS,
    primary="eval_return_mean",
    budget=("frames", "env_frames"),
    flags=DQN_FLAGS,
    user_errors=RL_USER_ERRORS,
)
def train_dqn(config: dict[str, Any], ctx: Context) -> None:
    """DQN (Mnih et al. 2013) on RLlib: Atari preprocessing, the paper's network, replay, epsilon-greedy.

    ``keep_best``: after the budget, the checkpoint with the best evaluation is re-evaluated on
    ``final_eval_episodes`` fresh episodes (new env seeds, epsilon = eval_epsilon, via :func:`play`), and that
    score and checkpoint are reported as the trial's last result (model selection on the evaluation episodes; the
    fresh re-evaluation keeps the reported score free of the selection's upward bias).
    """
    keeper = BestCheckpoint() if config["keep_best"] else None
    try:
        run_algorithm(
            "dqn",
            config,
            ctx,
            build_algo_config(config),
            budget_steps=agent_steps(config, config["frames"]),
            frames_per_step=atari.frame_skip_for(config["env"], config["frame_skip"]),
            extra_metrics=extra_metrics(config),
            on_report=keeper,
        )
        if keeper is not None and keeper.best is not None and keeper.last is not None:
            returns = play(keeper.dir, episodes=config["final_eval_episodes"], seed=FRESH_EVAL_SEED + config["seed"])
            # where the reported checkpoint was taken, and its (selection) evaluation
            ctx.add_to_reports(
                {
                    "selected_env_steps": keeper.best["env_steps"],
                    "selected_eval_return_mean": keeper.best["eval_return_mean"],
                }
            )
            ctx.report(
                {
                    **keeper.last,
                    "eval_return_mean": float(np.mean(returns)),
                    "eval_return_min": float(np.min(returns)),
                    "eval_return_max": float(np.max(returns)),
                    "eval_episodes": float(len(returns)),
                    "eval_age": 0.0,
                },
                checkpoint_dir=keeper.dir,
            )
    finally:
        if keeper is not None:
            shutil.rmtree(keeper.dir, ignore_errors=True)  # the report above took its own copy
