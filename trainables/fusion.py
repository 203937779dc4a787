"""Conv–BatchNorm folding for deploy forms (LSLU's depthwise conv, VanillaNet's convs)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` such that ``conv(x) == bn(conv_unfolded(x))`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_bias = bn.bias - bn.running_mean * scale
    if bias is not None:
        folded_bias = folded_bias + bias * scale
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), folded_bias


@torch.no_grad()
def fold_own_bn_(module: nn.Module) -> None:
    """Deploy form of a depthwise-conv-then-BN activation (LSLU, VanillaNet's series activation), in place:
    ``module.bn`` is folded into ``module.weight``, its shift becomes ``module.bias`` and ``bn`` an Identity."""
    weight, bias = fold_bn(module.weight, module.bias, module.bn)
    module.weight.copy_(weight)
    module.bias = nn.Parameter(bias)
    module.bn = nn.Identity()


@torch.no_grad()
def merge_1x1(outer_w: torch.Tensor, outer_b: torch.Tensor, inner_w: torch.Tensor, inner_b: torch.Tensor):
    """One conv equal to ``outer(inner(x))`` when ``outer`` is a 1×1 conv and nothing nonlinear lies between.

    ``inner`` may have any kernel; the result has its kernel: W = outer ∘ inner, b = outer_b + outer_w · inner_b.
    """
    outer = outer_w.flatten(1)  # (out, mid)
    weight = torch.einsum("om,mihw->oihw", outer, inner_w)
    return weight, outer_b + outer @ inner_b
