"""The ``bc`` trainable: RLlib's behaviour cloning on an offline dataset, the baseline CRR is compared with.

Same data pipeline, network widths, batch size, budget (dataset rows) and evaluation as ``crr``
(:func:`trainables.rl.crr.offline_algo_config`), so the two differ only in the loss: BC maximizes
``E_(s,a)~D log pi(a|s)``, CRR weights that term by ``f(A(s, a))``.
"""

from __future__ import annotations

from typing import Any

from trainables.context import Context
from trainables.registry import check_range, register
from trainables.rl import common
from trainables.rl.crr import (
    OFFLINE_BUDGET,
    OFFLINE_DEFAULTS,
    OFFLINE_FLAGS,
    OFFLINE_METRICS,
    offline_algo_config,
    validate_offline,
)
from trainables.rl.offline import keep_data_in_trial_placement, offline_placement
from trainables.rl.play import RL_TOOLS, RL_USER_ERRORS

BC_DEFAULTS: dict[str, Any] = {**OFFLINE_DEFAULTS, "lr": 3e-4}


def validate_bc(config: dict[str, Any]) -> None:
    check_range(config, "lr", 0, low_open=True)


def build_bc_config(config: dict[str, Any], *, check_data: bool = True):
    """The flat trainable config -> RLlib's ``BCConfig``."""
    import gymnasium as gym
    from ray.rllib.algorithms.bc import BCConfig

    algo_config = BCConfig().training(lr=config["lr"], train_batch_size_per_learner=config["batch_size"]).rl_module(
        model_config={"fcnet_hiddens": list(config["hiddens"]), "fcnet_activation": "relu"}
    )
    algo_config = offline_algo_config(algo_config, config, check_data=check_data)
    if isinstance(gym.make(config["env"]).action_space, gym.spaces.Box):
        # BC's Gaussian is fit to the dataset's env-scale actions: evaluate them as they are (clipped to the
        # bounds), not as [-1, 1]-normalized actions.
        algo_config = algo_config.environment(normalize_actions=False, clip_actions=True)
    return algo_config


def bc_placement(config: dict[str, Any]) -> list[dict[str, float]]:
    return offline_placement(common.placement(build_bc_config(config, check_data=False)))


@register("bc", defaults=BC_DEFAULTS, validate=(validate_offline, validate_bc), placement=bc_placement,
          tools=RL_TOOLS, metrics=OFFLINE_METRICS, primary="eval_return_mean", budget=OFFLINE_BUDGET,
          flags=OFFLINE_FLAGS, user_errors=RL_USER_ERRORS, paths=("data",))
def train_bc(config: dict[str, Any], ctx: Context) -> None:
    """RLlib's behaviour cloning (BC) on an offline dataset, evaluated in the real environment."""
    import torch

    torch.set_num_threads(1)
    keep_data_in_trial_placement()
    common.run_algorithm("bc", config, ctx, build_bc_config(config), budget_steps=config["train_rows"],
                         steps_key="env_steps")
