"""Fixed and one-parameter activations: the baselines every learnable one is compared against."""

from __future__ import annotations

from numbers import Real

from torch import nn

from trainables.activations.registry import register_act


@register_act("relu", builds=nn.ReLU)
def relu(channels=None, inplace=False):
    return nn.ReLU(inplace=inplace)


@register_act("silu", builds=nn.SiLU)
def silu(channels=None, inplace=False):
    return nn.SiLU(inplace=inplace)


@register_act("gelu", builds=nn.GELU)
def gelu(channels=None, inplace=False):
    return nn.GELU()  # exact (erf) GELU, as LSLU's base uses


@register_act("leaky_relu", builds=nn.LeakyReLU)
def leaky_relu(channels=None, inplace=False, negative_slope: float = 0.01):
    if not isinstance(negative_slope, Real) or isinstance(negative_slope, bool):
        raise ValueError(f"leaky_relu negative_slope must be a number, got {negative_slope!r}")
    return nn.LeakyReLU(float(negative_slope), inplace=inplace)


class PReLU(nn.PReLU):
    """torch's PReLU (He et al. 2015), marked so its learned slopes get no weight decay."""

    def no_weight_decay(self) -> set[str]:
        return {"weight"}


@register_act("prelu", builds=PReLU)
def prelu(channels=None, inplace=False, init: float = 0.25):
    """One learned negative slope per channel when ``channels`` is given, else one for the layer."""
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        raise ValueError(f"prelu channels must be None or an int >= 1, got {channels!r}")
    if not isinstance(init, Real) or isinstance(init, bool):
        raise ValueError(f"prelu init must be a number, got {init!r}")
    return PReLU(num_parameters=channels or 1, init=float(init))
