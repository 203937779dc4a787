"""LSLU, the learnable series linear unit (papers/000 eq. 15–17; the forward pass of DESIGN.md §2).

Training form, for x of shape (N, C, H, W):

    y = x
    for i in 1..n:  y = theta[i] * f(y) + omega[i]
    out = bn(depthwise_conv(f(y), weight, padding=n))

``fuse()`` folds ``bn`` into the depthwise conv (weight and bias) and keeps the series, unlike the
authors' deploy path, which drops it.

How it runs (Triton on CUDA, the compiled CPU kernel, the closed-form ReLU series, the one-function training site, or
the plain ops of reference.py) is chosen in dispatch.py, whose docstring is the decision table.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.activations.lslu import dispatch
from trainables.activations.lslu.reference import BASES
from trainables.activations.registry import register_act
from trainables.fusion import fold_own_bn_

GRANULARITIES = ("layer", "channel")


class LSLU(nn.Module):
    needs_spatial_map = True  # its depthwise conv runs over a (B, C, H, W) map (insertion eligibility)

    def __init__(
        self, channels: int, n: int = 3, base: str = "relu", granularity: str = "layer", learnable: bool = True
    ):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"lslu needs channels >= 1 (the site's channel count), got {channels!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"lslu needs n >= 1 (n = 0 means: keep the base activation), got {n!r}")
        if base not in BASES:
            raise ValueError(f"lslu base {base!r} is not one of {', '.join(BASES)}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"lslu granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
        self.channels, self.n, self.base, self.granularity = channels, n, base, granularity
        shape = (n,) if granularity == "layer" else (n, channels)
        # learnable=False freezes theta=1, omega=0: VanillaNet's own series activation.
        self.theta = nn.Parameter(torch.ones(shape), requires_grad=learnable)
        self.omega = nn.Parameter(torch.zeros(shape), requires_grad=learnable)
        self.weight = nn.Parameter(torch.empty(channels, 1, 2 * n + 1, 2 * n + 1))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias: nn.Parameter | None = None  # set by fuse()
        self.bn: nn.Module = nn.BatchNorm2d(channels, eps=1e-6)
        self._series_memo: dict = {}  # the closed-form series' coefficients while θ, ω are unchanged (closed_form.py)
        self._cpu_memo: dict = {}  # the CPU inference kernel's operands while the weights are unchanged (cpu_kernel.py)

    def no_weight_decay(self) -> set[str]:
        """θ and ω are activation shape parameters, not weights: decaying them would pull LSLU towards 0 (timm
        convention)."""
        return {"theta", "omega"}

    def learnable_state(self) -> dict[str, float]:
        """θ_i and ω_i (1-based, as in papers/000) as ``theta/<i>``, ``omega/<i>``; channel means for channel
        granularity."""
        return {
            f"{name}/{i}": v
            for name in ("theta", "omega")
            for i, v in enumerate(_channel_means(getattr(self, name)), 1)
        }

    @property
    def fused(self) -> bool:
        return self.bias is not None

    def series(self, x: torch.Tensor) -> torch.Tensor:
        """f(y_n) with y_0 = x, y_i = theta_i * f(y_{i-1}) + omega_i; its backward keeps only x (dispatch.series)."""
        return dispatch.series(x, self.theta, self.omega, self.base, self.granularity == "channel", self._series_memo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.lslu_site(self, x)

    @torch.no_grad()
    def fuse(self) -> "LSLU":
        """Fold the eval-mode BatchNorm into the depthwise conv, in place (deploy form)."""
        if self.fused:
            return self
        fold_own_bn_(self)
        return self

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, n={self.n}, base={self.base}, granularity={self.granularity}, "
            f"fused={self.fused}"
        )


def _channel_means(p: torch.Tensor) -> list[float]:
    """(n,) as a list, or the mean over the channels of (n, C)."""
    p = p.detach()
    return (p.mean(dim=1) if p.dim() > 1 else p).cpu().tolist()


# The base is the trial's `act` (relu where the model keeps its native activations); n = 0 inserts nothing.
@register_act(
    "lslu",
    builds=LSLU,
    config={"n": "n", "base": "base_act", "granularity": "granularity"},
    inserts=lambda kwargs: kwargs["n"] > 0,
)
def lslu(
    channels=None, inplace=False, n: int = 3, base: str = "relu", granularity: str = "layer", learnable: bool = True
):
    return LSLU(channels, n=n, base=base, granularity=granularity, learnable=learnable)
