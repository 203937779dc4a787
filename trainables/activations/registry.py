"""The name → factory registry behind ``create_act`` (modelled on timm's ``create_act``)."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_ACTS: dict[str, Callable[..., nn.Module]] = {}


def register_act(name: str):
    """Register ``factory(channels=None, inplace=False, **kwargs) -> nn.Module`` under ``name``."""

    def deco(factory):
        if name in _ACTS:
            raise ValueError(f"activation {name!r} is registered twice")
        _ACTS[name] = factory
        return factory

    return deco


def list_acts() -> list[str]:
    return sorted(_ACTS)


def is_registered_act(name: str) -> bool:
    return name in _ACTS


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
