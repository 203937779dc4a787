"""The name → factory registry behind ``create_act`` (modelled on timm's ``create_act``), and the activation contract.

Each registration records the module class(es) its factory builds, so the insertion engine can ask the registry what
counts as an activation site (``act_module_types``) instead of keeping its own list, and the trial-config fields the
factory takes (``config``), so the loop builds any activation from a trial config without naming it.

The contract (DESIGN.md §2), asked of the module, every part optional:
- ``learnable_state() -> {metric name: value}``: what to report each epoch, e.g. ``{"theta/1": 1.02}``; the trial logs
  it as ``theta/<site path>/1`` (a name without ``/`` as ``<name>/<site path>``), and a value of a series like this one
  (``<family>/<i>``) also as its convergence value at the end (``theta_conv/<site path>/1``, papers/000 §4.2);
- ``on_epoch_start(epoch, epochs) -> bool``: called on every module of the trained model before each epoch (0-based);
  True when it changed the module's state (an EMA copy then restarts from that state);
- ``fuse()``: the deploy form, in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from trainables.imports import import_object


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    builds: tuple[type, ...]
    config: dict[str, str]  # factory keyword → trial-config attribute it is taken from
    inserts: Callable[[dict], bool] | None  # given those keywords: does this activation put anything in?
    check: Callable[[Any], tuple[str, str] | None] | None  # a trial config's values across fields: (key, error) or None


_ACTS: dict[str, _Entry] = {}
_IMPORTED: dict[str, _Entry] = {}  # import paths resolved so far: their classes are sites too
_TRIAL_CONFIG: contextvars.ContextVar[Any] = contextvars.ContextVar("act_trial_config", default=None)


def register_act(
    name: str,
    builds: type | tuple[type, ...],
    config: dict[str, str] | None = None,
    inserts: Callable[[dict], bool] | None = None,
    check: Callable[[Any], tuple[str, str] | None] | None = None,
):
    """Register ``factory(channels=None, inplace=False, **kwargs) -> nn.Module`` under ``name``.

    ``builds``: the module class (or classes) the factory returns; every module of these classes is a site.
    ``config``: which of the factory's keywords come from which trial-config field, e.g. ``{"n": "n"}``.
    ``inserts``: for an activation that some values turn off (LSLU with n = 0 keeps the base activation).
    ``check``: a rule across trial-config fields (PWLU's warm-up must end before training does): ``(key, error)``.
    """
    classes = builds if isinstance(builds, tuple) else (builds,)
    if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise ValueError(f"activation {name!r}: builds must be nn.Module classes, got {builds!r}")

    def deco(factory):
        if name in _ACTS:
            raise ValueError(f"activation {name!r} is registered twice")
        unknown = sorted(set(config or {}) - set(_keywords(factory)))
        if unknown:
            raise ValueError(f"activation {name!r}: config names keyword(s) {', '.join(unknown)} its factory lacks")
        _ACTS[name] = _Entry(factory, classes, dict(config or {}), inserts, check)
        return factory

    return deco


def list_acts() -> list[str]:
    return sorted(_ACTS)


def is_registered_act(name: str) -> bool:
    """A registered name, or an import path ``package.module:Class`` that resolves to an activation."""
    try:
        _entry(name)
    except ValueError:
        return False
    return True


def act_module_types() -> tuple[type, ...]:
    """Every module class a registered activation builds (no duplicates, registration order)."""
    entries = [*_ACTS.values(), *_IMPORTED.values()]
    return tuple(dict.fromkeys(c for entry in entries for c in entry.builds))


def needs_spatial_map(name: str) -> bool:
    """Whether activation ``name`` needs a (B, C, H, W) map (its class says ``needs_spatial_map = True``, as LSLU's
    depthwise conv does): it goes only to sites with a spatial layout."""
    return any(getattr(c, "needs_spatial_map", False) for c in _entry(name).builds)


def config_fields(name: str) -> dict[str, str]:
    """The factory keyword → trial-config attribute table of activation ``name`` (empty for a plain class)."""
    return dict(_entry(name).config)


def config_kwargs(name: str, cfg: Any) -> dict:
    """The keywords activation ``name`` takes from the trial config ``cfg``."""
    return {keyword: getattr(cfg, field) for keyword, field in _entry(name).config.items()}


def inserts(name: str, kwargs: dict) -> bool:
    """Whether activation ``name`` built with ``kwargs`` replaces anything (False: the site keeps what it has)."""
    test = _entry(name).inserts
    return True if test is None else bool(test(kwargs))


def check_config(name: str, cfg: Any) -> tuple[str, str] | None:
    """Activation ``name``'s own rule across the fields of trial config ``cfg``: ``(key, error)``, or None."""
    rule = _entry(name).check
    return rule(cfg) if rule else None


@contextlib.contextmanager
def trial_config(cfg: Any):
    """Inside the block, ``create_act`` takes the keywords it is not given from ``cfg`` (as the registration maps
    them): a model that builds its activations by name builds them as the trial configures them (timm's
    ``set_layer_config`` idea)."""
    token = _TRIAL_CONFIG.set(cfg)
    try:
        yield
    finally:
        _TRIAL_CONFIG.reset(token)


def create_act(name: str, channels: int | None = None, inplace: bool = False, **kwargs) -> nn.Module:
    """Build the activation ``name``. ``channels`` and ``inplace`` are accepted by every activation."""
    cfg = _TRIAL_CONFIG.get()
    if cfg is not None:
        kwargs = {**config_kwargs(name, cfg), **kwargs}
    factory = _entry(name).factory
    accepted = _keywords(factory)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none besides channels and inplace"
        raise ValueError(f"activation {name!r} got unknown argument(s) {', '.join(unknown)}; valid arguments: {valid}")
    return factory(channels=channels, inplace=inplace, **kwargs)


def _keywords(factory: Callable) -> list[str]:
    return [p for p in inspect.signature(factory).parameters if p not in ("channels", "inplace")]


def _entry(name: str) -> _Entry:
    if name in _ACTS:
        return _ACTS[name]
    if ":" not in name:
        raise ValueError(
            f"unknown activation {name!r}; valid choices: {', '.join(list_acts())} "
            "(or an import path package.module:Class)"
        )
    if name not in _IMPORTED:
        _IMPORTED[name] = _imported(name)
    return _IMPORTED[name]


def _imported(path: str) -> _Entry:
    """``package.module:Class``: its registration where its module registered it, else the class itself as factory
    (given ``channels`` where its constructor takes it)."""
    obj = import_object(path, "activation")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"activation {path!r} is {obj!r}, not an nn.Module class")
    for entry in _ACTS.values():
        if entry.builds == (obj,):
            return entry
    takes_channels = "channels" in inspect.signature(obj).parameters

    def factory(channels=None, inplace=False, **kwargs):
        return obj(channels=channels, **kwargs) if takes_channels else obj(**kwargs)

    factory.__signature__ = inspect.signature(obj)
    return _Entry(factory, (obj,), {}, None, None)
