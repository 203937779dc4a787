"""LSLU's element-wise series with its own backward: one saved tensor (the input) instead of n+1.

    y_0 = x;  y_i = θ_i f(y_{i-1}) + ω_i  (i = 1..n);  out = f(y_n)

Backward recomputes y_0..y_n from x (element-wise, cheap) and runs the chain rule:

    g_n = g · f'(y_n);   for i = n..1:  dθ_i = Σ g_i f(y_{i-1}),  dω_i = Σ g_i,  g_{i-1} = g_i θ_i f'(y_{i-1});   dx = g_0

(Σ over every element for layer granularity, over N, H, W for channel granularity.) Autograd on the eager
series would keep n+1 intermediates per site alive until backward; this keeps only x. On CUDA the pair runs as
two Triton kernels (lslu_triton.py), one pass over the tensor each; elsewhere as the plain functions below.
On the CPU a ReLU-based series has a closed form, one clamp of one affine map (lslu_relu.py), which serves first.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from trainables.activations import lslu_relu
from trainables.activations.depthwise import memory_format_of
from trainables.activations.kernels import kernel_choice

_SQRT_2PI = math.sqrt(2 * math.pi)


def _f(y: torch.Tensor, base: str) -> torch.Tensor:
    if base == "relu":
        return F.relu(y)
    if base == "silu":
        return F.silu(y)
    return F.gelu(y)  # exact (erf)


def _df(y: torch.Tensor, base: str) -> torch.Tensor:
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
        y = _coef(theta, i, channel, x.dtype) * _f(y, base) + _coef(omega, i, channel, x.dtype)
    return _f(y, base)


def series_backward(x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, grad: torch.Tensor, base: str, channel: bool):
    n = theta.shape[0]
    ys = [x]
    for i in range(n):
        ys.append(_coef(theta, i, channel, x.dtype) * _f(ys[-1], base) + _coef(omega, i, channel, x.dtype))
    g = grad * _df(ys[n], base)
    dims = (0, 2, 3) if channel else tuple(range(x.dim()))
    d_theta, d_omega = [None] * n, [None] * n
    for i in reversed(range(n)):
        f_prev = _f(ys[i], base)
        d_theta[i] = (g * f_prev).sum(dim=dims, dtype=torch.float32)
        d_omega[i] = g.sum(dim=dims, dtype=torch.float32)
        g = g * _coef(theta, i, channel, x.dtype) * _df(ys[i], base)
    return g, torch.stack(d_theta).to(theta.dtype), torch.stack(d_omega).to(omega.dtype)


def _kernels(x: torch.Tensor, base: str, channel: bool):
    """The Triton pair for a 4-D CUDA tensor in NCHW or channels_last layout (``LSLU_KERNEL=eager`` turns it off),
    the eager pair otherwise (CPU, other layouts)."""
    if _triton_on(x) and x.dim() == 4:
        if _triton().layout(x) is not None:
            kernels = _triton()
            return (functools.partial(kernels.series_forward, base=base, channel=channel),
                    functools.partial(kernels.series_backward, base=base, channel=channel))
    return functools.partial(series_forward, base=base, channel=channel), functools.partial(series_backward, base=base, channel=channel)


def _triton_on(x: torch.Tensor) -> bool:
    """Whether the Triton kernels serve x: a CUDA tensor, Triton importable, and not turned off by ``LSLU_KERNEL=eager``."""
    return x.is_cuda and kernel_choice() != "eager" and _triton() is not None


def site_kernels(x: torch.Tensor):
    """The Triton site (lslu_site_triton.py: the series recomputed where the depthwise conv reads it) when it serves
    x: ``LSLU_KERNEL=site`` (opt-in until a GPU run weighs it), a CUDA tensor in NCHW or channels_last layout, Triton
    importable; else None."""
    if not (x.is_cuda and x.dim() == 4 and kernel_choice() == "site" and _triton() is not None and _triton().layout(x) is not None):
        return None
    from trainables.activations import lslu_site_triton
    return lslu_site_triton


@functools.lru_cache(maxsize=1)
def _triton():
    try:
        from trainables.activations import lslu_triton
    except ImportError:  # no Triton (CPU-only installs): the eager pair serves
        return None
    return lslu_triton


class SeriesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, omega, base: str, channel: bool):
        ctx.save_for_backward(x, theta, omega)
        ctx.base, ctx.channel = base, channel
        forward, _ = _kernels(x, base, channel)
        return forward(x, theta, omega)

    @staticmethod
    def backward(ctx, grad):
        x, theta, omega = ctx.saved_tensors
        _, backward = _kernels(x, ctx.base, ctx.channel)
        dx, d_theta, d_omega = backward(x, theta, omega, grad.contiguous(memory_format=memory_format_of(x)))
        return dx, d_theta, d_omega, None, None


def lslu_series(x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, base: str, channel: bool,
                memo: dict | None = None) -> torch.Tensor:
    """f(y_n): on CUDA with Triton through ``SeriesFunction`` (only x saved); on the CPU with a ReLU base in closed
    form (lslu_relu.py, only x saved; ``memo`` is its per-module cache); elsewhere autograd on the plain series, which
    on the CPU is faster than recomputing it in backward (benchmarks/)."""
    if lslu_relu.serves(base, x):
        out = lslu_relu.relu_series(x, theta, omega, memo)
        if out is not None:
            return out
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or theta.requires_grad or omega.requires_grad)
    if needs_grad and _triton_on(x):
        return SeriesFunction.apply(x, theta, omega, base, channel)
    if needs_grad:
        return series_forward(x, theta, omega, base, channel)
    forward, _ = _kernels(x, base, channel)
    return forward(x, theta, omega)
