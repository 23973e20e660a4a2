"""Registry and search-space grammar: what the sweep CLI validates before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import spaces
from trainables import registry
from trainables.registry import ConfigError


def test_resnet_is_registered_with_loop_and_method_defaults() -> None:
    spec = registry.get("resnet")
    assert "resnet" in registry.names()
    for key in ("depth", "p_L", "sd_schedule", "dropout", "dropout_where", "epochs", "lr", "batch_size", "seed"):
        assert key in spec.defaults
    # The paper's optimizer is the default.
    assert (spec.defaults["lr"], spec.defaults["momentum"], spec.defaults["nesterov"]) == (0.1, 0.9, True)
    assert (spec.defaults["weight_decay"], spec.defaults["batch_size"]) == (1e-4, 128)
    assert spec.defaults["lr_milestones"] == [0.5, 0.75]


def test_unknown_trainable_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="unknown trainable 'nope'.*resnet"):
        registry.get("nope")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"p_L": 1.5}, r"p_L=1.5 is out of range"),
        ({"p_L": -0.1}, r"p_L=-0.1 is out of range"),
        ({"depth": 21}, r"depth"),
        ({"no_such_key": 1}, r"no config key"),
        ({"epochs": "ten"}, r"epochs='ten' should be a int"),
        ({"sd_schedule": "cosine"}, r"sd_schedule='cosine' is not one of"),
        ({"dropout": 1.0}, r"dropout=1.0 is out of range"),
        ({"dataset": "cifar10", "data_dir": "/definitely/not/here"}, r"/definitely/not/here"),
    ],
)
def test_resolve_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.get("resnet").resolve(overrides)


def test_resolve_merges_and_coerces() -> None:
    config = registry.get("resnet").resolve({"p_L": 1, "depth": 20})
    assert config["p_L"] == 1.0 and isinstance(config["p_L"], float)
    assert config["depth"] == 20 and config["epochs"] == registry.get("resnet").defaults["epochs"]


def test_shipped_spaces_parse_and_validate() -> None:
    names = spaces.available_spaces()
    assert {"sd_rates", "dropout_rates"} <= set(names)
    for name in names:
        space = spaces.load_space(name)
        space.validate(registry.get(space.trainable))
    sd = spaces.load_space("sd_rates")
    assert sd.searched == {"p_L": {"grid": [0.2, 0.5, 0.8, 1.0]}, "sd_schedule": {"grid": ["linear", "uniform"]}}
    sd.validate(registry.get("resnet"))
    assert sd.num_trials() == 7 * sd.seeds  # p_L = 1 is one net under both schedules


def test_param_space_uses_tune_primitives_and_seed_repeats() -> None:
    space = spaces.load_space("sd_rates").with_overrides({"p_L": 0.5})
    space.seeds = 3
    base = space.validate(registry.get("resnet"))
    param_space = space.param_space(base)
    assert space.search_alg() is None and space.tune_samples() == 1  # nothing collapsed: Tune expands the grid
    assert param_space["sd_schedule"] == {"grid_search": ["linear", "uniform"]}
    assert param_space["seed"] == {"grid_search": [0, 1, 2]}
    assert param_space["depth"] == 20  # fixed in the file, over the registered default


def test_grid_combinations_that_train_the_same_net_run_once(ray_address: str) -> None:
    """The trainable's canonical form decides: at p_L = 1 the schedule draws nothing, and with dropout 0 its
    placement adds no module. Tune's variant generator then yields each remaining combination once per seed."""
    from ray import tune

    space = spaces.parse_space({"trainable": "resnet", "seeds": 2, "space": {
        "p_L": {"grid": [0.5, 1.0]}, "sd_schedule": {"grid": ["linear", "uniform"]},
        "dropout": {"grid": [0.0, 0.2]}, "dropout_where": {"grid": ["branch", "head"]}}}, name="many", path=Path("x"))
    base = space.validate(registry.get("resnet"))
    # 16 combinations: p_L = 1 halves the schedules, dropout = 0 halves the placements -> 3 x 3 = 9 distinct
    assert space.num_trials() == 9 * 2 and len(space.collapsed) == 7
    assert "p_L=1.0 sd_schedule=uniform dropout=0.0 dropout_where=branch (= p_L=1.0 sd_schedule=linear dropout=0.0 " \
        "dropout_where=branch)" in space.describe_collapsed()
    searcher = space.search_alg()
    searcher.add_configurations([tune.Experiment("many", run=lambda config: None, num_samples=space.tune_samples(),
                                                 config=space.param_space(base))])
    configs = []
    while (trial := searcher.next_trial()) is not None:
        configs.append(tuple(trial.config[k] for k in ("p_L", "sd_schedule", "dropout", "dropout_where", "seed")))
    assert len(configs) == len(set(configs)) == 18
    keys = ("p_L", "sd_schedule", "dropout", "dropout_where", "seed")
    canonical = {json.dumps(registry.get("resnet").canonical_form({**base, **dict(zip(keys, c, strict=True))}),
                            sort_keys=True) for c in configs}
    assert len(canonical) == 18  # no two trials train the same net


