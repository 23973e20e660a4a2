"""A trial that crashes is retried (--max-failures) from its last epoch checkpoint, into the same MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from orchestrator import sweep
from tests.test_sweep_cli import child_runs
from trainables import registry
from trainables.context import Context


class CrashOnceError(RuntimeError):
    pass


def crash_once(config: dict[str, Any], ctx: Context) -> None:
    """The resnet trainable, but the process dies once right after its first epoch's checkpoint."""
    marker = Path(config["marker"])

    class CrashAfterFirstReport(type(ctx)):  # the same context, with a crash after the first report
        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
            super().report(metrics, checkpoint_dir)
            if not marker.exists():
                marker.write_text("crashed once")
                raise CrashOnceError("simulated node loss after epoch 1")

    ctx.__class__ = CrashAfterFirstReport
    registry.get("resnet").train({k: v for k, v in config.items() if k != "marker"}, ctx)


def test_retried_trial_continues_from_its_checkpoint(tmp_path: Path, ray_address: str, registered) -> None:
    resnet = registry.get("resnet")
    registered("crash_once_resnet", crash_once, defaults={**resnet.defaults, "marker": ""}, metrics=resnet.metrics,
               primary=resnet.primary)
    space = tmp_path / "crash.yaml"
    space.write_text(
        "trainable: crash_once_resnet\nmetric: val_error\n"
        f"config: {{depth: 8, epochs: 3, limit_train_batches: 2, batch_size: 32, marker: '{tmp_path / 'marker'}'}}\n"
    )
    store = tmp_path / "mlflow.db"
    code = sweep.main([str(space), "--max-failures", "1", "--storage", str(tmp_path / "rr"),
                       "--tracking-uri", f"sqlite:///{store}"])
    assert code == 0
    assert (tmp_path / "marker").exists()  # it really crashed once
    parent, children = child_runs(store, "crash")
    assert parent.info.status == "FINISHED" and len(children) == 1 and children[0].info.status == "FINISHED"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    epochs = [(m.step, m.value) for m in client.get_metric_history(children[0].info.run_id, "epoch")]
    assert epochs == [(1, 1.0), (2, 2.0), (3, 3.0)]  # epoch 1 was not trained again after the crash
