"""LSLU's specification in plain PyTorch ops (papers/000 eq. 15–17, DESIGN.md §2): what every kernel is tested against.

    y_0 = x;  y_i = θ_i f(y_{i-1}) + ω_i  (i = 1..n);  series = f(y_n)
    site = bn(depthwise_conv(f(y_n), weight, padding=n))       (deploy form: BatchNorm folded into weight and a bias)

``series_backward`` is the series' hand backward, which recomputes y_0..y_n from x (element-wise, cheap) and runs the
chain rule:

    g_n = g · f'(y_n);   for i = n..1:  dθ_i = Σ g_i f(y_{i-1}),  dω_i = Σ g_i,  g_{i-1} = g_i θ_i f'(y_{i-1});
    dx = g_0

(Σ over every element for layer granularity, over N, H, W for channel granularity.) It keeps only x for backward, where
autograd on ``series_forward`` keeps n+1 intermediates; the Triton pair (triton_series.py) computes the same two
functions and is tested against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BASES = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu}  # F.gelu is the exact (erf) GELU
_SQRT_2PI = math.sqrt(2 * math.pi)


def f(y: torch.Tensor, base: str) -> torch.Tensor:
    """The base activation."""
    if base == "relu":
        return F.relu(y)
    if base == "silu":
        return F.silu(y)
    return F.gelu(y)  # exact (erf)


def df(y: torch.Tensor, base: str) -> torch.Tensor:
    """f'(y): relu: 1[y>0]; silu: σ(y)(1 + y(1−σ(y))); exact gelu: Φ(y) + y φ(y)."""
    if base == "relu":
        return (y > 0).to(y.dtype)
    if base == "silu":
        s = torch.sigmoid(y)
        return s * (1 + y * (1 - s))
    return 0.5 * (1 + torch.erf(y * (1 / math.sqrt(2)))) + y * torch.exp(-0.5 * y * y) / _SQRT_2PI


def _coef(p: torch.Tensor, i: int, channel: bool, dtype: torch.dtype) -> torch.Tensor:
    """θ_i or ω_i in the input's dtype (under bf16 autocast the series stays bf16, not promoted to float32)."""
    c = p[i].to(dtype)
    return c.view(1, -1, 1, 1) if channel else c


def series_forward(x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, base: str, channel: bool) -> torch.Tensor:
    y = x
    for i in range(theta.shape[0]):
        y = _coef(theta, i, channel, x.dtype) * f(y, base) + _coef(omega, i, channel, x.dtype)
    return f(y, base)


def series_backward(
    x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, grad: torch.Tensor, base: str, channel: bool
):
    n = theta.shape[0]
    ys = [x]
    for i in range(n):
        ys.append(_coef(theta, i, channel, x.dtype) * f(ys[-1], base) + _coef(omega, i, channel, x.dtype))
    g = grad * df(ys[n], base)
    dims = (0, 2, 3) if channel else tuple(range(x.dim()))
    d_theta, d_omega = [None] * n, [None] * n
    for i in reversed(range(n)):
        f_prev = f(ys[i], base)
        d_theta[i] = (g * f_prev).sum(dim=dims, dtype=torch.float32)
        d_omega[i] = g.sum(dim=dims, dtype=torch.float32)
        g = g * _coef(theta, i, channel, x.dtype) * df(ys[i], base)
    return g, torch.stack(d_theta).to(theta.dtype), torch.stack(d_omega).to(omega.dtype)


def site(
    x: torch.Tensor,
    theta: torch.Tensor,
    omega: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn: nn.Module,
    base: str,
    channel: bool,
) -> torch.Tensor:
    """bn(depthwise_conv(f(y_n), weight, padding=n)); with a bias (the deploy form, BatchNorm folded in) the conv plus
    the bias, without ``bn``."""
    y = F.conv2d(
        series_forward(x, theta, omega, base, channel), weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1]
    )
    return y if bias is not None else bn(y)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out that way (and not also plain contiguous), else contiguous_format: the
    layout the backends give a gradient that meets x."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
