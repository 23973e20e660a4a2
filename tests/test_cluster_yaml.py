"""Offline checks of the Ray cluster-launcher config (cluster.yaml).

Ray validates cluster configs against its own JSON schema (ray-schema.json)
without touching the cloud: ``prepare_config`` only merges the provider's
bundled ``defaults.yaml`` (a file read) and ``validate_config`` runs
``jsonschema`` plus a few consistency checks. AWS is contacted only later, by
the provider's ``bootstrap_config`` during ``ray up``, which these tests never
call. ``test_validation_is_offline`` enforces that by disabling sockets.

The docs test parses every ``ray ...`` command line in docs/cluster.md with the
installed Ray CLI (click parsing only, nothing runs), so the documented flags
match this Ray version.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
CLUSTER_DOC = REPO_ROOT / "docs" / "cluster.md"

Config = dict[str, Any]


def _load() -> Config:
    with CLUSTER_YAML.open() as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict)
    return config


def _prepared(config: Config) -> Config:
    # Defensive copy: the module-scoped fixtures are shared between tests.
    return prepare_config(copy.deepcopy(config))


@pytest.fixture(scope="module")
def raw() -> Config:
    return _load()


@pytest.fixture(scope="module")
def prepared(raw: Config) -> Config:
    config = _prepared(raw)
    validate_config(config)
    return config


def _head(config: Config) -> Config:
    return config["available_node_types"][config["head_node_type"]]


def _gpu_worker_types(config: Config) -> dict[str, Config]:
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"] and node_type.get("resources", {}).get("GPU", 0) >= 1
    }


# --------------------------------------------------------------------- schema


def test_cluster_yaml_validates_against_ray_schema(raw: Config) -> None:
    validate_config(_prepared(raw))


def test_validation_is_offline(raw: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    validate_config(_prepared(raw))


def _set_gpu_fraction(c: Config) -> None:
    next(iter(_gpu_worker_types(c).values()))["resources"]["GPU"] = 0.5


def _add_unknown_top_level_key(c: Config) -> None:
    c["gpu_workers"] = 4


def _add_unknown_node_type_key(c: Config) -> None:
    next(iter(_gpu_worker_types(c).values()))["spot"] = True


def _string_driver_resource(c: Config) -> None:
    _head(c)["resources"]["driver"] = "1"


def _unknown_head_type(c: Config) -> None:
    c["head_node_type"] = "no.such.type"


def _min_workers_above_global_max(c: Config) -> None:
    next(iter(_gpu_worker_types(c).values()))["min_workers"] = c["max_workers"] + 1


_BROKEN_COPIES = [
    (_set_gpu_fraction, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
    (_add_unknown_top_level_key, jsonschema.ValidationError, "'gpu_workers' was unexpected"),
    (_add_unknown_node_type_key, jsonschema.ValidationError, "'spot' was unexpected"),
    (_string_driver_resource, jsonschema.ValidationError, "'1' is not of type 'integer'"),
    (_unknown_head_type, ValueError, "head_node_type"),
    (_min_workers_above_global_max, ValueError, "max_workers"),
]


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [pytest.param(*case, id=case[0].__name__.strip("_")) for case in _BROKEN_COPIES],
)
def test_validator_rejects_broken_copies(
    raw: Config, mutate: Callable[[Config], None], error: type[Exception], message: str
) -> None:
    """The positive test is not vacuous: the same pipeline rejects bad configs."""
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error, match=re.escape(message)):
        validate_config(_prepared(broken))


# ------------------------------------------------------------ node types


def test_every_node_type_declares_integer_cpu_and_gpu(raw: Config) -> None:
    for name, node_type in raw["available_node_types"].items():
        resources = node_type["resources"]
        for key in ("CPU", "GPU"):
            assert isinstance(resources.get(key), int), (name, key, resources)


def test_head_is_cpu_only_and_owns_the_driver_resource(prepared: Config) -> None:
    head = _head(prepared)
    assert head["resources"]["GPU"] == 0
    assert head["resources"]["driver"] == 1
    assert head["max_workers"] == 0
    assert "InstanceMarketOptions" not in head["node_config"], "head must be on-demand"
    for name, node_type in prepared["available_node_types"].items():
        if name != prepared["head_node_type"]:
            assert "driver" not in node_type["resources"], name


def test_gpu_worker_type_is_spot_and_scales_from_zero(prepared: Config) -> None:
    workers = _gpu_worker_types(prepared)
    assert workers, "no worker node type with GPU >= 1"
    spot = {
        name: t
        for name, t in workers.items()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    }
    assert spot, "no spot GPU worker type"
    for name, node_type in spot.items():
        assert node_type["min_workers"] == 0, name
        assert 1 <= node_type["max_workers"] <= prepared["max_workers"], name
        assert node_type["resources"]["CPU"] >= 1, name


def test_nodes_have_an_ami_and_a_large_root_volume(prepared: Config) -> None:
    for name, node_type in prepared["available_node_types"].items():
        node_config = node_type["node_config"]
        assert str(node_config["ImageId"]).startswith("ami-"), name
        sizes = [m["Ebs"]["VolumeSize"] for m in node_config["BlockDeviceMappings"]]
        assert max(sizes) >= 100, name


# -------------------------------------------------------- setup and start


def test_project_is_synced_and_installed(prepared: Config) -> None:
    assert prepared["file_mounts"]["~/project"] == "."
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]  # setup_commands merged in by prepare_config
        assert any(re.search(r"pip install .*torch", c) for c in commands), key
        # The project is installed after torch and Ray; node-specific steps (the head's Ray token) may follow.
        assert "pip install -e ~/project" in commands, key
        assert commands.index("pip install -e ~/project") > max(
            i for i, c in enumerate(commands) if re.search(r"pip install .*(torch|ray\[)", c)), key
        joined = "\n".join(commands)
        assert "+cpu" not in joined and "whl/cpu" not in joined, key


def test_cluster_pins_the_local_ray_and_mlflow(raw: Config) -> None:
    joined = "\n".join(raw["setup_commands"])
    assert re.search(rf"ray\[[^\]]*\]=={re.escape(version('ray'))}\b", joined)
    assert re.search(rf"mlflow=={re.escape(version('mlflow'))}\b", joined)


def test_head_starts_ray_with_driver_resource(raw: Config) -> None:
    starts = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 1
    start = starts[0]
    assert "--head" in start and "--port=6379" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    match = re.search(r"--resources='([^']*)'", start)
    assert match, start
    assert json.loads(match.group(1)) == {"driver": 1}


def test_head_starts_mlflow_server_in_background(raw: Config) -> None:
    commands = raw["head_start_ray_commands"]
    ray_index = next(i for i, c in enumerate(commands) if "ray start" in c)
    mlflow = [(i, c) for i, c in enumerate(commands) if "mlflow server" in c]
    assert len(mlflow) == 1
    index, command = mlflow[0]
    assert index > ray_index
    assert "nohup" in command and re.search(r"&\)?\s*$", command), command
    assert "--host 127.0.0.1" in command and "--port 5000" in command  # tests/test_security.py: why
    assert "--backend-store-uri sqlite:////home/ubuntu/mlflow.db" in command
    assert "~/mlflow.log" in command


def test_workers_join_head_and_run_no_mlflow(raw: Config) -> None:
    commands = raw["worker_start_ray_commands"]
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in commands)
    assert not any("mlflow" in c for c in commands)


# -------------------------------------------------------------------- docs


def _documented_ray_commands() -> list[list[str]]:
    text = CLUSTER_DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            # Other tools' lines (aws ... with multi-line JSON) are not tokenized.
            if line.lstrip().startswith("ray "):
                tokens = shlex.split(line, comments=True)
                # What follows a redirection or a pipe is the shell's, not Ray's CLI.
                cut = next((i for i, t in enumerate(tokens) if t in (">", ">>", "|", "&&", ";")), len(tokens))
                commands.append(tokens[:cut])
    return commands


def test_docs_ray_commands_parse_with_installed_ray_cli() -> None:
    from ray.scripts.scripts import cli

    commands = _documented_ray_commands()
    used = {" ".join(t[:3]) if t[1] == "job" else " ".join(t[:2]) for t in commands}
    assert {"ray up", "ray down", "ray attach", "ray job submit"} <= used
    for tokens in commands:
        command: click.Command = cli
        args = tokens[1:]
        while isinstance(command, click.Group):
            command, args = command.commands[args[0]], args[1:]
        # Raises click.UsageError on an unknown flag or a missing argument.
        command.make_context(" ".join(tokens[:2]), list(args))


# ------------------------------------------------- the autoscaler test's twin

FAKE_CLUSTER_YAML = REPO_ROOT / "tests" / "data" / "fake_cluster.yaml"


def _node_types(config: Config) -> dict[str, tuple[Any, ...]]:
    return {name: (node["resources"], node["min_workers"]) for name, node in config["available_node_types"].items()}


def test_fake_cluster_declares_cluster_yamls_node_types_and_resources(raw: Config) -> None:
    """tests/test_multinode.py drives Ray's autoscaler with tests/data/fake_cluster.yaml; it proves the cluster path
    only while that file's node types are cluster.yaml's: same names, resources and minimum counts, same head type.
    (Only the maximum counts, the idle timeout and the provider differ, sized for one machine.)"""
    fake = yaml.safe_load(FAKE_CLUSTER_YAML.read_text())
    assert _node_types(fake) == _node_types(raw)
    assert fake["head_node_type"] == raw["head_node_type"]


def test_fake_cluster_is_a_valid_autoscaler_config() -> None:
    validate_config(_prepared(yaml.safe_load(FAKE_CLUSTER_YAML.read_text())))
