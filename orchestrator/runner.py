"""A registered trainable -> a Tune trainable, run one of two ways.

- One worker (on CPUs, or on a GPU or a fraction of one): the train function runs inside the Tune trial's own
  process, which holds the trial's CPUs and GPU share (the CLIs reuse that process for the next trial: under a second
  of overhead a trial; see bench/README.md). Ray sets ``CUDA_VISIBLE_DEVICES`` to the trial's GPU, so fractional
  requests (``--gpus-per-trial 0.5``) pack several trials per GPU.
- ``num_workers > 1``: the trial launches a Ray Train ``TorchTrainer`` worker group (DDP; gloo on CPU,
  NCCL on GPU) and forwards its reports to Tune. The group's run is named after the trial id under the sweep's
  storage, so a retried or resumed trial finds its own checkpoints again (a group costs ~30 s a trial here).

Both paths call the same ``spec.train(config, ctx)``; only the :mod:`trainables.context` differs.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables import registry

# The Tune trial that drives a worker group mostly waits on it: a small CPU share keeps it from blocking workers.
WORKER_GROUP_DRIVER_CPUS = 0.25


@dataclass(frozen=True)
class TrialResources:
    """What one trial may use: ``cpus``/``gpus`` are per trial, split evenly over ``num_workers``."""

    num_workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise registry.ConfigError(f"--workers must be >= 1, got {self.num_workers}")
        if self.cpus <= 0 or self.gpus < 0:
            raise registry.ConfigError(f"CPUs per trial must be > 0 and GPUs >= 0, got {self.cpus}, {self.gpus}")
        if self.uses_worker_group and self.cpus <= WORKER_GROUP_DRIVER_CPUS:
            raise registry.ConfigError(
                f"--cpus-per-trial {self.cpus:g} leaves no CPU for the workers (the group's driver takes "
                f"{WORKER_GROUP_DRIVER_CPUS}); give more than that"
            )

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def uses_worker_group(self) -> bool:
        # One GPU worker needs no process group: a worker group would add ~30 s a trial for nothing.
        return self.num_workers > 1

    def trial_process(self) -> dict[str, float]:
        """What the trial's own process holds when it trains in that process."""
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.use_gpu else {})}

    def per_worker(self) -> dict[str, float]:
        # The trial's CPUs include its driver's share, so `--cpus-per-trial 2 --workers 2` fits a 2-core laptop.
        resources = {"CPU": (self.cpus - WORKER_GROUP_DRIVER_CPUS) / self.num_workers}
        if self.use_gpu:
            resources["GPU"] = self.gpus / self.num_workers
        return resources

    def describe(self) -> str:
        where = f"{self.num_workers} DDP worker(s) via Ray Train" if self.uses_worker_group else "in the trial process"
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU per trial, {where}"


def trial_bundles(trainable: str, resources: TrialResources, config: dict[str, Any]) -> list[dict[str, float]]:
    """The resource bundles one trial of ``trainable`` holds: the method's own where it asks for them (RLlib: trial
    process, env runners, GPU learner), else the trial process plus its DDP workers from ``resources``."""
    spec = registry.get(trainable)
    if spec.placement is not None:
        return spec.placement(config)
    if not resources.uses_worker_group:
        return [resources.trial_process()]
    return [{"CPU": WORKER_GROUP_DRIVER_CPUS}] + [resources.per_worker()] * resources.num_workers


def total_resources(bundles: list[dict[str, float]]) -> dict[str, float]:
    """Sum of ``bundles`` by resource name."""
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def describe_resources(trainable: str, resources: TrialResources, config: dict[str, Any]) -> str:
    """What one trial holds, for the sweep's header and parent-run tag."""
    if registry.get(trainable).placement is None:
        return resources.describe()
    bundles = trial_bundles(trainable, resources, config)
    held = ", ".join(f"{amount:g} {name}" for name, amount in sorted(total_resources(bundles).items()))
    return f"{held} per trial in {len(bundles)} bundle(s), the trainable's own placement"


def check_fits_local(trainable: str, resources: TrialResources, config: dict[str, Any]) -> None:
    """On the embedded local Ray, a trial that asks for more GPUs than the machine has would wait forever (Ray's
    autoscaler only logs that nothing can fulfil it): fail at once with one line instead."""
    import ray

    wanted = total_resources(trial_bundles(trainable, resources, config)).get("GPU", 0.0)
    available = ray.cluster_resources().get("GPU", 0.0)
    if wanted > available:
        raise registry.ConfigError(
            f"a trial of '{trainable}' needs {wanted:g} GPU(s) but this machine's Ray has {available:g}; run "
            "without GPUs, or join a cluster that has them with --address"
        )


def make_trainable(
    trainable: str, resources: TrialResources, *, storage_path: str, experiment_name: str
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable (with its resource request) for registered ``trainable``."""
    from ray import tune

    # Looked up in the driver and shipped with the trial: a trainable registered in a script or notebook
    # (pickled by value) works as well as one from this package (pickled by reference).
    spec = registry.get(trainable)
    train = spec.train

    if spec.placement is not None:
        # The method asks for its own bundles (RLlib: the trial process, env runners, learners); RLlib's actors
        # start inside the trial's placement group. --cpus-per-trial / --workers do not apply to it.
        placement = spec.placement

        def run_with_placement(config: dict[str, Any]) -> None:
            import torch

            from trainables.context import TuneContext

            torch.set_num_threads(max(1, math.floor(placement(config)[0].get("CPU", 1.0))))
            train(config, TuneContext())

        def bundles(config: dict[str, Any]) -> Any:
            return tune.PlacementGroupFactory(placement(config), strategy="PACK")

        run_with_placement.__name__ = trainable
        return tune.with_resources(run_with_placement, bundles)

    if not resources.uses_worker_group:
        threads = max(1, math.floor(resources.cpus))

        def run_in_trial_process(config: dict[str, Any]) -> None:
            import torch

            from trainables.context import TuneContext, trial_device

            torch.set_num_threads(threads)  # as many threads as CPUs the trial holds: trials share the machine
            train(config, TuneContext(device=trial_device()))

        run_in_trial_process.__name__ = trainable
        return tune.with_resources(run_in_trial_process, resources.trial_process())

    train_storage = posixpath.join(storage_path, experiment_name, "worker_groups")

    def run_worker_group(config: dict[str, Any]) -> None:
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"train": train, "config": config,
                               "threads": max(1, math.floor(resources.per_worker()["CPU"]))},
            scaling_config=ray.train.ScalingConfig(
                num_workers=resources.num_workers,
                use_gpu=resources.use_gpu,
                resources_per_worker=resources.per_worker(),
            ),
            torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
            run_config=ray.train.RunConfig(
                # Deterministic name: a retried/resumed trial restores this group's latest checkpoint.
                name=trial_id,
                storage_path=train_storage,
                callbacks=[TuneReportCallback()],
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        trainer.fit()

    run_worker_group.__name__ = trainable
    return tune.with_resources(run_worker_group, {"CPU": WORKER_GROUP_DRIVER_CPUS})


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One rank of the worker group: the trainable's train function on a Train context."""
    import torch

    from trainables.context import TrainWorkerContext

    torch.set_num_threads(loop_config["threads"])
    loop_config["train"](loop_config["config"], TrainWorkerContext())
