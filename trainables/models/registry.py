"""The name → constructor registry behind ``build_model`` (modelled on timm's model registry).

Every constructor takes ``num_classes``, ``in_chans``, ``cifar_stem`` (3×3 stride-1 stem, no max-pool, for
32×32 inputs) and ``width`` (a channel multiplier, where the family has one), plus its own keywords
(``act``, ``dropout``, and those it takes from the trial config, declared at registration: ``config``).
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIG: dict[str, dict[str, str]] = {}  # per model: constructor keyword → trial-config attribute it is taken from


def register_model(name: str, config: dict[str, str] | None = None):
    """Register a constructor under ``name``; ``config``: the keywords it takes from the trial config, e.g.
    VanillaNet's ``{"act_num": "n"}`` (its series length is LSLU's n)."""
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        unknown = sorted(set(config or {}) - set(inspect.signature(fn).parameters))
        if unknown:
            raise ValueError(f"model {name!r}: config names keyword(s) {', '.join(unknown)} its constructor lacks")
        _MODELS[name], _CONFIG[name] = fn, dict(config or {})
        return fn

    return deco


def model_config_kwargs(name: str, cfg) -> dict:
    """The keywords model ``name`` takes from the trial config ``cfg``."""
    return {keyword: getattr(cfg, field) for keyword, field in _CONFIG.get(name, {}).items()}


def list_models() -> list[str]:
    return sorted(_MODELS, key=_natural)


def is_registered_model(name: str) -> bool:
    return name in _MODELS


def model_arguments(name: str) -> list[str]:
    """The keywords ``name``'s constructor accepts besides num_classes and in_chans."""
    return [p for p in inspect.signature(_MODELS[name]).parameters if p not in ("num_classes", "in_chans")]


def build_model(name: str, num_classes: int, in_chans: int = 3, cifar_stem: bool = False, width: float = 1.0, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(list_models())}")
    accepted = model_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(accepted)}")
    if width != 1.0 and "width" not in accepted:
        raise ValueError(f"model {name!r} has no width multiplier; use width=1.0")
    common = {"cifar_stem": cifar_stem} | ({"width": width} if "width" in accepted else {})
    return _MODELS[name](num_classes=num_classes, in_chans=in_chans, **common, **kwargs)


def _natural(name: str):
    """vanillanet_5 before vanillanet_10."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return (head, int(tail) if tail else -1)
