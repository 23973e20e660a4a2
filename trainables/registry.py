"""The trainable registry: one decorator registers a method under a name with its default config and validator.

Like timm's model registry: a method module says ``@register("resnet", defaults=..., validate=...)`` above its train
function, and everything else (the sweep CLI, the runner, tests) reaches it with ``get("resnet")``. The orchestrator
never imports a method module by name; :func:`get` imports every module of this package once, which runs the
decorators.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.context import Context

TrainFn = Callable[[dict[str, Any], "Context"], None]
Validator = Callable[[dict[str, Any]], None]
# A trial's resource bundles for a config (first bundle: the trial process); e.g. an RL trial's env runners.
Placement = Callable[[dict[str, Any]], list[dict[str, float]]]


class ConfigError(ValueError):
    """A user's config is wrong (unknown key, bad type, value out of range). The message is one readable line."""


@dataclass(frozen=True)
class TrainableSpec:
    """A registered trainable: its train function, its full default config, and how to check a config."""

    name: str
    train: TrainFn
    defaults: Mapping[str, Any]
    validators: tuple[Validator, ...] = ()
    description: str = ""
    placement: Placement | None = None
    tools: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge ``overrides`` over the defaults and validate the result; raises :class:`ConfigError`."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"trainable '{self.name}' has no config key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(self.defaults))}"
            )
        config = {**self.defaults, **{k: _coerce(self.name, k, v, self.defaults[k]) for k, v in overrides.items()}}
        for validate in self.validators:
            validate(config)
        return config


_REGISTRY: dict[str, TrainableSpec] = {}
_discovered = False


def register(
    name: str,
    *,
    defaults: Mapping[str, Any],
    validate: Validator | tuple[Validator, ...] = (),
    description: str | None = None,
    placement: Placement | None = None,
    tools: Mapping[str, Callable[..., Any]] | None = None,
) -> Callable[[TrainFn], TrainFn]:
    """Register ``fn(config, ctx)`` as trainable ``name``; ``defaults`` lists every key a config may set.

    ``placement(config)`` gives the trial's resource bundles when it needs more than its own process (RLlib env
    runners); ``tools`` are the method's command-line helpers (e.g. ``play``, ``record``), found with :func:`tool`.
    """
    validators = validate if isinstance(validate, tuple) else (validate,)

    def decorator(fn: TrainFn) -> TrainFn:
        if name in _REGISTRY and _REGISTRY[name].train is not fn:
            raise ValueError(f"trainable '{name}' is registered twice")
        first_doc_line = next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = TrainableSpec(
            name=name,
            train=fn,
            defaults=dict(defaults),
            validators=validators,
            description=description if description is not None else first_doc_line,
            placement=placement,
            tools=dict(tools or {}),
        )
        return fn

    return decorator


def _discover() -> None:
    """Import every module of the ``trainables`` package once so that their ``@register`` decorators run."""
    global _discovered
    if _discovered:
        return
    import trainables

    # Sub-packages too (trainables.rl.dqn); a module whose name starts with "_" is private.
    for module in pkgutil.walk_packages(trainables.__path__, prefix="trainables."):
        if not any(part.startswith("_") for part in module.name.split(".")) and module.name != "trainables.registry":
            importlib.import_module(module.name)
    _discovered = True


def get(name: str) -> TrainableSpec:
    """The trainable registered as ``name``; :class:`ConfigError` listing the known names otherwise."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown trainable '{name}'; registered: {', '.join(names()) or '(none)'}") from None


def tool(name: str) -> Callable[..., Any]:
    """The command-line helper ``name`` some trainable registered (e.g. ``record``); ConfigError if none did."""
    _discover()
    for spec in _REGISTRY.values():
        if name in spec.tools:
            return spec.tools[name]
    raise ConfigError(f"no trainable provides the tool '{name}'")


def names() -> list[str]:
    """All registered trainable names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def _coerce(trainable: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the default's type; ints are accepted where floats are expected.

    A default of ``None`` accepts anything (e.g. an optional path), lists/tuples accept lists or tuples.
    """
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"trainable '{trainable}': {key}={value!r} should be a {type(default).__name__} (default {default!r})"
    )


# ---- small validator helpers shared by the methods -------------------------------------------------------------


def check_range(config: Mapping[str, Any], key: str, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``low <= config[key] <= high`` (``<`` on an open end)."""
    value = config[key]
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range: must be in {interval}")


def check_choice(config: Mapping[str, Any], key: str, choices: tuple[Any, ...] | list[Any]) -> None:
    """Raise :class:`ConfigError` unless ``config[key]`` is one of ``choices``."""
    if config[key] not in choices:
        raise ConfigError(f"{key}={config[key]!r} is not one of {', '.join(map(repr, choices))}")
