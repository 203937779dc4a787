"""The name → factory registry behind ``create_act`` (modelled on timm's ``create_act``).

Each registration also records the module class(es) its factory builds, so the insertion engine can
ask the registry what counts as an activation site (``act_module_types``) instead of keeping its own list.
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_ACTS: dict[str, Callable[..., nn.Module]] = {}
_BUILDS: dict[str, tuple[type, ...]] = {}


def register_act(name: str, builds: type | tuple[type, ...]):
    """Register ``factory(channels=None, inplace=False, **kwargs) -> nn.Module`` under ``name``.

    ``builds``: the module class (or classes) the factory returns; every module of these classes is a site.
    """
    classes = builds if isinstance(builds, tuple) else (builds,)
    if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise ValueError(f"activation {name!r}: builds must be nn.Module classes, got {builds!r}")

    def deco(factory):
        if name in _ACTS:
            raise ValueError(f"activation {name!r} is registered twice")
        _ACTS[name], _BUILDS[name] = factory, classes
        return factory

    return deco


def list_acts() -> list[str]:
    return sorted(_ACTS)


def is_registered_act(name: str) -> bool:
    return name in _ACTS


def act_module_types() -> tuple[type, ...]:
    """Every module class a registered activation builds (no duplicates, registration order)."""
    return tuple(dict.fromkeys(c for classes in _BUILDS.values() for c in classes))


def create_act(name: str, channels: int | None = None, inplace: bool = False, **kwargs) -> nn.Module:
    """Build the activation ``name``. ``channels`` and ``inplace`` are accepted by every activation."""
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(list_acts())}")
    factory = _ACTS[name]
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("channels", "inplace")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none besides channels and inplace"
        raise ValueError(f"activation {name!r} got unknown argument(s) {', '.join(unknown)}; valid arguments: {valid}")
    return factory(channels=channels, inplace=inplace, **kwargs)