def test_set_override_pins_a_searched_key() -> None:
    space = spaces.load_space("sd_rates").with_overrides(spaces.parse_overrides(["p_L=0.5", "epochs=1"]))
    assert "p_L" not in space.searched and space.fixed["p_L"] == 0.5 and space.fixed["epochs"] == 1
    assert space.num_trials() == 2 * space.seeds


def test_grid_value_out_of_range_is_caught_before_running(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainable: resnet\nspace:\n  p_L: {grid: [0.5, 1.5]}\n")
    space = spaces.load_space(str(path))
    with pytest.raises(ConfigError, match=r"p_L=1.5"):
        space.validate(registry.get("resnet"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainable: resnet\nmetric: val_error\nspace:\n  p_L: [0.5\n", "not valid YAML"),
        ("trainable: resnet\nmetric: val_error\nspace:\n  p_L: {gird: [0.5]}\n", "unknown primitive 'gird'"),
        ("trainable: resnet\nmetric: val_error\nspace:\n  lr: {uniform: [1, 0.1]}\n", "low < high"),
        ("trainable: resnet\nmetric: val_error\nmode: best\n", "mode must be"),
        ("metric: val_error\n", "'trainable' must be given"),
        ("trainable: resnet\nmetric: val_error\nsamplez: 3\n", "unknown top-level key"),
        ("trainable: resnet\nmetric: val_error\nscheduler: hyperband\n", "scheduler must be one of"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_malformed_space_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        spaces.load_space(str(path))


def test_parse_overrides_types_values() -> None:
    assert spaces.parse_overrides(["a=1", "b=0.5", "c=true", "d=[0.5, 0.75]", "e=linear"]) == {
        "a": 1, "b": 0.5, "c": True, "d": [0.5, 0.75], "e": "linear"
    }
    with pytest.raises(ConfigError, match="key=value"):
        spaces.parse_overrides(["epochs"])


def test_asha_scheduler_from_space_or_flag() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.sweep import make_scheduler

    space = spaces.load_space("sd_rates")
    base = space.validate(registry.get("resnet"))
    assert make_scheduler(space, base) is None
    space.scheduler = spaces.parse_scheduler({"type": "asha", "grace_period": 1, "reduction_factor": 3})
    scheduler = make_scheduler(space, base)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._max_t == base["epochs"] and scheduler._reduction_factor == 3


def test_get_imports_only_the_trainables_module() -> None:
    """Lazy discovery: resnet's module and what it imports, never RLlib or the other methods."""
    code = ("import sys; from trainables import registry; registry.get('resnet'); "
            "print(sorted(m for m in sys.modules if m.startswith(('ray', 'trainables.rl', 'trainables.swapout'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


def test_the_table_of_modules_matches_what_the_modules_register() -> None:
    """Every shipped trainable is in the name -> module table, under the module that registers it; every tool too."""
    registry.discover_all()
    registered = {name: spec for name, spec in registry._REGISTRY.items() if name in registry.TRAINABLE_MODULES}
    assert set(registered) == set(registry.TRAINABLE_MODULES)
    for name, spec in registered.items():
        assert spec.train.__module__.startswith(registry.TRAINABLE_MODULES[name]), name
    for tool, module in registry.TOOL_MODULES.items():
        assert any(tool in spec.tools and spec.train.__module__.startswith(module) for spec in registered.values())


def test_every_shipped_trainable_declares_what_the_orchestrator_reads() -> None:
    for name in registry.TRAINABLE_MODULES:
        spec = registry.get(name)
        assert spec.primary in spec.metrics and not spec.primary.startswith("test_"), name
        assert spec.budget[0] in spec.defaults, name


def test_declarations_are_checked_and_test_trainables_come_and_go(registered) -> None:
    class BadInputError(Exception):
        pass

    spec = registered("declared", lambda config, ctx: None, defaults={"steps": 10, "seed": 0},
                      metrics={"psnr": "max", "val_loss": "min"}, primary="psnr", budget=("steps", "step"),
                      flags={"--steps": "steps"}, user_errors=(BadInputError,))
    assert "declared" in registry.names() and BadInputError in registry.user_error_types()
    assert (spec.mode("psnr"), spec.mode("val_loss")) == ("max", "min")
    with pytest.raises(ConfigError, match=r"declares no metric 'accuracy'; declared: psnr \(max\), val_loss \(min\)"):
        spec.mode("accuracy")
    assert not spec.is_complete({"steps": 10}, {"step": 9}) and spec.is_complete({"steps": 10}, {"step": 10})
    assert not spec.is_complete({"steps": 10}, {"epoch": 10})  # the declared counter, not another one
    for bad, message in (({"primary": "test_psnr"}, "primary metric"), ({"metrics": {"psnr": "up"}}, "'min' or"),
                         ({"budget": ("epochs", "epoch")}, "budget key"), ({"flags": {"--x": "x"}}, "flags name")):
        kwargs = {"defaults": {"steps": 1}, "metrics": {"psnr": "max"}, **bad}
        with pytest.raises(ValueError, match=message):
            registry.register("bad", **kwargs)
    registry.unregister("declared")
    assert "declared" not in registry.names() and BadInputError not in registry.user_error_types()


def test_a_space_takes_its_direction_from_the_declaration(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("trainable: resnet\nspace:\n  p_L: {grid: [0.5, 1.0]}\n")
    space = spaces.load_space(str(path))
    space.validate(registry.get("resnet"))
    assert (space.metric, space.mode) == ("val_error", "min")  # resnet's primary metric and its direction
    path.write_text("trainable: resnet\nmetric: val_accuracy\nmode: min\n")
    with pytest.raises(ConfigError, match="mode min contradicts trainable 'resnet', whose val_accuracy is better "
                                          "when higher"):
        spaces.load_space(str(path)).validate(registry.get("resnet"))
    path.write_text("trainable: resnet\nmetric: accuracy\n")
    with pytest.raises(ConfigError, match="declares no metric 'accuracy'"):
        spaces.load_space(str(path)).validate(registry.get("resnet"))


def test_only_declared_path_keys_are_made_absolute(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Trials run in other working directories: a trainable's declared path keys become absolute on the driver, and
    nothing else does, even a value that happens to name a file in the working directory."""
    from orchestrator.spaces import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "linear").write_text("a file named like a schedule")
    spec = registry.get("resnet")
    assert "data_dir" in spec.paths
    out = absolute_paths({"data_dir": "cifar", "sd_schedule": "linear", "epochs": 2}, spec)
    assert out == {"data_dir": str(tmp_path / "cifar"), "sd_schedule": "linear", "epochs": 2}
