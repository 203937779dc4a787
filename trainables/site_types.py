"""What counts as an activation site (DESIGN.md §3): the module types a trace of the forward takes as sites, the
ones a model adds (``register_site_type``), the squeeze-excitation gates whose activations are not sites, and the
activation functions a forward may call instead of a module (counted, not replaceable)."""

from __future__ import annotations

import functools
import re
import sys

from torch import nn

from trainables.activations import ChannelsLast, act_module_types


# Module types that count as activation sites: whatever the activation registry builds (so a replaced
# site stays a site), the permuting adapter, plus torch's activations that timm / torchvision models build.
ACTIVATION_TYPES: tuple[type, ...] = act_module_types() + (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
    ChannelsLast,
)  # fmt: skip
_TIMM_LAYERS = "timm.layers.activations_me"  # the later of the two modules timm.layers imports
_TIMM_ACTIVATIONS = ("GELU", "GELUTanh", "QuickGELU", "Swish", "Mish", "HardSwish", "HardMish", "PReLU", "SwishMe",
                     "MishMe", "HardSwishMe", "HardMishMe")  # fmt: skip


@functools.cache
def _timm_activation_types(timm_loaded: bool) -> tuple[type, ...]:
    """timm's own activation modules (ConvNeXt's GELU is timm's class, not ``nn.GELU``; gates are not sites), read
    only once timm is imported: a network can hold them only then, and importing timm (with torchvision, dynamo and
    sympy behind it) would cost every driver and worker seconds that a sweep of the project's own models never needs."""
    if not timm_loaded:
        return ()
    found = (getattr(sys.modules.get(f"timm.layers.{mod}"), n, None) for mod in ("activations", "activations_me")
             for n in _TIMM_ACTIVATIONS)  # fmt: skip
    return tuple(c for c in found if isinstance(c, type))


_EXTRA_SITE_TYPES: list[type] = []  # model-specific activations (e.g. VanillaNet's series activation)
_SE_CLASS = re.compile(r"SqueezeExcit|^SEModule$|^EffectiveSEModule$|^SqueezeExcitation$")
# functions a forward may call in place of an activation module (gates such as sigmoid are not counted)
FUNCTIONAL_ACTS = frozenset(
    {
        "relu",
        "relu6",
        "gelu",
        "silu",
        "hardswish",
        "elu",
        "leaky_relu",
        "mish",
        "selu",
        "celu",
        "prelu",
        "rrelu",
        "softplus",
    }
)


def register_site_type(cls: type) -> type:
    """Make a model-specific activation class a site (its module is replaced like any other activation)."""
    if cls not in _EXTRA_SITE_TYPES:
        _EXTRA_SITE_TYPES.append(cls)
    return cls


def is_site_module(module: nn.Module) -> bool:
    types = (
        *ACTIVATION_TYPES,
        *act_module_types(),
        *_timm_activation_types(_TIMM_LAYERS in sys.modules),
        *_EXTRA_SITE_TYPES,
    )  # imported ones too
    return isinstance(module, types)
