"""The name → constructor registry behind ``build_model`` (modelled on timm's model registry)."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def is_registered_model(name: str) -> bool:
    return name in _MODELS


def build_model(name: str, num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(list_models())}")
    fn = _MODELS[name]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("num_classes", "in_chans")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(accepted)}")
    return fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
