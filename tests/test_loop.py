"""The common loop without Ray: metrics per epoch, the paper's schedule, exact resume, corrupt checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables import registry
from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError, load_weights
from trainables.classification import fit_classifier
from trainables.context import LocalContext
from trainables.loop import load_data, parameter_digest
from trainables.resnet import build_resnet

TINY = {"depth": 8, "epochs": 4, "limit_train_batches": 2, "batch_size": 32, "p_L": 0.5, "dropout": 0.1}


def _run(config: dict, ctx: LocalContext) -> torch.nn.Module:
    data = load_data(config)
    built: list[torch.nn.Module] = []

    def build() -> torch.nn.Module:
        model = build_resnet(depth=config["depth"], num_classes=data.num_classes,
                             in_channels=data.input_shape[0], p_L=config["p_L"], dropout=config["dropout"],
                             seed=config["seed"])
        built.append(model)
        return model

    fit_classifier(ctx, config, data, build)
    return built[0]


def test_reports_one_result_per_epoch_with_the_step_schedule(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = registry.get("resnet").resolve(TINY)
    ctx = LocalContext(checkpoint_root=str(tmp_path / "ckpt"))
    _run(config, ctx)
    assert [r["epoch"] for r in ctx.results] == [1, 2, 3, 4]
    # lr 0.1, divided by 10 at 50% and 75% of the epochs.
    assert [r["lr"] for r in ctx.results] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    for result in ctx.results:
        assert 0.0 <= result["val_error"] <= 1.0 and result["val_accuracy"] == pytest.approx(1 - result["val_error"])
        assert result["train_loss"] > 0 and result["epoch_seconds"] > 0 and "test_error" in result
    assert len(list((tmp_path / "ckpt").iterdir())) == 4


def test_warmup_runs_at_warmup_lr_until_the_training_error_drops_then_rejoins_the_schedule(tmp_path: Path) -> None:
    """He et al. (2015): lr 0.01 until the training error is below a threshold, then back to the step schedule."""
    torch.set_num_threads(1)
    never = registry.get("resnet").resolve({**TINY, "warmup_lr": 0.01, "warmup_until_error": 1e-9})
    ctx = LocalContext(checkpoint_root=str(tmp_path / "never"))
    _run(never, ctx)
    assert [r["lr"] for r in ctx.results] == pytest.approx([0.01] * 4)  # the error never gets below 1e-9

    at_once = registry.get("resnet").resolve({**TINY, "warmup_lr": 0.01, "warmup_until_error": 1.0})
    ctx = LocalContext(checkpoint_root=str(tmp_path / "once"))
    _run(at_once, ctx)
    assert ctx.results[0]["train_error"] < 1.0
    # One warm-up epoch, then the schedule as if there had been none (milestones at epochs 2 and 3 still apply).
    assert [r["lr"] for r in ctx.results] == pytest.approx([0.01, 0.1, 0.01, 0.001])
    with pytest.raises(registry.ConfigError, match="warmup_lr"):
        registry.get("resnet").resolve({**TINY, "warmup_lr": -0.1})


# The warm-up case: a resumed run must remember that its one warm-up epoch is over (its state is in the checkpoint).
@pytest.mark.parametrize("extra", [{}, {"warmup_lr": 0.05, "warmup_until_error": 1.0}], ids=["plain", "warmup"])
def test_resume_continues_exactly_where_it_stopped(tmp_path: Path, extra: dict) -> None:
    """Stopping after 2 epochs and resuming gives bit-identical weights to one uninterrupted run."""
    torch.set_num_threads(1)
    config = registry.get("resnet").resolve({**TINY, **extra})
    straight = _run(config, LocalContext(checkpoint_root=str(tmp_path / "a")))

    # The first half stops after two reports: a context that raises after its second checkpoint, like a crash.
    class SimulatedCrashError(Exception):
        pass

    class StopAfterTwo(LocalContext):
        def report(self, metrics, checkpoint_dir=None):  # noqa: ANN001
            super().report(metrics, checkpoint_dir)
            if len(self.results) == 2:
                raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        _run(config, StopAfterTwo(checkpoint_root=str(tmp_path / "b")))
    resumed_ctx = LocalContext(checkpoint_root=str(tmp_path / "b"))
    resumed = _run(config, resumed_ctx)
    assert [r["epoch"] for r in resumed_ctx.results] == [3, 4]  # no epoch is trained twice
    assert parameter_digest(resumed) == parameter_digest(straight)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*state.pt"):
        load_weights(str(tmp_path), {"model": build_resnet(depth=8)})
    with pytest.raises(CheckpointError, match="no state.pt"):
        load_weights(str(tmp_path / "missing"), {"model": build_resnet(depth=8)})
    torch.save({"models": {"model": build_resnet(depth=20).state_dict()}}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="does not fit model 'model'"):
        load_weights(str(tmp_path), {"model": build_resnet(depth=8)})


def test_parameter_digest_sees_a_single_changed_weight() -> None:
    model = build_resnet(depth=8)
    before = parameter_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert parameter_digest(model) != before
