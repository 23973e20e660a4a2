"""The cluster path, for real, on this machine (issue 18): several Ray nodes on loopback, the sweep and NAS CLIs joining
them with ``--address``, an MLflow server on the "head" that only the driver talks to, shared storage (a folder
standing in for NFS, and ``s3://`` on a local S3 server), a worker node lost mid-trial, and the autoscaler (Ray's fake
multi-node provider with cluster.yaml's node types) adding GPU workers, replacing a preempted one and removing idle
ones. See tests/multinode.py for how the nodes are started and killed, and docs/cluster.md for the same on AWS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import services
from tests.conftest import REPO
from tests.multinode import LoopbackCluster, loopback_cluster

pytestmark = pytest.mark.slow

# Trials ask for half a (logical) GPU: two share each worker's GPU. Resnet-8 for 2 tiny epochs: ~20 s a trial here.
TINY_RESNET = "config: {epochs: 2, depth: 8, limit_train_batches: 2, batch_size: 32}\n"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with services.s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[LoopbackCluster]:
    """A CPU head with the driver resource (as cluster.yaml's) and two workers with one logical GPU each. Every node,
    and every CLI started with :func:`cli_env`, reaches the S3 server through the standard AWS variables."""
    env = {"PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": s3_endpoint, **services.S3_KEYS}
    with loopback_cluster(env) as nodes:
        nodes.start_head(num_cpus=1, resources={"driver": 1})
        nodes.add_worker(num_cpus=2, num_gpus=1)
        nodes.add_worker(num_cpus=2, num_gpus=1)
        assert len(worker_ids(nodes)) == 2, nodes.logs()
        yield nodes


def cli_env(cluster: LoopbackCluster) -> dict[str, str]:
    """A user's shell on the head: the cluster's token and S3 settings, no inherited tracking URI."""
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def start_cli(cluster: LoopbackCluster, args: list[str], cwd: Path, gated: bool = False) -> subprocess.Popen:
    prefix = ["-m", "tests.gated"] if gated else []
    module = [] if gated else ["-m"]
    return subprocess.Popen([sys.executable, *prefix, *module, *args], cwd=cwd, env=cli_env(cluster),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """The CLI's output once it exits 0; a bound on a hang (a trial waiting for a node that never comes), not a
    timing assumption: the CLIs here finish in under a minute."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the CLI did not finish within {timeout:g} s\n{out[-2000:]}\n{err[-3000:]}")
    assert process.returncode == 0, f"exit {process.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return out


def child_runs(uri: str, experiment: str) -> tuple[object, list]:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def worker_ids(cluster: LoopbackCluster) -> set[str]:
    return {n["node_id"] for n in cluster.alive_nodes() if n["resources"].get("GPU")}


def test_a_sweep_spreads_over_the_workers_packs_half_gpus_and_only_the_driver_writes_mlflow(
        cluster: LoopbackCluster, tmp_path: Path) -> None:
    """Four trials at half a GPU each on two 1-GPU workers: all run at once, two per worker (packed on its GPU), none
    on the CPU head. MLflow is a server on the head behind a proxy that notes every client's pid: only the driver's.
    The storage is a folder every node reaches (NFS on a real cluster): checkpoints and Tune's state land there."""
    space = tmp_path / "seeds.yaml"
    space.write_text(f"trainable: resnet\n{TINY_RESNET}space:\n  seed: {{grid: [0, 1, 2, 3]}}\n")
    port = services.free_port()
    server = services.start_mlflow_server(tmp_path, port)
    proxy = services.PidRecordingProxy(port)
    uri = f"http://127.0.0.1:{proxy.port}"
    nfs = tmp_path / "nfs"
    try:
        driver = start_cli(cluster, ["orchestrator.sweep", str(space), "--address", cluster.address,
                                     "--gpus-per-trial", "0.5", "--storage", str(nfs), "--tracking-uri", uri], tmp_path)
        finish(driver)
        assert proxy.client_pids == {driver.pid} and proxy.unknown_peers == 0, (proxy.client_pids, driver.pid)
        parent, children = child_runs(f"http://127.0.0.1:{port}", "seeds")
    finally:
        proxy.close()
        services.stop(server)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    nodes = {r.data.tags["ray.node_id"] for r in children}
    assert nodes == worker_ids(cluster), "every trial on a GPU worker, and both workers used"
    for node in nodes:  # two trials of half a GPU ran at once on this 1-GPU node
        spans = sorted((r.info.start_time, r.info.end_time) for r in children if r.data.tags["ray.node_id"] == node)
        assert len(spans) == 2 and spans[1][0] < spans[0][1], spans
    experiment = nfs / parent.info.run_name
    assert (experiment / "sweep.json").is_file() and list(experiment.glob("experiment_state-*.json"))
    assert len(list(experiment.glob("resnet_*/checkpoint_000001"))) == 4


def test_an_architecture_search_runs_on_the_cluster(cluster: LoopbackCluster, tmp_path: Path) -> None:
    args = ["orchestrator.nas", "--trials", "3", "--blocks", "1", "--target-ms", "0.5", "--max-concurrent", "2",
            "--address", cluster.address, "--gpus-per-trial", "0.5", "--set", "limit_train_batches=2",
            "batch_size=32", "latency_repeats=5", "latency_warmup=1"]
    out = finish(start_cli(cluster, args, tmp_path))
    assert "Pareto front" in out
    parent, children = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "nas")
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["ray.node_id"] for r in children} <= worker_ids(cluster)


