"""The task loop: the stored trace (same numbers as the single-model loop, in one process and with two gloo ranks),
a two-model task that is killed and resumes exactly, per-rank RNG across a DDP resume, optimizers and warm-up."""

from __future__ import annotations

import json
import multiprocessing
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests import loop_trace
from tests.loop_tasks import GAN_CONFIG, KillAfter, TinyGan, dropout_worker, fit_gan
from trainables import registry
from trainables.context import LocalContext
from trainables.loop import LOOP_DEFAULTS
from trainables.optim import build_optimizer, build_schedule

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_trace(now: list[dict], stored: list[dict]) -> None:
    if loop_trace.same_platform():
        assert now == stored  # bit for bit
    else:  # another CPU's kernels: the same numbers up to rounding
        for a, b in zip(now, stored, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_resnet_trace_is_unchanged_in_process_and_with_two_gloo_ranks(tmp_path: Path) -> None:
    _assert_trace(loop_trace.run_resnet(LocalContext(checkpoint_root=str(tmp_path / "one"))),
                  loop_trace.expected("in_process"))
    out = tmp_path / "ddp.json"
    mp.spawn(loop_trace.ddp_worker, args=(2, _free_port(), str(out)), nprocs=2)
    _assert_trace(json.loads(out.read_text()), loop_trace.expected("ddp_gloo_2"))


def _kill_after_two(root: str) -> None:
    torch.set_num_threads(1)
    fit_gan(KillAfter(2, root))


def test_two_model_task_killed_after_two_epochs_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    whole = fit_gan(LocalContext(checkpoint_root=str(tmp_path / "whole")))

    root = str(tmp_path / "killed")
    child = multiprocessing.get_context("spawn").Process(target=_kill_after_two, args=(root,))
    child.start()
    child.join(120)
    assert child.exitcode == -9  # SIGKILL after the second checkpoint: no clean shutdown
    resumed_ctx = LocalContext(checkpoint_root=root)
    resumed = fit_gan(resumed_ctx)

    assert [r["epoch"] for r in resumed_ctx.results] == [3, 4]
    assert resumed_ctx.results[-1]["step"] == 4 * TinyGan.steps_per_epoch
    for name in ("generator", "discriminator"):
        for a, b in zip(whole.models[name].state_dict().values(), resumed.models[name].state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)
    for name in ("generator", "discriminator"):  # Adam moments too
        assert str(whole.optimizers[name].state_dict()) == str(resumed.optimizers[name].state_dict())
    assert set(resumed_ctx.results[-1]) >= {"train_d_loss", "train_g_loss", "val_mean_distance", "lr"}


@pytest.mark.slow
def test_after_a_ddp_resume_each_rank_draws_its_own_dropout_masks_as_before(tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    mp.spawn(dropout_worker, args=(2, _free_port(), str(tmp_path / "ckpt_whole"), 2, str(whole)), nprocs=2)
    mp.spawn(dropout_worker, args=(2, _free_port(), str(tmp_path / "ckpt_resumed"), 1, str(resumed)), nprocs=2)
    mp.spawn(dropout_worker, args=(2, _free_port(), str(tmp_path / "ckpt_resumed"), 2, str(resumed)), nprocs=2)
    masks = {rank: json.loads(Path(f"{whole}.{rank}").read_text()) for rank in (0, 1)}
    after_resume = {rank: json.loads(Path(f"{resumed}.{rank}").read_text()) for rank in (0, 1)}
    assert masks[0][1] != masks[1][1]  # ranks draw different masks
    assert after_resume[0] == [masks[0][1]] and after_resume[1] == [masks[1][1]]  # and continue their own streams


def test_optimizers_and_schedules_come_from_the_config() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    config = {**LOOP_DEFAULTS}
    for kind, cls in (("sgd", torch.optim.SGD), ("adagrad", torch.optim.Adagrad), ("rmsprop", torch.optim.RMSprop),
                      ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        assert type(build_optimizer(params, {**config, "optimizer": kind})) is cls
    assert build_optimizer(params, {**config, "d_optimizer": "adam", "d_lr": 0.5}, prefix="d_").defaults["lr"] == 0.5

    def lrs(schedule_kind: str, epochs: int = 5) -> list[float]:
        opt = build_optimizer(params, {**config, "lr": 1.0})
        schedule = build_schedule(opt, {**config, "lr_schedule": schedule_kind, "lr_final": 0.1}, epochs)
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        return out

    assert lrs("step", 4) == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert lrs("linear") == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    assert lrs("cosine") == pytest.approx([1.0, 0.8682, 0.55, 0.2318, 0.1], abs=1e-4)
    assert lrs("constant") == pytest.approx([1.0] * 5)


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "lbfgs"}, "optimizer='lbfgs' is not one of"),
    ({"lr_schedule": "cyclic"}, "lr_schedule='cyclic' is not one of"),
    ({"betas": [0.9, 1.5]}, "betas="),
    ({"warmup_steps": -1}, "warmup_steps=-1 is out of range"),
])
def test_bad_optimizer_config_is_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(registry.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        registry.get("resnet").resolve({"depth": 8, **overrides})


def test_warmup_by_steps_switches_inside_an_epoch(tmp_path: Path) -> None:
    """He et al.'s ~400-iteration warm-up: warmup_lr for exactly warmup_steps optimizer steps, then the schedule."""
    torch.set_num_threads(1)
    seen: list[float] = []

    class Probe(TinyGan):
        manual_optimization = True

        def train_step(self, batch: torch.Tensor, step: int) -> dict:
            seen.append(self.optimizers["generator"].param_groups[0]["lr"])
            return super().train_step(batch, step)

    task = Probe()
    from trainables.loop import fit

    ctx = LocalContext(checkpoint_root=str(tmp_path))
    fit(ctx, {**GAN_CONFIG, "epochs": 2, "warmup_lr": 0.001, "warmup_steps": 8}, task)
    assert seen == pytest.approx([0.001] * 8 + [0.01] * 4)
    assert [r["lr"] for r in ctx.results] == pytest.approx([0.001, 0.001])  # epoch 2 starts inside the warm-up


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
