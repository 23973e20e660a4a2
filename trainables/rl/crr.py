"""CRR, Critic Regularized Regression (Wang et al. 2020), as an RLlib algorithm on the new API stack, and the ``crr``
trainable that runs it on an offline dataset with evaluation episodes in the real environment.

- :class:`CRRConfig` / :class:`CRR`: the config builder and the Algorithm (offline ``training_step``: read a batch
  from the dataset, run ``dataset_num_iters_per_learner`` gradient steps).
- :mod:`trainables.rl.crr_module`: the RLModule (policy, Q networks, targets); :mod:`trainables.rl.crr_learner`:
  the loss, with the paper's formulas.
- :mod:`trainables.rl.offline`: the datasets (``record`` tool registered here).

    config = (CRRConfig().environment("CartPole-v1")
              .training(weight_type="binary", advantage_type="expectation", beta=1.0)
              .offline_data(input_=[DIR], dataset_num_iters_per_learner=100,
                            map_batches_kwargs={"concurrency": 1, "num_cpus": 0.5}))
    algo = config.build_algo(); algo.train()
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.connectors.common.add_observations_from_episodes_to_batch import AddObservationsFromEpisodesToBatch
from ray.rllib.connectors.learner.add_next_observations_from_episodes_to_train_batch import (
    AddNextObservationsFromEpisodesToTrainBatch,
)
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import (
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    OFFLINE_SAMPLING_TIMER,
    TIMERS,
)

from trainables.context import Context
from trainables.registry import ConfigError, check_choice, check_range, register
from trainables.rl import common
from trainables.rl.crr_learner import ADVANTAGE_TYPES, WEIGHT_TYPES, CRRTorchLearner
from trainables.rl.crr_module import POLICY_DISTS, CRRTorchRLModule
from trainables.rl.offline import (
    PRELEARNER_CPUS,
    inspect_dataset,
    keep_data_in_trial_placement,
    offline_data_kwargs,
    offline_placement,
    record_dataset,
)
from trainables.rl.play import RL_TOOLS, RL_USER_ERRORS


class CRRConfig(AlgorithmConfig):
    """Builder for :class:`CRR`; ``.training(...)`` takes CRR's hyperparameters besides RLlib's usual ones."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or CRR)
        self.weight_type = "exp"
        self.beta = 1.0  # temperature of exp(A / beta)
        self.max_weight = 20.0
        self.advantage_type = "mean"
        self.n_action_samples = 4  # m, actions sampled from pi(.|s) for V(s) (mean/max estimators)
        self.twin_q = True
        self.tau = 1.0  # 1.0: hard target copies every target_update_frequency gradient steps
        self.target_update_frequency = 100
        self.actor_lr = 3e-4
        self.critic_lr = 3e-4
        self.lr = None  # two optimizers with their own rates
        self.gamma = 0.99
        self.train_batch_size_per_learner = 256

    def training(self, *, weight_type: str = NotProvided, beta: float = NotProvided,
                 max_weight: float = NotProvided, advantage_type: str = NotProvided,
                 n_action_samples: int = NotProvided, twin_q: bool = NotProvided, tau: float = NotProvided,
                 target_update_frequency: int = NotProvided, actor_lr: float = NotProvided,
                 critic_lr: float = NotProvided, **kwargs: Any) -> CRRConfig:
        """CRR's settings (see the class attributes); ``gamma``, ``train_batch_size_per_learner``... go to RLlib."""
        super().training(**kwargs)
        for key, value in dict(weight_type=weight_type, beta=beta, max_weight=max_weight,
                               advantage_type=advantage_type, n_action_samples=n_action_samples, twin_q=twin_q,
                               tau=tau, target_update_frequency=target_update_frequency, actor_lr=actor_lr,
                               critic_lr=critic_lr).items():
            if value is not NotProvided:
                setattr(self, key, value)
        return self

    def get_default_learner_class(self) -> type:
        return CRRTorchLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=CRRTorchRLModule)

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {"twin_q": self.twin_q}

    def build_learner_connector(self, input_observation_space: Any, input_action_space: Any, device: Any = None):
        # The critic's target needs s' of every transition (the offline pre-learner runs this pipeline).
        pipeline = super().build_learner_connector(input_observation_space, input_action_space, device)
        pipeline.insert_after(AddObservationsFromEpisodesToBatch, AddNextObservationsFromEpisodesToTrainBatch())
        return pipeline

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.weight_type in WEIGHT_TYPES, f"weight_type={self.weight_type!r} is not one of {WEIGHT_TYPES}"),
            (self.advantage_type in ADVANTAGE_TYPES,
             f"advantage_type={self.advantage_type!r} is not one of {ADVANTAGE_TYPES}"),
            (self.beta > 0, f"beta={self.beta} must be > 0"),
            (self.max_weight > 0, f"max_weight={self.max_weight} must be > 0"),
            (self.n_action_samples >= 1, f"n_action_samples={self.n_action_samples} must be >= 1"),
            (0 < self.tau <= 1, f"tau={self.tau} must be in (0, 1]"),
            (self.target_update_frequency >= 1,
             f"target_update_frequency={self.target_update_frequency} must be >= 1"),
            (0 <= self.gamma <= 1, f"gamma={self.gamma} must be in [0, 1]"),
            (not (self.is_offline and self.num_learners == 0 and not self.dataset_num_iters_per_learner),
             "a local learner (num_learners=0) needs dataset_num_iters_per_learner"),
        ]
        for ok, message in checks:
            if not ok:
                self._value_error(message)


