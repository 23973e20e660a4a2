"""How a trial's resources map onto the two ways to run."""

from __future__ import annotations

import pytest

from orchestrator.runner import WORKER_GROUP_DRIVER_CPUS, TrialResources
from trainables.registry import ConfigError


@pytest.mark.parametrize(("cpus", "gpus"), [(1.0, 0.0), (2.0, 1.0), (1.0, 0.5)])
def test_one_worker_runs_in_the_trial_process_with_its_gpu_share(cpus: float, gpus: float) -> None:
    """One worker, on CPUs or on a GPU or a fraction of one, trains in the trial process (no ~30 s worker group):
    the process holds the trial's whole request, so Ray packs 1 / gpus trials on a GPU."""
    resources = TrialResources(cpus=cpus, gpus=gpus)
    assert not resources.uses_worker_group and "in the trial process" in resources.describe()
    assert resources.trial_process() == ({"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus})


@pytest.mark.parametrize(("workers", "cpus", "gpus"), [(2, 2.0, 0.0), (2, 2.0, 1.0), (4, 8.0, 4.0)])
def test_several_workers_use_a_worker_group_that_fits_the_trial_budget(workers: int, cpus: float,
                                                                       gpus: float) -> None:
    resources = TrialResources(num_workers=workers, cpus=cpus, gpus=gpus)
    per_worker = resources.per_worker()
    assert resources.uses_worker_group
    assert per_worker["CPU"] * workers + WORKER_GROUP_DRIVER_CPUS == pytest.approx(cpus)
    assert per_worker.get("GPU", 0.0) * workers == pytest.approx(gpus)


@pytest.mark.parametrize(("workers", "cpus", "gpus"), [(0, 1.0, 0.0), (1, 0.0, 0.0), (2, 0.25, 0.0), (1, 1.0, -1.0)])
def test_impossible_resources_are_config_errors(workers: int, cpus: float, gpus: float) -> None:
    with pytest.raises(ConfigError):
        TrialResources(num_workers=workers, cpus=cpus, gpus=gpus)


def test_a_gpu_trial_on_a_machine_without_gpus_fails_at_once(ray_address: str) -> None:
    """On the embedded Ray a trial asking for a GPU the machine lacks would wait forever; the CLIs check first."""
    from orchestrator import runner
    from trainables import registry

    resnet = registry.get("resnet").resolve({})
    runner.check_fits_local("resnet", TrialResources(cpus=2.0), resnet)  # CPU-only fits (the session Ray has 4)
    assert runner.trial_bundles("resnet", TrialResources(num_workers=2, cpus=2.0, gpus=1.0), resnet) == [
        {"CPU": WORKER_GROUP_DRIVER_CPUS}, *[{"CPU": (2.0 - WORKER_GROUP_DRIVER_CPUS) / 2, "GPU": 0.5}] * 2]
    with pytest.raises(ConfigError, match=r"a trial of 'resnet' needs 1 GPU\(s\) but this machine's Ray has 0"):
        runner.check_fits_local("resnet", TrialResources(gpus=1.0), resnet)
    assert runner.trial_bundles("resnet", TrialResources(gpus=0.5), resnet) == [{"CPU": 1.0, "GPU": 0.5}]
    # A trainable with its own placement (RLlib) is checked on its bundles, not on --gpus-per-trial.
    dqn = registry.get("dqn").resolve({"env": "CartPole-v1", "num_gpus": 1})
    with pytest.raises(ConfigError, match="'dqn' needs 1 GPU"):
        runner.check_fits_local("dqn", TrialResources(), dqn)