def _wait_for_held_checkpoint(cluster: LoopbackCluster, uri: str, experiment: str, process: subprocess.Popen,
                              x: str) -> object:
    def held() -> object:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            _, children = child_runs(uri, experiment)
        except Exception:  # noqa: BLE001 (the store or the experiment does not exist yet)
            return None
        # .get: the callback creates a trial's run before it logs the run's params (a poll can fall between)
        return next((r for r in children if r.data.params.get("x") == x and "checkpoint" in r.data.tags), None)

    return cluster.wait_for(held, "the held trial's first checkpoint", timeout=300)


def test_a_worker_node_lost_mid_trial_continues_from_its_s3_checkpoint_on_another_node(
        cluster: LoopbackCluster, tmp_path: Path, s3_endpoint: str) -> None:
    """The node of a held trial is killed (all its processes at once, like a lost machine). Tune retries the trial on
    the other worker from its epoch-1 checkpoint, which that node reads from S3: one MLflow run, FINISHED, each epoch
    once, and both nodes in its history. Runs last in this module: it takes a worker away, and adds one back."""
    if len(worker_ids(cluster)) < 2:  # a node lost before this test (none should be) would leave no survivor
        cluster.add_worker(num_cpus=2, num_gpus=1)
    gate, uri = tmp_path / "gate", f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "lost.yaml"
    space.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 0, gate: '{gate}'}}\n"
                     "space:\n  x: {grid: [0]}\n")
    driver = start_cli(cluster, ["orchestrator.sweep", str(space), "--address", cluster.address, "--gpus-per-trial",
                                 "1", "--storage", "s3://bucket/sweeps"], tmp_path, gated=True)
    held = _wait_for_held_checkpoint(cluster, uri, "lost", driver, "0")
    lost = held.data.tags["ray.node_id"]
    cluster.kill_node(lost)
    gate.write_text("open")
    finish(driver)
    parent, children = child_runs(uri, "lost")
    assert parent.info.status == "FINISHED" and len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED"
    history = run.data.tags["ray.nodes"].split(",")
    assert history[0] == lost and len(history) == 2 and history[1] in worker_ids(cluster), history
    epochs = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "epoch")
    assert [(m.step, m.value) for m in epochs] == [(1, 1.0), (2, 2.0)]
    s3 = services.s3_client(s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bucket", Prefix=f"sweeps/{parent.info.run_name}/")["Contents"]]
    assert any(k.endswith("/sweep.json") for k in keys) and any("experiment_state" in k for k in keys)
    assert any("/checkpoint_000001/" in k for k in keys), "the retried trial's epoch-2 checkpoint was written to S3"
    cluster.add_worker(num_cpus=2, num_gpus=1)


def test_the_autoscaler_adds_gpu_workers_replaces_a_preempted_one_and_removes_idle_ones(tmp_path: Path) -> None:
    """cluster.yaml's node types on Ray's fake multi-node provider (tests/data/fake_cluster.yaml, at most one GPU
    worker): a sweep of two 1-GPU trials starts with no GPU node; the autoscaler launches one. The second trial is held
    and its node killed, as a spot reclaim: the autoscaler launches a replacement, the trial continues there from its
    checkpoint, and once the sweep is done the idle worker is removed."""
    gate, uri = tmp_path / "gate", f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "spot.yaml"
    space.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 1, gate: '{gate}'}}\n"
                     "space:\n  x: {grid: [0, 1]}\n")
    # The autoscaler's loop every second instead of five (only the test's waits get shorter).
    with loopback_cluster({"PYTHONPATH": str(REPO), "AUTOSCALER_UPDATE_INTERVAL_S": "1"}) as fake:
        config = yaml.safe_load((REPO / "tests" / "data" / "fake_cluster.yaml").read_text())
        config["provider"]["gcs_address"] = fake.address
        config_path = tmp_path / "fake_cluster.yaml"
        config_path.write_text(yaml.safe_dump(config))
        head = config["available_node_types"][config["head_node_type"]]["resources"]
        fake.start_head(num_cpus=head["CPU"], resources={k: v for k, v in head.items() if k not in ("CPU", "GPU")},
                        autoscaling_config=config_path, env={"RAY_FAKE_CLUSTER": "1"})
        (head_node,) = fake.wait_for(fake.alive_nodes, "the head", timeout=60)
        driver = start_cli(fake, ["orchestrator.sweep", str(space), "--address", fake.address, "--gpus-per-trial", "1",
                                  "--storage", str(tmp_path / "nfs")], tmp_path, gated=True)
        held = _wait_for_held_checkpoint(fake, uri, "spot", driver, "1")
        preempted = held.data.tags["ray.node_id"]
        assert preempted != head_node["node_id"]
        fake.kill_node(preempted)
        gate.write_text("open")
        finish(driver)
        _, children = child_runs(uri, "spot")
        history = {r.data.params["x"]: r.data.tags["ray.nodes"].split(",") for r in children}
        assert all(r.info.status == "FINISHED" for r in children) and len(children) == 2
        assert history["0"] == [preempted], "the first trial ran on the first GPU worker the autoscaler launched"
        assert history["1"][0] == preempted and len(history["1"]) == 2
        replacement = history["1"][1]
        assert replacement not in (preempted, head_node["node_id"]), "continued on a new worker"
        for run in children:
            epochs = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "epoch")
            assert [(m.step, m.value) for m in epochs] == [(1, 1.0), (2, 2.0)]
        # The idle timeout (6 s in the test config) removes the replacement once the sweep is over.
        fake.wait_for(lambda: [n["node_id"] for n in fake.alive_nodes()] == [head_node["node_id"]],
                      "the idle GPU worker to be removed", timeout=180)
        events = (Path(_session_logs(fake)) / "monitor.log").read_text()
        assert events.count("Launching 1 nodes, type ray.worker.gpu_spot") >= 2, "a launch per GPU worker"


def _session_logs(cluster: LoopbackCluster) -> str:
    return os.path.join(cluster.root, "ray", "session_latest", "logs")