class CRR(Algorithm):
    """Offline: each ``training_step`` reads the dataset and runs ``dataset_num_iters_per_learner`` updates."""

    @classmethod
    def get_default_config(cls) -> CRRConfig:
        return CRRConfig()

    def training_step(self) -> None:
        cfg = self.config
        with self.metrics.log_time((TIMERS, OFFLINE_SAMPLING_TIMER)):
            # An iterator per learner (remote learners, or several steps locally); a single batch otherwise.
            iterate = cfg.num_learners > 0 or cfg.dataset_num_iters_per_learner != 1
            data = self.offline_data.sample(num_samples=cfg.train_batch_size_per_learner,
                                            num_shards=cfg.num_learners, return_iterator=iterate)
            training_data = TrainingData(data_iterators=data) if iterate else TrainingData(batch=data)
            # Rows read this iteration: batch size x gradient steps x learners (no env is sampled offline).
            rows = cfg.train_batch_size_per_learner * (cfg.dataset_num_iters_per_learner or 1)
            self.metrics.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, rows * max(1, cfg.num_learners),
                                   reduce="lifetime_sum")
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            results = self.learner_group.update(
                training_data=training_data, minibatch_size=cfg.train_batch_size_per_learner,
                num_iters=cfg.dataset_num_iters_per_learner,
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(NUM_ENV_STEPS_SAMPLED_LIFETIME)},
                **self.offline_data.iter_batches_kwargs,
            )
            self.metrics.aggregate(results, key=LEARNER_RESULTS)


# ---- the registered trainable -----------------------------------------------------------------------------------

# Settings shared by the offline trainables (crr, bc): data, budget, network, evaluation.
OFFLINE_DEFAULTS: dict[str, Any] = {
    "env": "CartPole-v1",
    "data": "",  # directory of an RLlib offline dataset (python -m orchestrator.rl record ...)
    "batch_size": 256,
    "updates_per_iteration": 250,  # gradient steps per reported result
    "train_rows": 256_000,  # budget: dataset rows trained on (batch_size x gradient steps)
    "hiddens": [256, 256],
    "evaluation_episodes": 10,
    "evaluation_interval": 1,  # evaluate every N iterations
    "seed": 0,
}

CRR_DEFAULTS: dict[str, Any] = {
    **OFFLINE_DEFAULTS,
    "weight_type": "exp",
    "beta": 1.0,
    "max_weight": 20.0,
    "advantage_type": "mean",
    "n_action_samples": 4,
    "twin_q": True,
    "tau": 1.0,
    "target_update_frequency": 100,
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "gamma": 0.99,
    "policy_dist": "tanh_gaussian",  # Box actions only
}


def validate_offline(config: dict[str, Any]) -> None:
    """The env exists, the dataset (when set) is an RLlib dataset recorded in its spaces, the budget is positive.

    An empty ``data`` passes here so that a sweep file can leave the dataset to the command line; building the
    algorithm (:func:`offline_algo_config`) refuses it with a ConfigError.
    """
    common.check_env_id(config["env"])
    if config["data"]:
        inspect_dataset(config["data"], config["env"])
    for key in ("batch_size", "updates_per_iteration", "train_rows", "evaluation_episodes", "evaluation_interval"):
        check_range(config, key, 1)
    hiddens = config["hiddens"]
    if not hiddens or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hiddens):
        raise ConfigError(f"hiddens={hiddens!r} must be a non-empty list of positive layer widths")


