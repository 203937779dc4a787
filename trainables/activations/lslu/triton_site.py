"""LSLU's series and depthwise conv as Triton kernels that never write the conv's input (CUDA, opt-in).

The unfused site writes f(y_n) (the series' output) and reads it back for the conv, and autograd keeps it for the
conv's weight gradient. Here the series is recomputed from x where the conv reads it, at each of the kernel's taps:

    forward   conv_out[n, c, p] = b[c] + Σ_t w[c, t] · s[n, c, p + t]        s = f(y_n)(x), zero outside the map
    backward  dz[n, c, p]       = Σ_t w[c, t] · g[n, c, p − t]                (the same kernel, flipped, no series)
              dx, dθ, dω        = the Triton series backward on (x, dz)       (triton_series.py)
              dw[c, t]          = Σ_{n, p} g[n, c, p] · s[n, c, p + t]        (one program per tap and tile, summed)

so the site keeps x for backward (BatchNorm keeps the conv's output) instead of x and f(y_n), and a deploy-form site
(BatchNorm folded into w, b) is one kernel instead of two. In a training step BatchNorm runs inside the same function
(``SeriesConvBatchNorm``), which keeps x alone and runs the conv's forward kernel again in backward: what a ReLU site
keeps plus x, at the cost of one more conv pass. Works on any strides (NCHW and channels_last), in float32
registers. dispatch.py runs it only when asked to (opt-in until a GPU run weighs it against cuDNN's depthwise
convolution, benchmarks/bench_activation.py); ``TRITON_INTERPRET=1`` runs it on the CPU for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainables.activations.lslu import cpu_site, triton_series
from trainables.activations.lslu.triton_series import _BASE_CODE, _f, _terms


@triton.jit
def _series_at(v, theta_ptr, omega_ptr, chans, C, N_TERMS: tl.constexpr, BASE: tl.constexpr, MODE: tl.constexpr):
    """f(y_n) of a [pixels, channels] tile: θ and ω per layer (MODE 0) or per channel, one per column (MODE 2)."""
    chans_c = tl.minimum(chans, C - 1)  # in-range channel for masked lanes
    return _f(_terms(v, theta_ptr, omega_ptr, chans_c, chans_c, C, N_TERMS, BASE, MODE), BASE)


@triton.jit
def _tile(pid_p, pid_c, NHW, HW, W, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile's pixels (image, row, column) and channels, with their in-range masks."""
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = pix < NHW, chans < C
    img, hw = pix // HW, pix % HW
    return img, hw // W, hw % W, p_ok, chans, c_ok


