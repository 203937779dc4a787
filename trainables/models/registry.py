"""``build_model``: a network by name (DESIGN.md §3), resolved in this order:

1. the project's own registry (``register_model``; modelled on timm's model registry);
2. any model timm knows (``timm.list_models()``, a pretrained tag such as ``resnet18.a1_in1k`` included);
3. an import path ``package.module:factory`` (a user's network, or ``torchvision.models:resnet18``).

Every constructor of the registry takes ``num_classes``, ``in_chans``, ``cifar_stem`` (3×3 stride-1 stem, no max-pool,
for 32×32 inputs) and ``width`` (a channel multiplier, where the family has one), plus its own keywords (``act``,
``dropout``, and those it takes from the trial config, declared at registration: ``config``). timm names and import
paths are built by ``external``. ``model_args`` are the constructor's own keywords, passed through.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIG: dict[str, dict[str, str]] = {}  # per model: constructor keyword → trial-config attribute it is taken from
_SOURCES = ("project", "timm", "import")


def register_model(name: str, config: dict[str, str] | None = None):
    """Register a constructor under ``name``; ``config``: the keywords it takes from the trial config, e.g.
    VanillaNet's ``{"act_num": "n"}`` (its series length is LSLU's n).

    A registration runs where its module is imported: one made in a notebook or the driver's script (``__main__``)
    never reaches the Ray workers. Put it in a module the workers import, or name the constructor by import path."""

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
    """The project's own names (timm's are ``timm.list_models()``)."""
    return sorted(_MODELS, key=_natural)


def is_registered_model(name: str) -> bool:
    return name in _MODELS


def registered_in_main(name: str) -> bool:
    """Whether ``name``'s registration ran in ``__main__`` (a notebook, the driver's script): no worker has it."""
    return name in _MODELS and getattr(_MODELS[name], "__module__", "") == "__main__"


def model_source(name: str) -> str:
    """``project``, ``timm`` or ``import``; a ``ValueError`` for a name none of them knows, with the closest names."""
    if name in _MODELS:
        return "project"
    if ":" in name:
        return "import"
    from trainables.models.external import is_timm_model

    if is_timm_model(name):
        return "timm"
    raise ValueError(unknown_model_message(name))


def unknown_model_message(name: str) -> str:
    from trainables.models.external import timm_names

    names = list(dict.fromkeys(list_models() + timm_names()))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown model {name!r}; valid choices: {', '.join(list_models())}, any timm name (`lslu-sweep models "
        f"PATTERN` lists them) or an import path package.module:factory{hint} (a register_model call made in a "
        "notebook or the driver's script reaches no worker: put it in a module they import, or give its "
        "import path)"
    )


def model_arguments(name: str) -> list[str]:
    """The keywords ``name``'s constructor accepts besides num_classes and in_chans (a project model's; timm names and
    import paths take ``model_args`` as their constructors define them, and no ``width``)."""
    if name not in _MODELS:
        return []
    return [p for p in inspect.signature(_MODELS[name]).parameters if p not in ("num_classes", "in_chans")]


def build_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    cifar_stem: bool = False,
    width: float = 1.0,
    pretrained: bool = False,
    pretrained_file: str = "",
    model_args: dict[str, Any] | None = None,
    **kwargs,
) -> nn.Module:
    """The network ``name`` (see the module docstring). ``pretrained``: weights from ``pretrained_file`` or timm's
    local cache, never downloaded. ``model_args``: the constructor's own keywords. ``kwargs``: the common ones
    (``act``, ``dropout``) and, for a project model, those its registration takes from the trial config."""
    from trainables.models import external

    source = model_source(name)
    model_args = dict(model_args or {})
    if source != "project":
        if width != 1.0:
            raise ValueError(f"model {name!r} has no width multiplier; give the constructor's own in model_args")
        act, dropout = kwargs.pop("act", "native"), kwargs.pop("dropout", 0.0)
        if kwargs:
            raise ValueError(
                f"model {name!r} got unknown argument(s) {', '.join(sorted(kwargs))}; "
                "pass the constructor's own in model_args"
            )
        build = external.build_timm if source == "timm" else external.build_imported
        return build(
            name,
            num_classes=num_classes,
            in_chans=in_chans,
            cifar_stem=cifar_stem,
            act=act,
            dropout=dropout,
            pretrained=pretrained,
            pretrained_file=pretrained_file,
            model_args=model_args,
        )
    accepted = model_arguments(name)
    kwargs = {**kwargs, **model_args}
    weights = {"pretrained": pretrained, "pretrained_file": pretrained_file}
    loads_itself = "pretrained" in accepted
    if loads_itself:
        kwargs.update({k: v for k, v in weights.items() if k in accepted})
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(accepted)}"
        )
    if width != 1.0 and "width" not in accepted:
        raise ValueError(f"model {name!r} has no width multiplier; use width=1.0")
    common = {"cifar_stem": cifar_stem} | ({"width": width} if "width" in accepted else {})
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, **common, **kwargs)
    if pretrained and not loads_itself:
        external.load_weights(model, name, pretrained_file)
    return model


def _natural(name: str):
    """vanillanet_5 before vanillanet_10."""
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return (head, int(tail) if tail else -1)
