"""LSLU's series as two Triton kernels (CUDA): forward reads x and writes f(y_n) once; backward reads x and the
incoming gradient once, writes dx once and reduces dθ, dω per tile (one atomic add per tile row or column).

The tensor is seen as a row-major matrix: NCHW contiguous as (N·C) × (H·W), whose rows each hold one channel;
channels_last as (N·H·W) × C, whose columns are the channels. Everything is computed in float32 registers;
y_0 … y_n are recomputed in backward (n ≤ 16, a few flops per element) instead of being stored. The pair computes
reference.py's ``series_forward`` and ``series_backward`` and is tested against them.

``SeriesFunction`` is the series as an autograd Function that keeps only x, over the forward/backward pair dispatch.py
passes in (this file's, or reference.py's for a tensor this pair does not take). Importing this file needs Triton;
dispatch.py imports it only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainables.activations.lslu.reference import memory_format_of

_BASE_CODE = {"relu": 0, "silu": 1, "gelu": 2}


@triton.jit
def _f(y, BASE: tl.constexpr):
    if BASE == 0:
        return tl.maximum(y, 0.0)
    elif BASE == 1:
        return y * tl.sigmoid(y)
    else:
        return 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))


@triton.jit
def _df(y, BASE: tl.constexpr):
    if BASE == 0:
        return tl.where(y > 0.0, 1.0, 0.0)
    elif BASE == 1:
        s = tl.sigmoid(y)
        return s * (1.0 + y * (1.0 - s))
    else:
        return 0.5 * (1.0 + tl.math.erf(y * 0.7071067811865476)) + y * tl.exp(-0.5 * y * y) * 0.3989422804014327


@triton.jit
def _coef(p_ptr, i, rows, cols, C, MODE: tl.constexpr):
    """θ_i (or ω_i) broadcastable to the tile: MODE 0 layer (scalar), 1 channel per row, 2 channel per column."""
    if MODE == 0:
        return tl.load(p_ptr + i)
    elif MODE == 1:
        return tl.load(p_ptr + i * C + rows % C)[:, None]
    else:
        return tl.load(p_ptr + i * C + cols)[None, :]


@triton.jit
def _terms(y, theta_ptr, omega_ptr, rows, cols, C, N: tl.constexpr, BASE: tl.constexpr, MODE: tl.constexpr):
    """y_N from y_0 = y: N steps y_i = θ_i f(y_{i-1}) + ω_i (f(y_N) is the series' output)."""
    for i in tl.static_range(N):
        y = _coef(theta_ptr, i, rows, cols, C, MODE) * _f(y, BASE) + _coef(omega_ptr, i, rows, cols, C, MODE)
    return y


@triton.jit
def _series_fwd(
    x_ptr,
    out_ptr,
    theta_ptr,
    omega_ptr,
    R,
    K,
    C,
    N_TERMS: tl.constexpr,
    BASE: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    rows_c = tl.minimum(rows, R - 1)  # in-bounds channel index for masked lanes
    cols_c = tl.minimum(cols, K - 1)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    y = _terms(
        tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32),
        theta_ptr,
        omega_ptr,
        rows_c,
        cols_c,
        C,
        N_TERMS,
        BASE,
        MODE,
    )
    tl.store(out_ptr + offs, _f(y, BASE).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _series_bwd(
    x_ptr,
    g_ptr,
    dx_ptr,
    theta_ptr,
    omega_ptr,
    dtheta_ptr,
    domega_ptr,
    R,
    K,
    C,
    N_TERMS: tl.constexpr,
    BASE: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok, col_ok = rows < R, cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    rows_c = tl.minimum(rows, R - 1)
    cols_c = tl.minimum(cols, K - 1)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = _terms(x, theta_ptr, omega_ptr, rows_c, cols_c, C, N_TERMS, BASE, MODE)
    g = tl.where(mask, g * _df(y, BASE), 0.0)
    for k in tl.static_range(N_TERMS - 1, -1, -1):  # descending; k stays a compile-time constant
        yk = _terms(x, theta_ptr, omega_ptr, rows_c, cols_c, C, k, BASE, MODE)  # y_k, the input of term k, from x
        fk = _f(yk, BASE)
        dth = g * fk
        if MODE == 0:
            tl.atomic_add(dtheta_ptr + k, tl.sum(tl.sum(dth, axis=1), axis=0))
            tl.atomic_add(domega_ptr + k, tl.sum(tl.sum(g, axis=1), axis=0))
        elif MODE == 1:
            tl.atomic_add(dtheta_ptr + k * C + rows_c % C, tl.sum(dth, axis=1), mask=row_ok)
            tl.atomic_add(domega_ptr + k * C + rows_c % C, tl.sum(g, axis=1), mask=row_ok)
        else:
            tl.atomic_add(dtheta_ptr + k * C + cols_c, tl.sum(dth, axis=0), mask=col_ok)
            tl.atomic_add(domega_ptr + k * C + cols_c, tl.sum(g, axis=0), mask=col_ok)
        g = g * _coef(theta_ptr, k, rows_c, cols_c, C, MODE) * _df(yk, BASE)
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=mask)


def layout(x: torch.Tensor) -> tuple[int, int, bool] | None:
    """(rows, cols, channels_in_columns) of the matrix view, or None when x is neither contiguous layout."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return n * c, h * w, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return n * h * w, c, True
    return None


def _launch(x: torch.Tensor, channel: bool):
    R, K, cols_are_channels = layout(x)
    mode = 0 if not channel else (2 if cols_are_channels else 1)
    block_k = min(triton.next_power_of_2(K), 256)
    block_r = max(1, 4096 // block_k)
    grid = (triton.cdiv(R, block_r), triton.cdiv(K, block_k))
    return R, K, mode, block_r, block_k, grid


def params(theta: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """θ and ω as the kernels read them: float32, contiguous."""
    return theta.float().contiguous(), omega.float().contiguous()


def series_forward(x, theta, omega, base: str, channel: bool) -> torch.Tensor:
    out = torch.empty_like(x)
    R, K, mode, block_r, block_k, grid = _launch(x, channel)
    _series_fwd[grid](
        x,
        out,
        *params(theta, omega),
        R,
        K,
        x.shape[1],
        N_TERMS=theta.shape[0],
        BASE=_BASE_CODE[base],
        MODE=mode,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
    )
    return out


def series_backward(x, theta, omega, grad, base: str, channel: bool):
    channels_last = layout(x)[2] and not x.is_contiguous()
    grad = grad.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dx = torch.empty_like(x)
    d_theta = torch.zeros(theta.shape, device=x.device, dtype=torch.float32)
    d_omega = torch.zeros(omega.shape, device=x.device, dtype=torch.float32)
    R, K, mode, block_r, block_k, grid = _launch(x, channel)
    _series_bwd[grid](
        x,
        grad,
        dx,
        *params(theta, omega),
        d_theta,
        d_omega,
        R,
        K,
        x.shape[1],
        N_TERMS=theta.shape[0],
        BASE=_BASE_CODE[base],
        MODE=mode,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
    )
    return dx, d_theta.to(theta.dtype), d_omega.to(omega.dtype)


class SeriesFunction(torch.autograd.Function):
    """f(y_n) by ``forward_fn(x, θ, ω)``, its gradients by ``backward_fn(x, θ, ω, grad)``; saves x (and θ, ω)."""

    @staticmethod
    def forward(ctx, x, theta, omega, forward_fn, backward_fn):
        ctx.save_for_backward(x, theta, omega)
        ctx.backward_fn = backward_fn
        return forward_fn(x, theta, omega)

    @staticmethod
    def backward(ctx, grad):
        x, theta, omega = ctx.saved_tensors
        dx, d_theta, d_omega = ctx.backward_fn(x, theta, omega, grad.contiguous(memory_format=memory_format_of(x)))
        return dx, d_theta, d_omega, None, None
