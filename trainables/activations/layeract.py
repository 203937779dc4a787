"""LayerAct, layer-level activation (papers/004, eq. 6): LA-SiLU and LA-HardSiLU.

    a_i = y_i · s(n_i),   n_i = (y_i − μ_y) / sqrt(σ_y² + α)

μ_y and σ_y² are the mean and variance of one sample over all its non-batch elements (C·H·W for an
image). The variance is the biased one (divide by d): the paper defines σ_y that way (its eq. 5,
σ_y = sqrt(1/d Σ (y_i − μ_y)²)) and its backward pass uses ∂σ²/∂y_i = 2(y_i − μ)/d. Gradients flow
through μ and σ² as in that backward pass. No parameters, no running statistics: train and eval agree.
"""

from __future__ import annotations

from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations.registry import register_act

SCALES = {
    "sigmoid": torch.sigmoid,  # LA-SiLU
    "hardsigmoid": F.hardsigmoid,  # LA-HardSiLU: clip(n/6 + 1/2, 0, 1)
}


class LayerAct(nn.Module):
    def __init__(self, scale: str = "sigmoid", alpha: float = 1e-5):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"LayerAct scale {scale!r} is not one of {', '.join(SCALES)}")
        if not isinstance(alpha, Real) or isinstance(alpha, bool) or not alpha > 0:
            raise ValueError(
                f"LayerAct alpha must be a number > 0 (1e-5 for CIFAR, 0.1 for ImageNet in papers/004), got {alpha!r}"
            )
        self.scale, self.alpha = scale, float(alpha)
        self._s = SCALES[scale]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 2:
            raise ValueError(f"LayerAct needs a batch of samples (N, ...), got shape {tuple(y.shape)}")
        dims = tuple(range(1, y.dim()))
        mean = y.mean(dim=dims, keepdim=True)
        var = y.var(dim=dims, keepdim=True, unbiased=False)
        return y * self._s((y - mean) / torch.sqrt(var + self.alpha))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, alpha={self.alpha:g}"


@register_act("la_silu", builds=LayerAct, config={"alpha": "la_alpha"})
def la_silu(channels=None, inplace=False, alpha: float = 1e-5):
    return LayerAct("sigmoid", alpha=alpha)


@register_act("la_hardsilu", builds=LayerAct, config={"alpha": "la_alpha"})
def la_hardsilu(channels=None, inplace=False, alpha: float = 1e-5):
    return LayerAct("hardsigmoid", alpha=alpha)