@triton.jit
def _dw_conv(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    theta_ptr,
    omega_ptr,
    NHW,
    HW,
    H,
    W,
    C,
    sxn,
    sxc,
    sxh,
    sxw,
    son,
    soc,
    soh,
    sow,
    K: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    N_TERMS: tl.constexpr,
    BASE: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    img, row, col, p_ok, chans, c_ok = _tile(tl.program_id(0), tl.program_id(1), NHW, HW, W, C, BLOCK_P, BLOCK_C)
    img64, chans64 = img.to(tl.int64), chans.to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(K):  # a loop, not unrolled: K² copies of the series would make the kernel slow to compile
        if FLIP:
            hh = row - i + K // 2
        else:
            hh = row + i - K // 2
        h_ok = p_ok & (hh >= 0) & (hh < H)
        for j in range(K):
            if FLIP:
                ww = col - j + K // 2
            else:
                ww = col + j - K // 2
            ok = (h_ok & (ww >= 0) & (ww < W))[:, None] & c_ok[None, :]
            offs = (img64 * sxn + hh * sxh + ww * sxw)[:, None] + (chans64 * sxc)[None, :]
            v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            if N_TERMS > 0:  # the conv's input is f(y_n) inside the map and 0 in its padding
                v = tl.where(ok, _series_at(v, theta_ptr, omega_ptr, chans, C, N_TERMS, BASE, MODE), 0.0)
            tap = tl.load(w_ptr + chans * (K * K) + (i * K + j), mask=c_ok, other=0.0).to(tl.float32)
            acc += v * tap[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + chans, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out_offs = (img64 * son + row * soh + col * sow)[:, None] + (chans64 * soc)[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _dw_weight_grad(
    x_ptr,
    g_ptr,
    part_ptr,
    theta_ptr,
    omega_ptr,
    NHW,
    HW,
    H,
    W,
    C,
    sxn,
    sxc,
    sxh,
    sxw,
    sgn,
    sgc,
    sgh,
    sgw,
    TILES_PER_PROGRAM,
    K: tl.constexpr,
    N_TERMS: tl.constexpr,
    BASE: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """part[chunk, c, t] = Σ over the chunk's pixels of g[n, c, p] · s[n, c, p + t], for the program's tap t."""
    chunk, pid_c, t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    di, dj = t // K - K // 2, t % K - K // 2
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for k in range(TILES_PER_PROGRAM):
        img, row, col, p_ok, chans, c_ok = _tile(chunk * TILES_PER_PROGRAM + k, pid_c, NHW, HW, W, C, BLOCK_P, BLOCK_C)
        img64, chans64 = img.to(tl.int64), chans.to(tl.int64)
        here = p_ok[:, None] & c_ok[None, :]
        g_offs = (img64 * sgn + row * sgh + col * sgw)[:, None] + (chans64 * sgc)[None, :]
        g = tl.load(g_ptr + g_offs, mask=here, other=0.0)
        hh, ww = row + di, col + dj
        ok = (p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W))[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + (img64 * sxn + hh * sxh + ww * sxw)[:, None] + (chans64 * sxc)[None, :], mask=ok, other=0.0)
        s = tl.where(ok, _series_at(v.to(tl.float32), theta_ptr, omega_ptr, chans, C, N_TERMS, BASE, MODE), 0.0)
        acc += g.to(tl.float32) * s
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(part_ptr + (chunk * C + chans) * (K * K) + t, tl.sum(acc, axis=0), mask=chans < C)


def _blocks(x: torch.Tensor) -> tuple[int, int]:
    """Pixels × channels per tile: long along whichever of them is contiguous in memory, so loads coalesce."""
    if x.stride(1) == 1:  # channels_last
        return 32, min(64, triton.next_power_of_2(x.shape[1]))
    return 128, min(8, triton.next_power_of_2(x.shape[1]))


def _mode(channel: bool) -> int:
    """triton_series' coefficient mode for a [pixels, channels] tile: 0 one θ_i per layer, 2 one per column."""
    return 2 if channel else 0


def dw_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
    omega: torch.Tensor | None = None,
    base: str = "relu",
    channel: bool = False,
    flip: bool = False,
) -> torch.Tensor:
    """``F.conv2d(s, weight, bias, padding=K // 2, groups=C)`` with s = f(y_n)(x) when θ, ω are given, else s = x;
    ``flip`` turns the taps around (the input gradient of the conv). Out has x's layout and dtype."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    out = torch.empty_like(x)
    block_p, block_c = _blocks(x)
    weight = weight.contiguous()
    n_terms = 0 if theta is None else theta.shape[0]
    theta, omega = triton_series.params(theta, omega) if n_terms else (weight, weight)  # unread without a series
    grid = (triton.cdiv(n * h * w, block_p), triton.cdiv(c, block_c))
    _dw_conv[grid](
        x,
        weight,
        weight if bias is None else bias,
        out,
        theta,
        omega,
        n * h * w,
        h * w,
        h,
        w,
        c,
        *x.stride(),
        *out.stride(),
        K=k,
        FLIP=flip,
        HAS_BIAS=bias is not None,
        N_TERMS=n_terms,
        BASE=_BASE_CODE[base],
        MODE=_mode(channel),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return out


def dw_weight_grad(
    x: torch.Tensor,
    grad: torch.Tensor,
    k: int,
    theta: torch.Tensor,
    omega: torch.Tensor,
    base: str,
    channel: bool,
    tiles_per_program: int = 8,
) -> torch.Tensor:
    """dweight (C, 1, k, k), float32, of ``F.conv2d(f(y_n)(x), weight, padding=k // 2, groups=C)`` for the output
    gradient ``grad``."""
    n, c, h, w = x.shape
    block_p, block_c = _blocks(x)
    chunks = triton.cdiv(triton.cdiv(n * h * w, block_p), tiles_per_program)
    part = torch.empty(chunks, c, k * k, device=x.device, dtype=torch.float32)
    theta, omega = triton_series.params(theta, omega)
    _dw_weight_grad[(chunks, triton.cdiv(c, block_c), k * k)](
        x,
        grad,
        part,
        theta,
        omega,
        n * h * w,
        h * w,
        h,
        w,
        c,
        *x.stride(),
        *grad.stride(),
        tiles_per_program,
        K=k,
        N_TERMS=theta.shape[0],
        BASE=_BASE_CODE[base],
        MODE=_mode(channel),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return part.sum(0).view(c, 1, k, k)


def series_conv_grads(x, theta, omega, weight, grad, base: str, channel: bool, needs) -> tuple:
    """(dx, dθ, dω, dweight) of ``dw_conv(x, weight, None, θ, ω, …)`` for the output gradient ``grad``; None where
    ``needs`` (four flags) says no."""
    d_theta = d_omega = dx = d_weight = None
    if any(needs[:3]):
        dz = dw_conv(grad, weight, flip=True)  # the series backward puts it in x's layout
        dx, d_theta, d_omega = triton_series.series_backward(x, theta, omega, dz, base, channel)
    if needs[3]:
        d_weight = dw_weight_grad(x, grad, weight.shape[-1], theta, omega, base, channel).to(weight.dtype)
    return dx, d_theta, d_omega, d_weight


class SeriesConv(torch.autograd.Function):
    """``F.conv2d(f(y_n)(x), weight, padding=K // 2, groups=C)``; saves x (not f(y_n)) for backward."""

    @staticmethod
    def forward(ctx, x, theta, omega, weight, base: str, channel: bool):
        ctx.save_for_backward(x, theta, omega, weight)
        ctx.base, ctx.channel = base, channel
        return dw_conv(x, weight, None, theta, omega, base, channel)

    @staticmethod
    def backward(ctx, grad):
        x, theta, omega, weight = ctx.saved_tensors
        grads = series_conv_grads(x, theta, omega, weight, grad, ctx.base, ctx.channel, ctx.needs_input_grad)
        return (*grads, None, None)


class SeriesConvBatchNorm(torch.autograd.Function):
    """BatchNorm (training) of ``SeriesConv``, keeping x alone of the site's size for backward: backward recomputes
    the conv's output from x with the forward's kernel, bit for bit, for BatchNorm's gradient. (The CPU's one-function
    site, cpu_site.py, rebuilds it from the site's output by dividing by γ instead: on a GPU its check of γ would be a
    host sync per site and step, and in bf16 the division loses the conv's digits in proportion to |β / γ|.)"""

    @staticmethod
    def forward(
        ctx,
        x,
        theta,
        omega,
        weight,
        gamma,
        beta,
        running_mean,
        running_var,
        factor: float,
        eps: float,
        base: str,
        channel: bool,
    ):
        conv = dw_conv(x, weight, None, theta, omega, base, channel)
        out, mean, invstd = cpu_site.batch_norm_step(conv, gamma, beta, running_mean, running_var, factor, eps)
        ctx.save_for_backward(x, theta, omega, weight, gamma, mean, invstd)
        ctx.eps, ctx.base, ctx.channel = eps, base, channel
        return out

    @staticmethod
    def backward(ctx, grad):
        x, theta, omega, weight, gamma, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        conv = dw_conv(x, weight, None, theta, omega, ctx.base, ctx.channel)
        d_conv, d_gamma, d_beta = cpu_site.batch_norm_step_grads(grad, conv, gamma, mean, invstd, ctx.eps, need)
        del conv
        grads = series_conv_grads(x, theta, omega, weight, d_conv, ctx.base, ctx.channel, need[:4])
        return (*grads, d_gamma, d_beta, None, None, None, None, None, None)


def series_conv_batch_norm(x, theta, omega, weight, bn, base: str, channel: bool) -> torch.Tensor:
    """``bn(series_conv(x, …))`` for a BatchNorm training step (dispatch.batch_norm_step_applies), its running
    statistics updated as ``bn(…)`` does; x alone is kept for backward."""
    return SeriesConvBatchNorm.apply(
        x,
        theta,
        omega,
        weight,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        cpu_site.momentum_factor(bn),
        bn.eps,
        base,
        channel,
    )


def series_conv(x, theta, omega, weight, bias, base: str, channel: bool) -> torch.Tensor:
    """The LSLU site's f(y_n) and depthwise conv (+ bias, the deploy form's folded BatchNorm): one kernel without
    gradients, ``SeriesConv`` (x saved) with them."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, theta, omega, weight)):
        y = SeriesConv.apply(x, theta, omega, weight, base, channel)
        return y if bias is None else y + bias.view(1, -1, 1, 1).to(y.dtype)
    return dw_conv(x, weight, bias, theta, omega, base, channel)
