"""The one seam between a method and Ray: report, checkpoint, rank, world size, device.

A trainable's code calls only this interface, so the same loop runs
- in a Tune trial's own process (:class:`TuneContext`: ``ray.tune.report`` / ``ray.tune.get_checkpoint``), the cheap
  path for one worker on the CPU or one GPU (a trial costs ~1 s of overhead instead of ~30 s for a worker group);
- as one rank of a Ray Train ``TorchTrainer`` worker group (:class:`TrainWorkerContext`: DDP, gloo on CPU, NCCL on
  GPU), when a trial asks for several workers;
- with no Ray at all (:class:`LocalContext`), for tests, benchmarks and notebooks, or one rank of a plain
  ``torch.distributed`` group (:class:`DistributedContext`, e.g. under ``torchrun``).

Ray Train's own "local mode" would be the natural single-process path, but in Ray 2.60 ``ray.train.report`` raises
inside a Tune trial (ray issue 49454), hence this thin seam of our own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# A checkpoint's subfolder for what a task writes for users (``Task.write_artifacts``); the driver's MLflow callback
# logs it as the run's ``task/`` artifacts.
TASK_ARTIFACTS = "artifacts"


class Context(ABC):
    """Where a train function runs. ``rank``/``world_size`` describe the data-parallel group (1 for one process)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    _extras: dict[str, Any]

    @property
    def is_chief(self) -> bool:
        """Rank 0 writes checkpoints; every rank reports (Ray Train requires all ranks to call report)."""
        return self.rank == 0

    def add_to_reports(self, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into every later :meth:`report` (a NAS child's latency, a DQN's best evaluation):
        a method adds what it knows about itself without wrapping the context."""
        if not hasattr(self, "_extras"):
            self._extras = {}
        self._extras.update(metrics)

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        """Report one result (one epoch); ``checkpoint_dir`` is a local directory Ray takes a copy of."""
        self._emit({**metrics, **getattr(self, "_extras", {})}, checkpoint_dir)

    @abstractmethod
    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Hand one result (and the checkpoint directory, if any) to wherever this context reports."""

    @abstractmethod
    def restored_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """Context manager yielding a local directory with the latest checkpoint to resume from, or ``None``."""

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to this context's device (and wrap it for data parallelism where there is a group)."""
        return model.to(self.device)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over the ranks (identity for one process)."""
        return values

    def all_gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        """``value`` of every rank, in rank order (``[value]`` for one process); same shape on every rank."""
        return [value]

    def all_gather_object(self, value: Any) -> list[Any]:
        """A picklable ``value`` of every rank, in rank order (RNG states for the checkpoint)."""
        return [value]


class LocalContext(Context):
    """No Ray: results are kept in ``self.results``; checkpoints are copied under ``checkpoint_root``.

    Passing the same ``checkpoint_root`` to a new ``LocalContext`` resumes from its last checkpoint, the way a
    retried Tune trial resumes.
    """

    def __init__(self, device: str | torch.device = "cpu", checkpoint_root: str | None = None) -> None:
        self.device = torch.device(device)
        self.results: list[dict[str, Any]] = []
        self.checkpoint_root = checkpoint_root or tempfile.mkdtemp(prefix="local_ckpt_")
        self._latest = _latest_subdir(self.checkpoint_root)

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.results.append(dict(metrics))
        if checkpoint_dir is not None:
            target = os.path.join(self.checkpoint_root, f"checkpoint_{len(os.listdir(self.checkpoint_root)):06d}")
            shutil.copytree(checkpoint_dir, target)
            self._latest = target

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        yield self._latest


# Every Ray report names the node that produced it (the driver tags the trial's MLflow run with it): on a cluster,
# where a trial ran and where a retried one went after a node was lost.
NODE_ID_KEY = "ray_node_id"


def _with_node(metrics: dict[str, Any]) -> dict[str, Any]:
    import ray

    return {**metrics, NODE_ID_KEY: ray.get_runtime_context().get_node_id()}


def trial_device() -> torch.device:
    """The device of a one-process trial: its GPU where Ray gave it one (``CUDA_VISIBLE_DEVICES`` then shows only that
    GPU, so ``cuda:0`` is it), else the CPU. A logical GPU without CUDA (a CPU build of torch, a test cluster's
    ``--num-gpus``) trains on the CPU and says so once."""
    import ray

    gpu_ids = ray.get_gpu_ids()
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0)  # the first visible device: the trial's own
    if gpu_ids:
        print(f"note: this trial holds GPU {gpu_ids} but torch sees no CUDA device; training on the CPU", flush=True)
    return torch.device("cpu")


class TuneContext(Context):
    """Inside a Tune function trial (one process; the CPU, or the GPU the trial holds)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(_with_node(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as path:
                yield path


class _ProcessGroupOps:
    """Collectives and DDP wrapping for a context whose process group is already initialised."""

    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module:
        # find_unused_parameters: a block dropped by stochastic depth (or swapout) leaves its parameters without a
        # gradient in that step; DDP must not wait for them.
        model = model.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        reduced = values.detach().to(self.device).clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return (reduced / self.world_size).to(values.device)

    def all_gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        mine = value.detach().to(self.device)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        return [t.to(value.device) for t in gathered]

    def all_gather_object(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


class DistributedContext(_ProcessGroupOps, LocalContext):
    """One rank of a plain ``torch.distributed`` group (``torchrun``, or ``torch.multiprocessing`` in tests):
    DDP and collectives as in a Ray Train group, results and checkpoints kept like :class:`LocalContext`."""

    def __init__(self, device: str | torch.device = "cpu", checkpoint_root: str | None = None) -> None:
        super().__init__(device=device, checkpoint_root=checkpoint_root)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        # Only the chief keeps checkpoints: ranks may share checkpoint_root.
        super()._emit(metrics, checkpoint_dir if self.is_chief else None)


class TrainWorkerContext(_ProcessGroupOps, Context):
    """One rank of a Ray Train ``TorchTrainer`` worker group; Ray Train has set up the process group."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        train_context = ray.train.get_context()
        self.rank = train_context.get_world_rank()
        self.world_size = train_context.get_world_size()
        self.device = ray.train.torch.get_device()

    def _emit(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        # Every rank must call report; only the chief hands over a checkpoint (all replicas hold the same weights).
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir and self.is_chief else None
        ray.train.report(_with_node(metrics), checkpoint=checkpoint)

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as path:
                yield path


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (checkpoints store the bare model so any context can load them)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _latest_subdir(root: str) -> str | None:
    if not os.path.isdir(root):
        os.makedirs(root, exist_ok=True)
        return None
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return os.path.join(root, subdirs[-1]) if subdirs else None