def validate_crr(config: dict[str, Any]) -> None:
    import gymnasium as gym

    check_choice(config, "weight_type", WEIGHT_TYPES)
    check_choice(config, "advantage_type", ADVANTAGE_TYPES)
    check_choice(config, "policy_dist", POLICY_DISTS)
    check_range(config, "beta", 0, low_open=True)
    check_range(config, "max_weight", 0, low_open=True)
    check_range(config, "n_action_samples", 1)
    check_range(config, "tau", 0, 1, low_open=True)
    check_range(config, "target_update_frequency", 1)
    check_range(config, "actor_lr", 0, low_open=True)
    check_range(config, "critic_lr", 0, low_open=True)
    check_range(config, "gamma", 0, 1)
    if config["advantage_type"] == "expectation" and not isinstance(
        gym.make(config["env"]).action_space, gym.spaces.Discrete
    ):
        raise ConfigError("advantage_type='expectation' needs discrete actions; use 'mean' or 'max'")


def offline_algo_config(algo_config: AlgorithmConfig, config: dict[str, Any], *, check_data: bool = True):
    """The data, evaluation and resource settings every offline trainable shares (2-CPU safe)."""
    info = inspect_dataset(config["data"], config["env"]) if check_data else None
    data_kwargs = offline_data_kwargs(info, updates_per_iteration=config["updates_per_iteration"]) if info else {
        "input_": [config["data"]], "dataset_num_iters_per_learner": config["updates_per_iteration"],
        "map_batches_kwargs": {"concurrency": 1, "num_cpus": PRELEARNER_CPUS}}
    return (
        algo_config.environment(config["env"])
        .framework("torch")
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)
        .offline_data(**data_kwargs)
        .evaluation(evaluation_interval=config["evaluation_interval"], evaluation_num_env_runners=0,
                    evaluation_duration=config["evaluation_episodes"], evaluation_duration_unit="episodes")
        .debugging(seed=config["seed"])
    )


def build_crr_config(config: dict[str, Any], *, check_data: bool = True) -> CRRConfig:
    """The flat trainable config -> a :class:`CRRConfig`."""
    algo_config = CRRConfig().training(
        weight_type=config["weight_type"], beta=config["beta"], max_weight=config["max_weight"],
        advantage_type=config["advantage_type"], n_action_samples=config["n_action_samples"],
        twin_q=config["twin_q"], tau=config["tau"], target_update_frequency=config["target_update_frequency"],
        actor_lr=config["actor_lr"], critic_lr=config["critic_lr"], gamma=config["gamma"],
        train_batch_size_per_learner=config["batch_size"],
    ).rl_module(model_config={"hiddens": list(config["hiddens"]), "policy_dist": config["policy_dist"]})
    return offline_algo_config(algo_config, config, check_data=check_data)


def crr_placement(config: dict[str, Any]) -> list[dict[str, float]]:
    return offline_placement(common.placement(build_crr_config(config, check_data=False)))


# What a sweep, compare or the final table may rank an offline trial by (no training episodes: offline).
OFFLINE_METRICS = {"eval_return_mean": "max", "learner/policy_loss": "min"}
CRR_METRICS = {**OFFLINE_METRICS, "learner/qf_loss": "min"}
# The budget: dataset rows trained on (batch_size x gradient steps), reported as env_steps by run_algorithm.
OFFLINE_BUDGET = ("train_rows", "env_steps")
OFFLINE_FLAGS = {"--env": "env", "--data": "data"}


@register("crr", defaults=CRR_DEFAULTS, validate=(validate_offline, validate_crr), placement=crr_placement,
          tools={**RL_TOOLS, "record": record_dataset}, metrics=CRR_METRICS, primary="eval_return_mean",
          budget=OFFLINE_BUDGET, flags={**OFFLINE_FLAGS, "--weight-type": "weight_type"},
          user_errors=RL_USER_ERRORS, paths=("data",))
def train_crr(config: dict[str, Any], ctx: Context) -> None:
    """CRR (Wang et al. 2020) on an offline dataset, evaluated in the real environment."""
    import torch

    torch.set_num_threads(1)
    keep_data_in_trial_placement()
    common.run_algorithm("crr", config, ctx, build_crr_config(config), budget_steps=config["train_rows"],
                         steps_key="env_steps")
