"""The loop's checkpoint: every model, optimizer and schedule, the loop's and the task's state, and every rank's RNG.

One file, ``state.pt``, written by the chief. Random number generators are per rank (each rank draws its own dropout
masks and augmentations), so the chief gathers every rank's CPU and CUDA generator state before it writes, and a
resumed rank restores its own: after a resume, ranks draw what they would have drawn without the interruption.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing file, truncated, or written by a different model)."""


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's CPU generator state, and its CUDA generator's on a CUDA device."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save_checkpoint(directory: str, *, models: Mapping[str, nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer],
                    schedules: Mapping[str, torch.optim.lr_scheduler.LRScheduler], epoch: int, step: int,
                    rank_rng: list[dict[str, torch.Tensor]], config: Mapping[str, Any],
                    loop_state: Mapping[str, Any], task_state: Mapping[str, Any]) -> None:
    """Everything a resumed run needs to continue exactly (models are the bare modules, not DDP wrappers).

    The config and the loop's and task's state are stored as plain values (NumPy scalars as Python numbers), so the
    file loads with ``torch.load(weights_only=True)``: tensors and plain containers, no pickled classes."""
    torch.save(
        {
            "models": {name: model.state_dict() for name, model in models.items()},
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "schedules": {name: schedule.state_dict() for name, schedule in schedules.items()},
            "epoch": epoch,
            "step": step,
            "rng": rank_rng,
            "config": _plain(dict(config)),
            "loop_state": _plain(dict(loop_state)),
            "task_state": _plain(dict(task_state)),
        },
        os.path.join(directory, CHECKPOINT_FILE),
    )


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers, inside dicts, lists and tuples (what weights_only loads)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


# The layout of a checkpoint and the type each entry must have; anything else is a corrupt (or foreign) file.
LAYOUT: dict[str, type] = {
    "models": dict, "optimizers": dict, "schedules": dict, "epoch": int, "step": int, "rng": list, "config": dict,
    "loop_state": dict, "task_state": dict,
}


def read_checkpoint(directory: str, *, for_resume: bool = True) -> dict[str, Any]:
    """The raw state of a :func:`save_checkpoint` directory, in the current layout (older single-model
    checkpoints, ``model``/``optimizer``/``schedule``/``torch_rng``, are converted); :class:`CheckpointError`
    naming the file if it cannot be read.

    ``weights_only=True``: the file may hold only tensors and plain values, so a checkpoint from elsewhere cannot
    run code while it is read (a pickled object is refused with the rest of the corrupt files). ``for_resume``:
    every entry a resume reads must be there with its type; else only ``models`` (inspection tools)."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory} (no such directory)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory}") from None
    except Exception as err:  # noqa: BLE001 (zip, pickle and storage errors all mean the same here)
        reason = str(err).split("\n")[0] if "Weights only load failed" not in str(err) else (
            "it holds pickled Python objects, not only tensors and plain values")
        raise CheckpointError(f"corrupt checkpoint {path}: {type(err).__name__}: {' '.join(reason.split())[:300]}"
                              ) from None
    if not isinstance(state, dict) or not ({"models", "model"} & set(state)):
        raise CheckpointError(f"corrupt checkpoint {path}: not a checkpoint of the common loop")
    try:
        if "model" in state:  # the single-model layout written before tasks
            state = {"models": {"model": state["model"]}, "optimizers": {"optimizer": state["optimizer"]},
                     "schedules": {"optimizer": state["schedule"]}, "epoch": state["epoch"], "step": 0,
                     "rng": [{"cpu": state["torch_rng"]}], "config": state.get("config", {}),
                     "loop_state": state.get("loop_state", {}), "task_state": {}}
    except KeyError as err:
        raise CheckpointError(f"corrupt checkpoint {path}: no {err} in a single-model checkpoint") from None
    layout = LAYOUT if for_resume else {"models": LAYOUT["models"]}
    wrong = [f"{key} (should be {kind.__name__}, is {type(state[key]).__name__})" if key in state
             else f"{key} (missing)"
             for key, kind in layout.items() if not isinstance(state.get(key), kind) or isinstance(state[key], bool)]
    if wrong:
        raise CheckpointError(f"corrupt checkpoint {path}: wrong entries {', '.join(wrong)}")
    if for_resume and not all(isinstance(r, dict) and isinstance(r.get("cpu"), torch.Tensor) for r in state["rng"]):
        raise CheckpointError(f"corrupt checkpoint {path}: rng is not one generator state per rank")
    return state


def load_weights(directory: str, models: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Load the models' weights of a checkpoint (inspection tools, evaluation); returns the raw state."""
    state = read_checkpoint(directory, for_resume=False)
    path = os.path.join(directory, CHECKPOINT_FILE)
    missing = sorted(set(models) - set(state["models"]))
    if missing:
        raise CheckpointError(f"checkpoint {path} has no model(s) {', '.join(missing)}; it has "
                              f"{', '.join(sorted(state['models']))}")
    for name, model in models.items():
        try:
            model.load_state_dict(state["models"][name])
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} does not fit model '{name}': {type(err).__name__}: "
                                  f"{' '.join(str(err).split())[:300]}") from None
    return state
