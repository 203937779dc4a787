"""Fixed activations: the baselines every learnable one is compared against."""
from torch import nn

from trainables.activations.registry import register_act


@register_act("relu")
def relu(channels=None, inplace=False):
    return nn.ReLU(inplace=inplace)


@register_act("silu")
def silu(channels=None, inplace=False):
    return nn.SiLU(inplace=inplace)


@register_act("gelu")
def gelu(channels=None, inplace=False):
    return nn.GELU()  # exact (erf) GELU, as LSLU's base uses
